//! Who is calling: bearer tokens checked by one of several methods, chosen per token.
//!
//! A token shaped like a JWT goes to the JWT issuers; otherwise a static token is tried, then
//! the token-info endpoint. Static tokens are stored only as SHA-256 hashes; a presented token
//! is hashed and compared with every stored hash in constant time, with no early exit, so
//! neither the comparison nor the position of a match leaks through timing. Nothing here logs
//! a token or a value derived from one.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::bail;
use ring::digest::{SHA256, digest};
use subtle::ConstantTimeEq;

use super::jwt::JwtVerifier;
use super::tokeninfo::TokenInfo;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `user:…` or `serviceAccount:…`.
    pub principal: String,
    /// When the credential stops being valid; the relay asks for a fresh one then (4004).
    pub expires_at: Option<SystemTime>,
    /// Which method accepted it, for the audit log.
    pub method: &'static str,
}

/// Why a token was refused. The client sees only HTTP 401; this goes to the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Not a well-formed token of the kind it looks like.
    Malformed,
    /// Past its `exp`.
    Expired,
    /// Before its `nbf`.
    NotYetValid,
    /// Issued by someone the relay does not trust.
    WrongIssuer,
    /// Meant for another audience.
    WrongAudience,
    /// An algorithm outside the issuer's allow-list (`none`, HMAC, …).
    BadAlgorithm,
    /// Signed with a key the issuer's JWKS does not hold.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// Valid, but names nobody.
    NoIdentity,
    /// Names someone by an email address the issuer has not verified.
    EmailNotVerified,
    /// Names someone outside the domains or prefixes its issuer may assert.
    OutsideIssuer,
    /// A token-info answer for an OAuth client outside `allowed_client_ids`.
    WrongClient,
    /// A token-info answer without every one of `required_scopes`.
    MissingScope,
    /// Refused without a lookup: this address asked too often, or too many lookups are
    /// already in flight.
    Throttled,
    /// No method knows this token.
    UnknownToken,
    /// The token-info endpoint could not be asked.
    Unavailable(String),
}

impl AuthError {
    /// A short reason for logs and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::BadAlgorithm => "bad_algorithm",
            AuthError::UnknownKey => "unknown_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::NoIdentity => "no_identity",
            AuthError::EmailNotVerified => "email_not_verified",
            AuthError::OutsideIssuer => "identity_outside_issuer",
            AuthError::WrongClient => "wrong_client",
            AuthError::MissingScope => "missing_scope",
            AuthError::Throttled => "throttled",
            AuthError::UnknownToken => "unknown_token",
            AuthError::Unavailable(_) => "unavailable",
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Unavailable(detail) => write!(f, "unavailable: {detail}"),
            other => f.write_str(other.reason()),
        }
    }
}

/// All configured methods.
#[derive(Debug, Default)]
pub struct Authenticator {
    /// Static tokens.
    pub tokens: StaticTokens,
    /// JWT issuers, if any.
    pub jwt: Option<JwtVerifier>,
    /// The token-info endpoint, if configured.
    pub tokeninfo: Option<TokenInfo>,
}

fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.split('.').count() == 3
}

impl Authenticator {
    /// Who `token`, presented from `client`, belongs to. The address bounds how many
    /// token-info lookups one source can cause.
    ///
    /// # Errors
    /// Why it was refused.
    pub async fn authenticate(&self, token: &str, client: IpAddr) -> Result<Identity, AuthError> {
        if let Some(jwt) = &self.jwt
            && looks_like_jwt(token)
        {
            return jwt.verify(token).await;
        }
        if let Some(principal) = self.tokens.authenticate(token) {
            return Ok(Identity {
                principal: principal.to_owned(),
                expires_at: None,
                method: "static",
            });
        }
        match &self.tokeninfo {
            Some(info) => info.verify(token, client).await,
            None => Err(AuthError::UnknownToken),
        }
    }
}

/// What vouched for a caller, kept with its session so that a reload can ask whether the new
/// configuration still accepts it (a removed static token, issuer or token-info endpoint ends
/// the sessions it opened).
#[derive(Clone)]
pub enum Credential {
    /// A static token, by its SHA-256; the token itself is not kept.
    Static([u8; 32]),
    /// A JWT, kept so it can be verified again against the new issuers. Verification is
    /// offline for keys already loaded.
    Jwt(Arc<str>),
    /// A token-info answer. It cannot be re-checked without a lookup per session, so a reload
    /// only checks that token-info is still configured.
    TokenInfo,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Neither the token nor its digest is ever written out.
        f.write_str(match self {
            Credential::Static(_) => "Credential::Static(..)",
            Credential::Jwt(_) => "Credential::Jwt(..)",
            Credential::TokenInfo => "Credential::TokenInfo",
        })
    }
}

impl Credential {
    /// The credential behind `identity`, which `token` authenticated.
    pub fn of(identity: &Identity, token: &str) -> Credential {
        match identity.method {
            "static" => {
                let mut d = [0u8; 32];
                d.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
                Credential::Static(d)
            }
            "jwt" => Credential::Jwt(token.into()),
            _ => Credential::TokenInfo,
        }
    }
}

impl Authenticator {
    /// Whether this configuration still accepts `credential` as `principal`. An expired JWT
    /// still counts: expiry is handled by the 4004 that asks the client for a fresh token.
    pub async fn still_accepts(&self, credential: &Credential, principal: &str) -> bool {
        match credential {
            Credential::Static(d) => self.tokens.principal_for_digest(d) == Some(principal),
            Credential::Jwt(token) => match &self.jwt {
                Some(jwt) => match jwt.verify(token).await {
                    Ok(identity) => identity.principal == principal,
                    Err(AuthError::Expired) => true,
                    Err(_) => false,
                },
                None => false,
            },
            Credential::TokenInfo => self.tokeninfo.is_some(),
        }
    }
}

/// The configured static tokens.
#[derive(Debug, Default)]
pub struct StaticTokens {
    entries: Vec<([u8; 32], String)>,
}

impl StaticTokens {
    /// Adds a token by the lowercase hex SHA-256 of its text.
    ///
    /// # Errors
    /// When the hash is not 64 hex digits or the principal is malformed.
    pub fn add(&mut self, principal: &str, sha256_hex: &str) -> anyhow::Result<()> {
        let Some(hash) = parse_hex32(sha256_hex) else {
            bail!(
                "sha256 must be 64 hex digits (the SHA-256 of the token, e.g. from `printf %s TOKEN | sha256sum`)"
            );
        };
        if !(principal.starts_with("user:") || principal.starts_with("serviceAccount:"))
            || !principal.contains('@')
        {
            bail!(
                "principal {principal:?} must look like user:NAME@DOMAIN or serviceAccount:NAME@DOMAIN"
            );
        }
        self.entries.push((hash, principal.to_owned()));
        Ok(())
    }

    /// The principal a token belongs to, if any.
    pub fn authenticate(&self, token: &str) -> Option<&str> {
        let presented = digest(&SHA256, token.as_bytes());
        self.find(presented.as_ref())
    }

    /// The principal whose token has SHA-256 `presented` (a reload checking a live session).
    pub fn principal_for_digest(&self, presented: &[u8; 32]) -> Option<&str> {
        self.find(presented)
    }

    fn find(&self, presented: &[u8]) -> Option<&str> {
        let mut found = None;
        for (hash, principal) in &self.entries {
            if bool::from(hash.ct_eq(presented)) && found.is_none() {
                found = Some(principal.as_str());
            }
        }
        found
    }
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        *byte = ((*hi as char).to_digit(16)? * 16 + (*lo as char).to_digit(16)?) as u8;
    }
    Some(out)
}

/// The token in an `Authorization: Bearer …` header value, if it has that form.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    // SHA-256 of "foo" and of "bar".
    const FOO: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
    const BAR: &str = "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9";

    #[test]
    fn tokens_match_by_hash() {
        let mut tokens = StaticTokens::default();
        tokens.add("user:a@x.io", FOO).unwrap();
        tokens
            .add("serviceAccount:b@x.io", &BAR.to_uppercase())
            .unwrap();
        assert_eq!(tokens.authenticate("foo"), Some("user:a@x.io"));
        assert_eq!(tokens.authenticate("bar"), Some("serviceAccount:b@x.io"));
        assert_eq!(tokens.authenticate("baz"), None);
        assert_eq!(tokens.authenticate(""), None);
    }

    #[test]
    fn bad_entries_are_refused() {
        let mut tokens = StaticTokens::default();
        assert!(tokens.add("user:a@x.io", "abc").is_err());
        assert!(tokens.add("user:a@x.io", &FOO.replace('c', "g")).is_err());
        assert!(tokens.add("alice", FOO).is_err());
    }

    #[test]
    fn bearer_header_forms() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
