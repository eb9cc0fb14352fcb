//! Google-style access tokens, checked at a token-info endpoint (Google's by default).
//!
//! An access token says who its user is, but also which OAuth client it was issued to and for
//! which scopes: a token a user gave some unrelated "Sign in with Google" app names them just
//! as well. So an answer is accepted only for a configured client (`azp`, else `aud`) and with
//! every required scope.
//!
//! Each unknown token costs one outbound lookup, so lookups are bounded: a positive answer is
//! cached until the token expires, a refusal for [`REFUSED_TTL`], at most [`MAX_IN_FLIGHT`]
//! lookups run at once, and one source address may cause [`LOOKUP_BURST`] lookups, then one
//! every two seconds ([`LOOKUPS_PER_SEC`]). Over a bound the token is refused without a lookup
//! ([`AuthError::Throttled`], HTTP 401). Cache keys are SHA-256 digests held only in memory;
//! nothing here is logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use ring::digest::{SHA256, digest};
use serde::Deserialize;
use tokio::sync::{Mutex, Semaphore};

use super::authn::{AuthError, Identity};
use super::jwt::principal_for;
use super::outbound::HttpClient;
use super::throttle::{PerSource, Rate};

/// Google's token-info endpoint.
pub const GOOGLE_TOKENINFO: &str = "https://oauth2.googleapis.com/tokeninfo";
/// Cached answers kept at most, each way; expired ones are dropped first.
const CACHE_LIMIT: usize = 10_000;
/// How long a refused token is refused without asking again. Short, because the cache is
/// for a client retrying a bad token, not for random tokens (the per-address limit is).
pub const REFUSED_TTL: Duration = Duration::from_secs(30);
/// Lookups outstanding at once, over all callers.
pub const MAX_IN_FLIGHT: usize = 16;
/// Lookups one source address (IPv6: one /64) may cause at once.
pub const LOOKUP_BURST: f64 = 20.0;
/// Lookups one source address may cause per second after the burst. An honest client needs
/// one per token (about hourly), so even a busy NAT stays well under this.
pub const LOOKUPS_PER_SEC: f64 = 0.5;
/// Source addresses tracked at once.
const MAX_SOURCES: usize = 10_000;

/// `[tokeninfo]` in relay.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenInfoConfig {
    /// The endpoint (default Google's); the token is sent as `?access_token=`.
    #[serde(default = "default_url")]
    pub url: String,
    /// OAuth client ids whose tokens are accepted, matched against the answer's `azp` (or
    /// `aud` when it has no `azp`). Required.
    #[serde(default)]
    pub allowed_client_ids: Vec<String>,
    /// Scopes a token must all carry (the answer's space-separated `scope`). Required.
    #[serde(default)]
    pub required_scopes: Vec<String>,
}

fn default_url() -> String {
    GOOGLE_TOKENINFO.to_owned()
}

impl TokenInfoConfig {
    /// Checks the settings, so a relay without a client allow list never starts.
    ///
    /// # Errors
    /// A one-line message naming the setting.
    pub fn check(&self) -> anyhow::Result<()> {
        HttpClient::check_url(&self.url)?;
        if self.allowed_client_ids.is_empty()
            || self.allowed_client_ids.iter().any(|c| c.trim().is_empty())
        {
            bail!(
                "allowed_client_ids must list the OAuth client ids whose access tokens are accepted (gcloud's is 32555940559.apps.googleusercontent.com; a service account's is its numeric unique id): without it, a token any Google app obtained for a user would be accepted as that user"
            );
        }
        if self.required_scopes.is_empty()
            || self
                .required_scopes
                .iter()
                .any(|s| s.trim().is_empty() || s.contains(' '))
        {
            bail!(
                "required_scopes must list the scopes every accepted token carries, e.g. [\"https://www.googleapis.com/auth/cloud-platform\"]: without it, a sign-in-only token (openid email) would be accepted"
            );
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Answer {
    email: Option<String>,
    email_verified: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
    expires_in: Option<serde_json::Value>,
    aud: Option<String>,
    azp: Option<String>,
    scope: Option<String>,
}

fn number(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// Checks tokens at the endpoint, with caches and limits.
pub struct TokenInfo {
    url: String,
    allowed_client_ids: Vec<String>,
    required_scopes: Vec<String>,
    http: Arc<HttpClient>,
    cache: Mutex<HashMap<[u8; 32], Identity>>,
    refused: Mutex<HashMap<[u8; 32], (Instant, AuthError)>>,
    in_flight: Semaphore,
    per_source: Mutex<PerSource>,
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
    /// When the settings are incomplete or the URL is not https (or http to loopback).
    pub fn new(config: &TokenInfoConfig, http: Arc<HttpClient>) -> anyhow::Result<TokenInfo> {
        config.check()?;
        Ok(TokenInfo {
            url: config.url.clone(),
            allowed_client_ids: config.allowed_client_ids.clone(),
            required_scopes: config.required_scopes.clone(),
            http,
            cache: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            per_source: Mutex::new(PerSource::new(
                Rate {
                    burst: LOOKUP_BURST,
                    per_sec: LOOKUPS_PER_SEC,
                },
                MAX_SOURCES,
            )),
        })
    }

    /// Who `token`, presented from `client`, belongs to.
    ///
    /// # Errors
    /// [`AuthError::UnknownToken`] when the endpoint rejects it, [`AuthError::WrongClient`] or
    /// [`AuthError::MissingScope`] for a token meant for something else,
    /// [`AuthError::Expired`], [`AuthError::NoIdentity`] without a verified email,
    /// [`AuthError::Throttled`] over a lookup bound, [`AuthError::Unavailable`] when the
    /// endpoint cannot be asked.
    pub async fn verify(&self, token: &str, client: IpAddr) -> Result<Identity, AuthError> {
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
        if let Some((until, why)) = self.refused.lock().await.get(&key)
            && *until > Instant::now()
        {
            return Err(why.clone());
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Err(AuthError::Throttled);
        };
        if !self.per_source.lock().await.allow(client, Instant::now()) {
            return Err(AuthError::Throttled);
        }
        match self.look_up(token, now).await {
            Ok(identity) => {
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
            // The endpoint's trouble says nothing about the token.
            Err(e @ AuthError::Unavailable(_)) => Err(e),
            Err(e) => {
                let mut refused = self.refused.lock().await;
                let at = Instant::now();
                if refused.len() >= CACHE_LIMIT {
                    refused.retain(|_, (until, _)| *until > at);
                    if refused.len() >= CACHE_LIMIT {
                        refused.clear();
                    }
                }
                refused.insert(key, (at + REFUSED_TTL, e.clone()));
                Err(e)
            }
        }
    }

    async fn look_up(&self, token: &str, now: SystemTime) -> Result<Identity, AuthError> {
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
        // `azp` is the client the token was issued to; `aud` equals it for access tokens and
        // is the only one some endpoints send.
        let issued_to = answer.azp.as_deref().or(answer.aud.as_deref());
        if !issued_to.is_some_and(|c| self.allowed_client_ids.iter().any(|a| a == c)) {
            return Err(AuthError::WrongClient);
        }
        let scopes: Vec<&str> = answer
            .scope
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        if !self
            .required_scopes
            .iter()
            .all(|s| scopes.contains(&s.as_str()))
        {
            return Err(AuthError::MissingScope);
        }
        let verified = answer
            .email_verified
            .as_ref()
            .is_some_and(|v| v.as_bool() == Some(true) || v.as_str() == Some("true"));
        let email = answer
            .email
            .filter(|e| !e.is_empty() && verified)
            .ok_or(AuthError::NoIdentity)?;
        let expires_at = match (
            answer.exp.as_ref().and_then(number),
            answer.expires_in.as_ref().and_then(number),
        ) {
            (Some(exp), _) => UNIX_EPOCH.checked_add(Duration::from_secs(exp)),
            (None, Some(left)) => now.checked_add(Duration::from_secs(left)),
            (None, None) => None,
        }
        .ok_or(AuthError::NoIdentity)?;
        if expires_at <= now {
            return Err(AuthError::Expired);
        }
        Ok(Identity {
            principal: principal_for(&email),
            expires_at: Some(expires_at),
            method: "tokeninfo",
        })
    }
}
