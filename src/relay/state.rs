//! What a reload replaces (configuration, TLS, authentication), and whether a live session may
//! go on under it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio_rustls::TlsAcceptor;

use super::authn::{Authenticator, Credential};
use super::config::{RelayConfig, SESSION_OVERHEAD_BYTES};
use super::jwt::JwtVerifier;
use super::outbound::HttpClient;
use super::policy::{self, Decision};
use super::sessions::Grant;
use super::tokeninfo::TokenInfo;

/// How long one token-info or JWKS request may take.
const OUTBOUND_TIMEOUT: Duration = Duration::from_secs(10);

/// The configuration in force and what is built from it.
pub(super) struct State {
    pub(super) config: RelayConfig,
    pub(super) tls: Option<TlsAcceptor>,
    pub(super) auth: Authenticator,
}

impl State {
    /// What one session reserves from the memory budget.
    pub(super) fn session_reservation(&self) -> usize {
        self.config.limits.max_unacked_bytes + SESSION_OVERHEAD_BYTES
    }

    /// The memory budget for session buffers, in bytes.
    pub(super) fn budget_bytes(&self) -> usize {
        self.config
            .limits
            .memory_budget_mib
            .saturating_mul(1024 * 1024)
    }

    /// Whether `ip` is a proxy whose `X-Forwarded-For` is believed.
    pub(super) fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.config.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// Decides `grant` against this configuration's bindings now, for a client that presented
    /// a verified certificate or not (a resumed session's client may differ from the first).
    pub(super) fn decide(&self, grant: &Grant, client_cert: bool) -> Decision {
        let req = policy::Request {
            principal: &grant.principal,
            target: &grant.target,
            port: grant.port,
            group: grant.group.as_deref(),
            client_cert,
            now: SystemTime::now(),
        };
        policy::decide(&self.config.policy, &req)
    }

    /// Whether a live session may go on under this configuration: its credential is still
    /// accepted and a binding still allows it. `Ok` carries when it must be decided again (a
    /// binding's expiry); `Err` the reason it may not.
    pub(super) async fn still_allowed(
        &self,
        grant: &Grant,
        credential: &Credential,
    ) -> Result<Option<SystemTime>, String> {
        if !self.auth.still_accepts(credential, &grant.principal).await {
            return Err("credential no longer accepted".to_owned());
        }
        match self.decide(grant, grant.client_cert) {
            Decision::Allow { until, .. } => Ok(until),
            Decision::Deny { reason } => Err(reason),
        }
    }

    /// Builds the TLS acceptor and the authentication methods (JWKS URLs are fetched now).
    pub(super) async fn build(config: RelayConfig) -> anyhow::Result<State> {
        let tls = match &config.tls {
            Some((cert, key)) => Some(TlsAcceptor::from(super::tls::server_config(
                cert,
                key,
                config.client_ca.as_ref(),
            )?)),
            None => None,
        };
        let needs_http =
            config.tokeninfo.is_some() || config.jwt.iter().any(|j| j.jwks_url.is_some());
        let http = if needs_http {
            Some(Arc::new(HttpClient::new(
                config.outbound_ca_file.as_deref(),
                OUTBOUND_TIMEOUT,
            )?))
        } else {
            None
        };
        let jwt = if config.jwt.is_empty() {
            None
        } else {
            Some(JwtVerifier::new(config.jwt.clone(), http.clone()).await?)
        };
        let tokeninfo = match (&config.tokeninfo, &http) {
            (Some(t), Some(http)) => Some(TokenInfo::new(t, http.clone()).context("[tokeninfo]")?),
            _ => None,
        };
        let mut config = config;
        let tokens = std::mem::take(&mut config.tokens);
        Ok(State {
            auth: Authenticator {
                tokens,
                jwt,
                tokeninfo,
            },
            tls,
            config,
        })
    }
}
