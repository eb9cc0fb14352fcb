//! Where the client's bearer token comes from.
//!
//! A fresh token is asked for before every WebSocket handshake; the sources cache as they see
//! fit (gcp_auth keeps a token until shortly before it expires). The [`Token`] type cannot be
//! printed: its `Debug` is redacted and it has no `Display`, so it cannot leak into a log line
//! or an error message by accident.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::sync::OnceCell;
use tokio_tungstenite::tungstenite::http::HeaderValue;

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
    pub fn authorization(&self) -> HeaderValue {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.0))
            .expect("Token::new admits only visible ASCII, which is always a valid header value");
        value.set_sensitive(true);
        value
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A way of obtaining tokens.
pub enum Credentials {
    /// A file holding an access token, re-read before every handshake (another process may
    /// refresh it), as gcloud's `CLOUDSDK_AUTH_ACCESS_TOKEN_FILE`.
    AccessTokenFile(PathBuf),
    /// A service-account key file, through gcp_auth (signed JWT exchanged at the key's
    /// `token_uri`).
    ServiceAccount {
        /// The key file, for messages.
        path: PathBuf,
        /// The gcp_auth provider built from it.
        account: Box<gcp_auth::CustomServiceAccount>,
    },
    /// Application Default Credentials through gcp_auth, discovered on first use.
    Default(OnceCell<Arc<dyn gcp_auth::TokenProvider>>),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Credentials {
    /// Credentials from a service-account key file.
    ///
    /// # Errors
    /// When the file cannot be read or is not a service-account key.
    pub fn service_account(path: &Path) -> anyhow::Result<Credentials> {
        let account = gcp_auth::CustomServiceAccount::from_file(path).map_err(|e| {
            anyhow!(
                "reading the service-account key {}: {e}: pass a JSON key file downloaded for a service account",
                path.display()
            )
        })?;
        Ok(Credentials::ServiceAccount {
            path: path.to_owned(),
            account: Box::new(account),
        })
    }

    /// Application Default Credentials.
    pub fn application_default() -> Credentials {
        Credentials::Default(OnceCell::new())
    }

    /// Where tokens come from, for messages (never the token).
    pub fn describe(&self) -> String {
        match self {
            Credentials::AccessTokenFile(p) => format!("access token file {}", p.display()),
            Credentials::ServiceAccount { path, .. } => {
                format!("service-account key {}", path.display())
            }
            Credentials::Default(_) => "Application Default Credentials".to_owned(),
        }
    }

    /// A token for the next handshake.
    ///
    /// # Errors
    /// When the source cannot produce one within [`TOKEN_TIMEOUT`]; the message names the
    /// source and what to do, never the token.
    pub async fn token(&self) -> anyhow::Result<Token> {
        tokio::time::timeout(TOKEN_TIMEOUT, self.fetch())
            .await
            .unwrap_or_else(|_| {
                Err(anyhow!(
                    "getting an access token from {} took longer than {}s",
                    self.describe(),
                    TOKEN_TIMEOUT.as_secs()
                ))
            })
    }

    async fn fetch(&self) -> anyhow::Result<Token> {
        match self {
            Credentials::AccessTokenFile(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .with_context(|| format!("reading access token file {}", path.display()))?;
                Token::new(&text).with_context(|| format!("access token file {}", path.display()))
            }
            Credentials::ServiceAccount { path, account } => {
                let token = gcp_auth::TokenProvider::token(account.as_ref(), SCOPES)
                    .await
                    .map_err(|e| {
                        anyhow!(
                            "getting an access token with service-account key {}: {e}",
                            path.display()
                        )
                    })?;
                Token::new(token.as_str()).context("the token endpoint returned an unusable token")
            }
            Credentials::Default(cell) => {
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
                Token::new(token.as_str())
                    .context("Application Default Credentials returned an unusable token")
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
        let creds = Credentials::AccessTokenFile(path.clone());
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
