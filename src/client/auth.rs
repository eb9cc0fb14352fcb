//! Where the client's bearer token comes from.
//!
//! A fresh token is asked for before every WebSocket handshake. Tokens from a service-account
//! key or Application Default Credentials are kept in the on-disk [`TokenCache`] when one is
//! given, so that one process after another reuses them. The [`Token`] type cannot be
//! printed: its `Debug` is redacted and it has no `Display`, so it cannot leak into a log line
//! or an error message by accident.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, anyhow, bail};
use tokio::sync::OnceCell;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::cache::{TokenCache, unix_now};

/// OAuth scopes requested from Google: `cloud-platform` carries IAP's permission and
/// `userinfo.email` lets a relay's token-info check learn who the caller is.
pub const SCOPES: &[&str] = &[
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/userinfo.email",
];

/// Upper bound on one token fetch (a metadata server or token endpoint that never answers).
pub const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A bearer token. Redacted in `Debug`, never displayed.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// Wraps a token after checking it can travel in an HTTP header.
    ///
    /// # Errors
    /// When the text is empty or has characters a header cannot carry. The error never
    /// contains the text itself.
    pub fn new(text: &str) -> anyhow::Result<Token> {
        let text = text.trim();
        if text.is_empty() {
            bail!("the token is empty");
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            bail!(
                "the token has spaces or non-ASCII characters (expected one line holding only the token)"
            );
        }
        Ok(Token(text.to_owned()))
    }

    /// The `Authorization` header value, marked sensitive so HTTP libraries do not log it.
    #[allow(clippy::expect_used)] // an invariant, stated in the message
    pub fn authorization(&self) -> HeaderValue {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.0))
            .expect("Token::new admits only visible ASCII, which is always a valid header value");
        value.set_sensitive(true);
        value
    }

    /// The token text, for the cache file only.
    pub(crate) fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Where tokens come from.
enum Source {
    /// A file holding an access token, re-read before every handshake (another process may
    /// refresh it), as gcloud's `CLOUDSDK_AUTH_ACCESS_TOKEN_FILE`. Never cached: the file is
    /// already the cache.
    AccessTokenFile(PathBuf),
    /// A service-account key file, through gcp_auth (signed JWT exchanged at the key's
    /// `token_uri`).
    ServiceAccount {
        path: PathBuf,
        account: Box<gcp_auth::CustomServiceAccount>,
        /// SHA-256 of the key file: a rotated key gets its own cache entry.
        fingerprint: Vec<u8>,
        email: Option<String>,
    },
    /// Application Default Credentials through gcp_auth, discovered on first use.
    Default {
        cell: OnceCell<Arc<dyn gcp_auth::TokenProvider>>,
        fingerprint: Vec<u8>,
        email: Option<String>,
    },
}

/// A way of obtaining tokens, with an optional on-disk cache.
pub struct Credentials {
    source: Source,
    cache: Option<TokenCache>,
    /// The cache's warning is shown once per process, not on every reconnect.
    warned: AtomicBool,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The parts of a service-account key JSON that matter besides the private key.
#[derive(Debug, Default, serde::Deserialize)]
pub struct KeyFileInfo {
    /// `type`: `service_account` for the keys we use.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// `client_email`: the identity tokens belong to.
    #[serde(default)]
    pub client_email: Option<String>,
    /// `project_id`: a fallback project.
    #[serde(default)]
    pub project_id: Option<String>,
}

impl KeyFileInfo {
    /// Parses the identifying fields of a credentials JSON (nothing secret is kept).
    pub fn parse(text: &str) -> Option<KeyFileInfo> {
        serde_json::from_str(text).ok()
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

impl Credentials {
    fn from_source(source: Source) -> Credentials {
        Credentials {
            source,
            cache: None,
            warned: AtomicBool::new(false),
        }
    }

    /// Tokens read from `path` before every handshake.
    pub fn access_token_file(path: PathBuf) -> Credentials {
        Credentials::from_source(Source::AccessTokenFile(path))
    }

    /// Credentials from a service-account key file.
    ///
    /// # Errors
    /// When the file cannot be read or is not a service-account key.
    pub fn service_account(path: &Path) -> anyhow::Result<Credentials> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow!(
                "reading the service-account key {}: {e}: pass a JSON key file downloaded for a service account",
                path.display()
            )
        })?;
        let account = gcp_auth::CustomServiceAccount::from_json(&text).map_err(|e| {
            anyhow!(
                "reading the service-account key {}: {e}: pass a JSON key file downloaded for a service account",
                path.display()
            )
        })?;
        let email = KeyFileInfo::parse(&text).and_then(|k| k.client_email);
        Ok(Credentials::from_source(Source::ServiceAccount {
            path: path.to_owned(),
            account: Box::new(account),
            fingerprint: sha256(text.as_bytes()),
            email,
        }))
    }

    /// Application Default Credentials. `fingerprint` tells one ADC setup from another for the
    /// cache (the caller hashes the credential files it knows of); `email` is the identity when
    /// a file names it.
    pub fn application_default(fingerprint: &[u8], email: Option<String>) -> Credentials {
        let mut material = b"application-default\0".to_vec();
        material.extend_from_slice(fingerprint);
        Credentials::from_source(Source::Default {
            cell: OnceCell::new(),
            fingerprint: material,
            email,
        })
    }

    /// Keeps tokens in `cache` between processes (not for access-token files).
    pub fn with_cache(mut self, cache: TokenCache) -> Credentials {
        self.cache = Some(cache);
        self
    }

    /// Where tokens come from, for messages (never the token).
    pub fn describe(&self) -> String {
        match &self.source {
            Source::AccessTokenFile(p) => format!("access token file {}", p.display()),
            Source::ServiceAccount { path, .. } => {
                format!("service-account key {}", path.display())
            }
            Source::Default { .. } => "Application Default Credentials".to_owned(),
        }
    }

    /// Who the tokens belong to, where the credential says (a key file's `client_email`).
    pub fn identity(&self) -> Option<&str> {
        match &self.source {
            Source::AccessTokenFile(_) => None,
            Source::ServiceAccount { email, .. } | Source::Default { email, .. } => {
                email.as_deref()
            }
        }
    }

    /// The cache in use, if any.
    pub fn cache(&self) -> Option<&TokenCache> {
        self.cache.as_ref()
    }

    /// A token for the next handshake: from the cache while it has more than
    /// [`REFRESH_MARGIN`](super::cache::REFRESH_MARGIN) to live, else fetched (and cached).
    ///
    /// # Errors
    /// When the source cannot produce one within [`TOKEN_TIMEOUT`]; the message names the
    /// source and what to do, never the token.
    pub async fn token(&self) -> anyhow::Result<Token> {
        let key = self.cache.as_ref().and_then(|_| self.cache_key());
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            match cache.load(key, unix_now()) {
                Ok(Some(token)) => {
                    tracing::debug!(source = %self.describe(), "using a cached token");
                    return Ok(token);
                }
                Ok(None) => {}
                Err(warning) => self.warn_once(&warning),
            }
        }
        let (token, expires_at) = tokio::time::timeout(TOKEN_TIMEOUT, self.fetch())
            .await
            .unwrap_or_else(|_| {
                Err(anyhow!(
                    "getting an access token from {} took longer than {}s",
                    self.describe(),
                    TOKEN_TIMEOUT.as_secs()
                ))
            })?;
        if let (Some(cache), Some(key), Some(expires_at)) = (&self.cache, &key, expires_at)
            && let Err(warning) = cache.store(key, &token, expires_at)
        {
            self.warn_once(&warning);
        }
        Ok(token)
    }

    /// Forgets the cached token, so the next [`token`](Self::token) fetches a fresh one. For
    /// when the relay refused the token (HTTP 401, close 4004) before its recorded expiry.
    pub fn forget_cached(&self) {
        if let (Some(cache), Some(key)) = (&self.cache, self.cache_key()) {
            cache.forget(&key);
        }
    }

    fn cache_key(&self) -> Option<String> {
        match &self.source {
            Source::ServiceAccount { fingerprint, .. } | Source::Default { fingerprint, .. } => {
                Some(TokenCache::key(fingerprint, SCOPES))
            }
            Source::AccessTokenFile(_) => None,
        }
    }

    fn warn_once(&self, warning: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!("{warning}");
        }
    }

    /// A fresh token and, when known, its expiry in Unix seconds.
    async fn fetch(&self) -> anyhow::Result<(Token, Option<u64>)> {
        let expiry = |t: &gcp_auth::Token| u64::try_from(t.expires_at().timestamp()).ok();
        match &self.source {
            Source::AccessTokenFile(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .with_context(|| format!("reading access token file {}", path.display()))?;
                let token = Token::new(&text)
                    .with_context(|| format!("access token file {}", path.display()))?;
                Ok((token, None))
            }
            Source::ServiceAccount { path, account, .. } => {
                let token = gcp_auth::TokenProvider::token(account.as_ref(), SCOPES)
                    .await
                    .map_err(|e| {
                        anyhow!(
                            "getting an access token with service-account key {}: {e}",
                            path.display()
                        )
                    })?;
                let ours = Token::new(token.as_str())
                    .context("the token endpoint returned an unusable token")?;
                Ok((ours, expiry(&token)))
            }
            Source::Default { cell, .. } => {
                let provider = cell
                    .get_or_try_init(gcp_auth::provider)
                    .await
                    .map_err(|e| {
                        anyhow!(
                            "finding Google credentials: {e}: run `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, or pass --access-token-file or --credentials-file"
                        )
                    })?;
                let token = provider.token(SCOPES).await.map_err(|e| {
                    anyhow!("getting an access token from Application Default Credentials: {e}")
                })?;
                let ours = Token::new(token.as_str())
                    .context("Application Default Credentials returned an unusable token")?;
                Ok((ours, expiry(&token)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_redacted_and_validated() {
        let token = Token::new("  ya29.secret-value\n").unwrap();
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        let header = token.authorization();
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().unwrap(), "Bearer ya29.secret-value");
        for bad in ["", "  \n", "two words", "caf\u{e9}"] {
            let err = Token::new(bad).unwrap_err().to_string();
            assert!(!err.contains("words") && !err.contains("caf"), "{err}");
        }
    }

    #[tokio::test]
    async fn token_file_is_read_per_call_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let creds = Credentials::access_token_file(path.clone());
        let err = creds.token().await.unwrap_err();
        assert!(
            format!("{err:#}").contains("reading access token file"),
            "{err:#}"
        );
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(creds.token().await.unwrap().authorization(), "Bearer first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(
            creds.token().await.unwrap().authorization(),
            "Bearer second"
        );
        std::fs::write(&path, "not a token").unwrap();
        let err = format!("{:#}", creds.token().await.unwrap_err());
        assert!(
            err.contains("access token file") && !err.contains("not a token"),
            "{err}"
        );
    }
}
