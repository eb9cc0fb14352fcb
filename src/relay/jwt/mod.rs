//! OIDC/JWT bearer tokens, checked with the `jsonwebtoken` crate against a JWKS from a file or
//! an HTTPS URL: issuer, audience, expiry and not-before with a small leeway, and an algorithm
//! allow-list per issuer (asymmetric algorithms only, so an HMAC token "signed" with a public
//! key is refused, and `none` does not exist here).
//!
//! Every issuer writes into the same `user:`/`serviceAccount:` namespace, so with more than one
//! identity source each issuer is confined to the domains or principal prefixes it may assert;
//! otherwise any issuer could name anyone. An `email` identity must carry `email_verified`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use tokio::sync::{Mutex, RwLock};

use super::authn::{AuthError, Identity};
use super::outbound::HttpClient;

mod issuer;

pub use issuer::{JwtIssuerConfig, check_issuers};

/// An unknown `kid` refetches a JWKS URL at most this often (key rotation without letting
/// garbage tokens hammer the identity provider).
const JWKS_REFRESH_MIN: Duration = Duration::from_secs(30);
/// Keys accepted from one JWKS document.
const MAX_KEYS: usize = 64;

struct Keys {
    by_kid: HashMap<String, DecodingKey>,
    /// Keys without a `kid`, tried only for tokens without one.
    anonymous: Vec<DecodingKey>,
}

struct Issuer {
    config: JwtIssuerConfig,
    algorithms: Vec<Algorithm>,
    /// Write-locked only to swap in a fetched set, never across a fetch, so verification with
    /// known keys never waits for the identity provider.
    keys: Arc<RwLock<Keys>>,
    /// Held for the length of a refetch (one in flight per issuer); holds when an unknown `kid`
    /// last caused one.
    refetched: Arc<Mutex<Option<Instant>>>,
}

/// Verifies JWTs from the configured issuers.
pub struct JwtVerifier {
    issuers: Vec<Issuer>,
    http: Option<Arc<HttpClient>>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .issuers
            .iter()
            .map(|i| i.config.issuer.as_str())
            .collect();
        f.debug_struct("JwtVerifier")
            .field("issuers", &names)
            .finish()
    }
}

fn parse_algorithm(name: &str) -> anyhow::Result<Algorithm> {
    let alg: Algorithm = name
        .parse()
        .map_err(|_| anyhow::anyhow!("unknown JWT algorithm {name:?}"))?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        bail!("JWT algorithm {name} is symmetric: the relay accepts only public-key algorithms");
    }
    Ok(alg)
}

fn keys_from(set: &JwkSet) -> anyhow::Result<Keys> {
    if set.keys.len() > MAX_KEYS {
        bail!("the JWKS holds {} keys (limit {MAX_KEYS})", set.keys.len());
    }
    let mut by_kid = HashMap::new();
    let mut anonymous = Vec::new();
    for jwk in &set.keys {
        // Skip keys we cannot use (e.g. symmetric "oct" keys) rather than fail the whole set.
        if matches!(
            jwk.algorithm,
            jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
        ) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        match &jwk.common.key_id {
            Some(kid) => {
                by_kid.insert(kid.clone(), key);
            }
            None => anonymous.push(key),
        }
    }
    if by_kid.is_empty() && anonymous.is_empty() {
        bail!("the JWKS holds no usable public key");
    }
    Ok(Keys { by_kid, anonymous })
}

impl JwtVerifier {
    /// Loads every issuer's keys (files now, URLs now too, so a bad URL fails at start-up).
    ///
    /// # Errors
    /// A message naming the issuer and what is wrong.
    pub async fn new(
        configs: Vec<JwtIssuerConfig>,
        http: Option<Arc<HttpClient>>,
    ) -> anyhow::Result<JwtVerifier> {
        let mut issuers = Vec::new();
        for config in configs {
            let what = format!("jwt issuer {:?}", config.issuer);
            let algorithms = config
                .algorithms
                .iter()
                .map(|a| parse_algorithm(a))
                .collect::<anyhow::Result<Vec<_>>>()
                .with_context(|| what.clone())?;
            if algorithms.is_empty() {
                bail!("{what}: algorithms is empty");
            }
            let set = match (&config.jwks_file, &config.jwks_url) {
                (Some(file), None) => {
                    let text = std::fs::read_to_string(file)
                        .with_context(|| format!("{what}: reading JWKS file {}", file.display()))?;
                    serde_json::from_str::<JwkSet>(&text).with_context(|| {
                        format!("{what}: JWKS file {} is not a JWK set", file.display())
                    })?
                }
                (None, Some(url)) => {
                    HttpClient::check_url(url).with_context(|| what.clone())?;
                    let http = http.as_ref().context("no HTTP client for a JWKS URL")?;
                    fetch_jwks(http, url).await.with_context(|| what.clone())?
                }
                _ => bail!("{what}: give exactly one of jwks_file and jwks_url"),
            };
            let keys = keys_from(&set).with_context(|| what.clone())?;
            issuers.push(Issuer {
                config,
                algorithms,
                keys: Arc::new(RwLock::new(keys)),
                refetched: Arc::new(Mutex::new(None)),
            });
        }
        Ok(JwtVerifier { issuers, http })
    }

    /// Whether any issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Checks a token and returns who it names.
    ///
    /// # Errors
    /// An [`AuthError`] naming the first check that failed.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        let issuer_name = unverified_issuer(token).ok_or(AuthError::Malformed)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == issuer_name)
            .ok_or(AuthError::WrongIssuer)?;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(AuthError::BadAlgorithm);
        }
        let key = self.key_for(issuer, header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&issuer.config.issuer]);
        validation.set_audience(&[&issuer.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = issuer.config.leeway_secs;
        let data = decode::<serde_json::Value>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::BadAlgorithm
                }
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                _ => AuthError::Malformed,
            }
        })?;
        let claims = data.claims;
        // jsonwebtoken rounds a fractional `exp` and skips an `nbf` it cannot parse, so both
        // are read again here: the session's 4004 deadline comes from this `exp`.
        let expires_at = numeric_date(&claims, "exp")?;
        numeric_date(&claims, "nbf")?;
        let config = &issuer.config;
        let (name, claim) = match claim_str(&claims, &config.identity_claim) {
            Some(name) => (name, config.identity_claim.as_str()),
            None => (
                claim_str(&claims, "sub").ok_or(AuthError::NoIdentity)?,
                "sub",
            ),
        };
        if claim == "email" && !is_true(claims.get("email_verified")) {
            return Err(AuthError::EmailNotVerified);
        }
        let principal = principal_for(name);
        if !config.may_assert(name, &principal) {
            return Err(AuthError::OutsideIssuer);
        }
        Ok(Identity {
            principal,
            expires_at,
            method: "jwt",
        })
    }

    async fn key_for(&self, issuer: &Issuer, kid: Option<&str>) -> Result<DecodingKey, AuthError> {
        let lookup = |keys: &Keys| match kid {
            Some(kid) => keys.by_kid.get(kid).cloned(),
            None if keys.by_kid.len() + keys.anonymous.len() == 1 => keys
                .anonymous
                .first()
                .or_else(|| keys.by_kid.values().next())
                .cloned(),
            None => None,
        };
        if let Some(key) = lookup(&*issuer.keys.read().await) {
            return Ok(key);
        }
        // An unknown kid may be a rotated key: refetch a URL-backed set, rate-limited.
        let (Some(url), Some(http)) = (&issuer.config.jwks_url, &self.http) else {
            return Err(AuthError::UnknownKey);
        };
        // Only callers with an unknown kid queue here, behind at most one fetch.
        let mut refetched = issuer.refetched.clone().lock_owned().await;
        if let Some(key) = lookup(&*issuer.keys.read().await) {
            // The fetch this request waited behind brought the key.
            return Ok(key);
        }
        if refetched.is_some_and(|t| t.elapsed() < JWKS_REFRESH_MIN) {
            return Err(AuthError::UnknownKey);
        }
        *refetched = Some(Instant::now());
        // The fetch runs on its own task, holding the refetch lock, so a caller cancelled
        // meanwhile (handshake timeout) neither abandons it nor lets a second one start. It
        // ends within the HTTP client's timeout.
        let (http, url, keys) = (http.clone(), url.clone(), issuer.keys.clone());
        let fetch = tokio::spawn(async move {
            let _one_at_a_time = refetched;
            let fresh = fetch_jwks(&http, &url)
                .await
                .ok()
                .and_then(|set| keys_from(&set).ok());
            if let Some(fresh) = fresh {
                *keys.write().await = fresh;
            }
        });
        let _ = fetch.await;
        lookup(&*issuer.keys.read().await).ok_or(AuthError::UnknownKey)
    }
}

async fn fetch_jwks(http: &HttpClient, url: &str) -> anyhow::Result<JwkSet> {
    let (status, body) = http.get(url, "fetching the JWKS").await?;
    if status != 200 {
        bail!("fetching the JWKS: HTTP {status}");
    }
    serde_json::from_slice(&body).context("the JWKS document is not a JWK set")
}

fn claim_str<'a>(claims: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    claims
        .get(name)
        .and_then(serde_json::Value::as_str)
        .filter(|s| !s.is_empty())
}

/// `true` or `"true"` (some providers send booleans as strings).
fn is_true(value: Option<&serde_json::Value>) -> bool {
    value.is_some_and(|v| v.as_bool() == Some(true) || v.as_str() == Some("true"))
}

/// A NumericDate claim (RFC 7519: seconds since the epoch, fractions allowed), if present.
fn numeric_date(claims: &serde_json::Value, name: &str) -> Result<Option<SystemTime>, AuthError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let secs = value
        .as_f64()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or(AuthError::Malformed)?;
    let since_epoch = Duration::try_from_secs_f64(secs).map_err(|_| AuthError::Malformed)?;
    UNIX_EPOCH
        .checked_add(since_epoch)
        .map(Some)
        .ok_or(AuthError::Malformed)
}

/// The `iss` claim read without verification, only to pick the issuer whose keys then verify
/// the token.
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

/// `serviceAccount:` for Google service-account addresses, else `user:`.
pub fn principal_for(name: &str) -> String {
    if name.ends_with(".gserviceaccount.com") {
        format!("serviceAccount:{name}")
    } else {
        format!("user:{name}")
    }
}

#[cfg(test)]
mod tests;
