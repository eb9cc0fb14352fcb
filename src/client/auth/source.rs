//! The token sources themselves: what each one is and how it produces a fresh token. The
//! cache, the principal and the retry policy around them are in the parent module.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Token;
use crate::client::adc::Library;
use crate::client::error::Error;
use crate::client::gcloud::{GcloudAnswer, GcloudRunner};
use crate::client::tokeninfo::{TokenFacts, TokenInfo};

/// Where tokens come from.
pub(super) enum Source {
    /// A file holding an access token, re-read before every handshake (another process may
    /// refresh it), as gcloud's `CLOUDSDK_AUTH_ACCESS_TOKEN_FILE`. Never cached: the file is
    /// already the cache. `how` names the flag, variable or property that chose it.
    AccessTokenFile { path: PathBuf, how: String },
    /// The gcloud account, through `gcloud config config-helper`.
    Gcloud(Box<GcloudSource>),
    /// `google-cloud-auth`: a credentials file of any type, or the metadata server.
    Library {
        library: Library,
        tokeninfo: Option<TokenInfo>,
        fingerprint: Vec<u8>,
    },
}

/// The gcloud account, through `gcloud config config-helper`.
pub(super) struct GcloudSource {
    pub(super) runner: GcloudRunner,
    /// The answer read while the configuration was built, used for the first token.
    pub(super) primed: Mutex<Option<GcloudAnswer>>,
    /// Set after a refusal: the next call asks gcloud for a fresh token.
    pub(super) force_refresh: AtomicBool,
    pub(super) fingerprint: Vec<u8>,
    pub(super) account: Option<String>,
}

/// A token fetched just now, with what came with it.
pub(super) struct Fresh {
    pub(super) token: Token,
    pub(super) expires_at: Option<u64>,
    pub(super) principal: Option<String>,
    pub(super) properties: Option<serde_json::Value>,
}

impl Source {
    /// A fresh token and, when known, its expiry in Unix seconds.
    pub(super) async fn fetch(&self) -> Result<Fresh, Error> {
        let auth = Error::auth;
        match self {
            Source::AccessTokenFile { path, how } => {
                let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                    auth(format!(
                        "reading access token file {} ({how}): {e}",
                        path.display()
                    ))
                })?;
                let token = Token::new(&text).map_err(|e| {
                    auth(format!("access token file {} ({how}): {e}", path.display()))
                })?;
                Ok(Fresh {
                    token,
                    expires_at: None,
                    principal: None,
                    properties: None,
                })
            }
            Source::Gcloud(g) => {
                let GcloudSource {
                    runner,
                    primed,
                    force_refresh,
                    account,
                    ..
                } = g.as_ref();
                let ready = primed.lock().ok().and_then(|mut p| p.take());
                let answer = match ready {
                    Some(answer) => answer,
                    None => {
                        let runner = runner.clone();
                        let force = force_refresh.swap(false, Ordering::Relaxed);
                        tokio::task::spawn_blocking(move || runner.run(force))
                            .await
                            .map_err(|e| auth(format!("running gcloud: {e}")))??
                    }
                };
                let principal = answer
                    .properties
                    .impersonate
                    .clone()
                    .or(answer.properties.account.clone())
                    .or_else(|| account.clone());
                let properties = serde_json::to_value(&answer.properties).ok();
                Ok(Fresh {
                    token: answer.token,
                    expires_at: answer.expires_at,
                    principal,
                    properties,
                })
            }
            Source::Library {
                library, tokeninfo, ..
            } => {
                let (token, known_expiry) = library.fetch().await?;
                // google-cloud-auth keeps the expiry to itself; token-info tells it (once per
                // fresh token, as the cache then serves it).
                let facts = match (known_expiry, tokeninfo) {
                    (Some(expires_at), _) => Some(TokenFacts {
                        expires_at,
                        email: None,
                    }),
                    (None, Some(info)) => match info.lookup(&token).await {
                        Ok(facts) => Some(facts),
                        Err(e) => {
                            tracing::info!("not caching the token: its expiry is unknown ({e})");
                            None
                        }
                    },
                    (None, None) => None,
                };
                let principal = library
                    .named_principal()
                    .map(str::to_owned)
                    .or_else(|| facts.as_ref().and_then(|f| f.email.clone()));
                Ok(Fresh {
                    token,
                    expires_at: facts.map(|f| f.expires_at),
                    principal,
                    properties: None,
                })
            }
        }
    }
}
