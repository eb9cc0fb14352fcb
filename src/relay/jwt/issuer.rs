//! A `[[jwt]]` entry of relay.toml, and which names each issuer may assert: with more than
//! one identity source, every issuer must be confined to its own domains or prefixes.

use std::path::PathBuf;

use anyhow::bail;
use serde::Deserialize;

/// `[[jwt]]` in relay.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerConfig {
    /// The `iss` claim tokens must carry.
    pub issuer: String,
    /// The `aud` claim tokens must carry.
    pub audience: String,
    /// A JWKS document on disk.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS document at an HTTPS URL (cached; refetched on an unknown `kid`).
    pub jwks_url: Option<String>,
    /// Allowed algorithms (default RS256 and ES256); HMAC and `none` are refused.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The claim naming the caller (default `email`, falling back to `sub`).
    #[serde(default = "default_claim")]
    pub identity_claim: String,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Email domains this issuer may assert (`NAME@DOMAIN`, exact, any case).
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// Principal prefixes this issuer may assert, e.g. `user:repo:my-org/` for a CI issuer
    /// whose identities are not email addresses.
    #[serde(default)]
    pub allowed_principal_prefixes: Vec<String>,
}

impl JwtIssuerConfig {
    pub(super) fn is_confined(&self) -> bool {
        !self.allowed_domains.is_empty() || !self.allowed_principal_prefixes.is_empty()
    }

    /// Whether this issuer may assert `principal`, whose name part is `name`.
    pub(super) fn may_assert(&self, name: &str, principal: &str) -> bool {
        if !self.is_confined() {
            return true;
        }
        let domain_ok = name.rsplit_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && self
                    .allowed_domains
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(domain))
        });
        domain_ok
            || self
                .allowed_principal_prefixes
                .iter()
                .any(|p| principal.starts_with(p.as_str()))
    }
}

/// Checks the `[[jwt]]` entries as a whole; `tokeninfo` says whether Google access tokens are
/// also accepted (another source of `user:` names).
///
/// # Errors
/// A one-line message naming the entry and the setting.
pub fn check_issuers(configs: &[JwtIssuerConfig], tokeninfo: bool) -> anyhow::Result<()> {
    let sources = configs.len() + usize::from(tokeninfo);
    for (i, config) in configs.iter().enumerate() {
        let what = format!("jwt[{i}] (issuer {:?})", config.issuer);
        for domain in &config.allowed_domains {
            if domain.is_empty()
                || domain.contains(['@', '*', ' '])
                || domain.starts_with('.')
                || !domain.contains('.')
            {
                bail!(
                    "{what}: allowed_domains entry {domain:?} must be a plain domain such as \"example.com\""
                );
            }
        }
        for prefix in &config.allowed_principal_prefixes {
            if !["user:", "serviceAccount:"]
                .iter()
                .any(|p| prefix.starts_with(p) && prefix.len() > p.len())
            {
                bail!(
                    "{what}: allowed_principal_prefixes entry {prefix:?} must start with user: or serviceAccount: and name more than that"
                );
            }
        }
        if sources > 1 && !config.is_confined() {
            bail!(
                "{what}: set allowed_domains (or allowed_principal_prefixes): with more than one identity source ([[jwt]] issuers, [tokeninfo]) each issuer must be limited to the names it may assert"
            );
        }
    }
    Ok(())
}

pub(super) fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}

pub(super) fn default_claim() -> String {
    "email".into()
}

pub(super) fn default_leeway() -> u64 {
    30
}
