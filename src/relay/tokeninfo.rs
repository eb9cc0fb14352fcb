//! Google-style access tokens, checked at a token-info endpoint (Google's by default). A
//! positive answer is cached until the token expires, so a client opening many tunnels costs
//! one lookup. Cache keys are SHA-256 digests held only in memory; nothing here is logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::digest::{SHA256, digest};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::authn::{AuthError, Identity};
use super::http::HttpClient;
use super::jwt::principal_for;

/// Google's token-info endpoint.
pub const GOOGLE_TOKENINFO: &str = "https://oauth2.googleapis.com/tokeninfo";
/// Cached answers kept at most; expired ones are dropped first.
const CACHE_LIMIT: usize = 10_000;

/// `[tokeninfo]` in relay.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenInfoConfig {
    /// The endpoint (default Google's); the token is sent as `?access_token=`.
    #[serde(default = "default_url")]
    pub url: String,
}

fn default_url() -> String {
    GOOGLE_TOKENINFO.to_owned()
}

#[derive(Deserialize)]
struct Answer {
    email: Option<String>,
    email_verified: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
    expires_in: Option<serde_json::Value>,
}

fn number(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// Checks tokens at the endpoint, with a cache.
pub struct TokenInfo {
    url: String,
    http: Arc<HttpClient>,
    cache: Mutex<HashMap<[u8; 32], Identity>>,
}

impl std::fmt::Debug for TokenInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenInfo").field("url", &self.url).finish()
    }
}

impl TokenInfo {
    /// A checker for `config`.
    ///
    /// # Errors
    /// When the URL is not https (or http to loopback).
    pub fn new(config: &TokenInfoConfig, http: Arc<HttpClient>) -> anyhow::Result<TokenInfo> {
        HttpClient::check_url(&config.url)?;
        Ok(TokenInfo {
            url: config.url.clone(),
            http,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Who `token` belongs to.
    ///
    /// # Errors
    /// [`AuthError::UnknownToken`] when the endpoint rejects it, [`AuthError::Expired`],
    /// [`AuthError::NoIdentity`] without a verified email, [`AuthError::Unavailable`] when
    /// the endpoint cannot be asked.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let key: [u8; 32] = digest(&SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .map_err(|_| AuthError::Malformed)?;
        let now = SystemTime::now();
        if let Some(hit) = self.cache.lock().await.get(&key)
            && hit.expires_at.is_some_and(|e| e > now)
        {
            return Ok(hit.clone());
        }
        let url = format!(
            "{}{}access_token={}",
            self.url,
            if self.url.contains('?') { '&' } else { '?' },
            form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>()
        );
        let (status, body) = self
            .http
            .get(&url, "asking the token-info endpoint")
            .await
            .map_err(|e| AuthError::Unavailable(format!("{e:#}")))?;
        if status == 400 || status == 401 {
            return Err(AuthError::UnknownToken);
        }
        if status != 200 {
            return Err(AuthError::Unavailable(format!(
                "token-info endpoint answered HTTP {status}"
            )));
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|_| AuthError::Unavailable("token-info answer is not JSON".into()))?;
        let verified = answer
            .email_verified
            .as_ref()
            .is_none_or(|v| v.as_bool() == Some(true) || v.as_str() == Some("true"));
        let email = answer
            .email
            .filter(|e| !e.is_empty() && verified)
            .ok_or(AuthError::NoIdentity)?;
        let expires_at = match (
            answer.exp.as_ref().and_then(number),
            answer.expires_in.as_ref().and_then(number),
        ) {
            (Some(exp), _) => UNIX_EPOCH + Duration::from_secs(exp),
            (None, Some(left)) => now + Duration::from_secs(left),
            (None, None) => return Err(AuthError::NoIdentity),
        };
        if expires_at <= now {
            return Err(AuthError::Expired);
        }
        let identity = Identity {
            principal: principal_for(&email),
            expires_at: Some(expires_at),
            method: "tokeninfo",
        };
        let mut cache = self.cache.lock().await;
        if cache.len() >= CACHE_LIMIT {
            cache.retain(|_, id| id.expires_at.is_some_and(|e| e > now));
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(key, identity.clone());
        Ok(identity)
    }
}
