//! Where the client's bearer token comes from.
//!
//! A fresh token is asked for before every WebSocket handshake. Three kinds of source: an
//! access-token file, the gcloud account ([`super::gcloud`]), and `google-cloud-auth` for
//! credentials files and the metadata server ([`super::adc`]). Tokens from the last two are
//! kept with their real expiry in the on-disk [`TokenCache`] when one is given, so that one
//! process after another reuses them. The [`Token`] type cannot be
//! printed: its `Debug` is redacted and it has no `Display`, so it cannot leak into a log line
//! or an error message by accident. The sources themselves, and how each fetches a token, are
//! in `source`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::adc::{Library, Origin};
use super::cache::{Cached, TokenCache, unix_now};
use super::error::Error;
use super::gcloud::{GcloudAnswer, GcloudRunner};
use super::tokeninfo::TokenInfo;
use source::{GcloudSource, Source};

mod source;

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
    /// An authentication error when the text is empty or has characters a header cannot
    /// carry. The error never contains the text itself.
    pub fn new(text: &str) -> Result<Token, Error> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Error::auth("the token is empty"));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::auth(
                "the token has spaces or non-ASCII characters (expected one line holding only the token)",
            ));
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

/// A way of obtaining tokens, with an optional on-disk cache.
pub struct Credentials {
    source: Source,
    cache: Option<TokenCache>,
    /// The cache's warning is shown once per process, not on every reconnect.
    warned: AtomicBool,
    /// Who the tokens belong to, as learned from the source, the cache or token-info.
    principal: Mutex<Option<String>>,
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

impl Credentials {
    fn from_source(source: Source, principal: Option<String>) -> Credentials {
        Credentials {
            source,
            cache: None,
            warned: AtomicBool::new(false),
            principal: Mutex::new(principal),
        }
    }

    /// Tokens read from `path` before every handshake; `how` names what chose the file.
    pub fn access_token_file(path: PathBuf, how: &str) -> Credentials {
        Credentials::from_source(
            Source::AccessTokenFile {
                path,
                how: how.to_owned(),
            },
            None,
        )
    }

    /// The gcloud account. `primed` is an answer already read (or `None`); `fingerprint`
    /// tells one gcloud setup from another for the cache.
    pub fn gcloud(
        runner: GcloudRunner,
        primed: Option<GcloudAnswer>,
        fingerprint: &[u8],
        account: Option<String>,
    ) -> Credentials {
        let mut material = b"gcloud\0".to_vec();
        material.extend_from_slice(fingerprint);
        let principal = primed
            .as_ref()
            .and_then(|a| {
                a.properties
                    .impersonate
                    .clone()
                    .or(a.properties.account.clone())
            })
            .or_else(|| account.clone());
        Credentials::from_source(
            Source::Gcloud(Box::new(GcloudSource {
                runner,
                primed: Mutex::new(primed),
                force_refresh: AtomicBool::new(false),
                fingerprint: material,
                account,
            })),
            principal,
        )
    }

    /// Credentials through `google-cloud-auth`; `tokeninfo` learns each fresh token's expiry
    /// (without it tokens are not cached).
    pub fn library(library: Library, tokeninfo: Option<TokenInfo>) -> Credentials {
        let mut material = b"library\0".to_vec();
        match library.origin() {
            Origin::File { path, .. } => {
                material.extend_from_slice(path.as_os_str().as_encoded_bytes());
                material.push(0);
                if let Ok(bytes) = std::fs::read(path) {
                    material.extend_from_slice(&sha256(&bytes));
                }
            }
            Origin::Metadata { host } => {
                material.extend_from_slice(b"metadata\0");
                material.extend_from_slice(host.as_bytes());
            }
        }
        let principal = library.named_principal().map(str::to_owned);
        Credentials::from_source(
            Source::Library {
                library,
                tokeninfo,
                fingerprint: material,
            },
            principal,
        )
    }

    /// The library behind these credentials, or the credentials back when they are another
    /// kind (to rebuild them with a token-info client once TLS settings are known).
    ///
    /// # Errors
    /// Gives `self` back when the source is not the library.
    #[allow(clippy::result_large_err)] // gives the value back, as Option::ok_or would
    pub fn take_library(self) -> Result<Library, Credentials> {
        match self.source {
            Source::Library { library, .. } => Ok(library),
            source => Err(Credentials {
                source,
                cache: self.cache,
                warned: self.warned,
                principal: self.principal,
            }),
        }
    }

    /// Keeps tokens in `cache` between processes (not for access-token files).
    pub fn with_cache(mut self, cache: TokenCache) -> Credentials {
        self.cache = Some(cache);
        self
    }

    /// Where tokens come from, for messages (never the token).
    pub fn describe(&self) -> String {
        match &self.source {
            Source::AccessTokenFile { path, how } => {
                format!("access token file {} ({how})", path.display())
            }
            Source::Gcloud(_) => "the gcloud account (gcloud config config-helper)".to_owned(),
            Source::Library { library, .. } => library.describe(),
        }
    }

    /// Who the tokens belong to, where the source says (an email address).
    pub fn identity(&self) -> Option<String> {
        self.principal.lock().ok().and_then(|p| p.clone())
    }

    /// [`describe`](Self::describe) with the principal when known.
    pub fn describe_with_identity(&self) -> String {
        match self.identity() {
            Some(who) => format!("{} as {who}", self.describe()),
            None => self.describe(),
        }
    }

    /// Whether the source is `google-cloud-auth`, whose HTTP clients take proxies from the
    /// environment only.
    pub fn uses_library(&self) -> bool {
        match &self.source {
            Source::Library { library, .. } => library.reads_proxy_env(),
            _ => false,
        }
    }

    /// Whether a refused token can be replaced by a fresh one (not for access-token files,
    /// which only their writer can refresh).
    pub fn can_refresh(&self) -> bool {
        !matches!(self.source, Source::AccessTokenFile { .. })
    }

    /// The cache in use, if any.
    pub fn cache(&self) -> Option<&TokenCache> {
        self.cache.as_ref()
    }

    fn set_principal(&self, who: Option<String>) {
        if let (Some(who), Ok(mut slot)) = (who, self.principal.lock()) {
            *slot = Some(who);
        }
    }

    /// A token for the next handshake: from the cache while it has more than
    /// [`REFRESH_MARGIN`](super::cache::REFRESH_MARGIN) to live, else fetched (and cached
    /// with its real expiry).
    ///
    /// # Errors
    /// When the source cannot produce one within [`TOKEN_TIMEOUT`]: an authentication error,
    /// or [`ExitKind::Other`](super::ExitKind::Other) for network trouble. The message names
    /// the source and what to do, never the token.
    pub async fn token(&self) -> Result<Token, Error> {
        if let Some(cached) = self.load_cached() {
            tracing::info!(source = %self.describe_with_identity(), "using a cached token");
            return Ok(cached.token);
        }
        let fresh = tokio::time::timeout(TOKEN_TIMEOUT, self.source.fetch())
            .await
            .unwrap_or_else(|_| {
                Err(Error::other(format!(
                    "network error: getting an access token from {} took longer than {}s: check the network and proxy settings",
                    self.describe(),
                    TOKEN_TIMEOUT.as_secs()
                )))
            })?;
        self.set_principal(fresh.principal.clone());
        tracing::info!(source = %self.describe_with_identity(), "got a fresh token");
        if let (Some(cache), Some(key), Some(expires_at)) =
            (&self.cache, self.cache_key(), fresh.expires_at)
        {
            let entry = Cached {
                token: fresh.token.clone(),
                expires_at,
                principal: self.identity(),
                properties: fresh.properties,
            };
            if let Err(warning) = cache.store(&key, &entry) {
                self.warn_once(&warning);
            }
        }
        Ok(fresh.token)
    }

    /// The cached entry for this source, if it has time left; also records its principal.
    pub fn load_cached(&self) -> Option<Cached> {
        let (cache, key) = (self.cache.as_ref()?, self.cache_key()?);
        match cache.load(&key, unix_now()) {
            Ok(Some(entry)) => {
                self.set_principal(entry.principal.clone());
                Some(entry)
            }
            Ok(None) => None,
            Err(warning) => {
                self.warn_once(&warning);
                None
            }
        }
    }

    /// Forgets the cached token, so the next [`token`](Self::token) fetches a fresh one from
    /// the source itself (not from gcloud's or the library's own memory). For when the relay
    /// refused the token (HTTP 401, close 4004) before its recorded expiry.
    pub fn forget_cached(&self) {
        if let (Some(cache), Some(key)) = (&self.cache, self.cache_key()) {
            cache.forget(&key);
        }
        match &self.source {
            Source::AccessTokenFile { .. } => {}
            Source::Gcloud(g) => {
                if let Ok(mut p) = g.primed.lock() {
                    *p = None;
                }
                g.force_refresh.store(true, Ordering::Relaxed);
            }
            Source::Library { library, .. } => library.reset(),
        }
    }

    fn cache_key(&self) -> Option<String> {
        match &self.source {
            Source::Gcloud(g) => Some(TokenCache::key(&g.fingerprint, SCOPES)),
            Source::Library { fingerprint, .. } => Some(TokenCache::key(fingerprint, SCOPES)),
            Source::AccessTokenFile { .. } => None,
        }
    }

    fn warn_once(&self, warning: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!("{warning}");
        }
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

#[cfg(test)]
mod tests;
