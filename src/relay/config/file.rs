//! What `relay.toml` may say: its sections and their defaults, as written, before any check.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use crate::relay::jwt::JwtIssuerConfig;
use crate::relay::tls::ClientAuthMode;
use crate::relay::tokeninfo::TokenInfoConfig;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFile {
    /// Address to listen on, e.g. `0.0.0.0:443` or `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// Certificate and key; without it the relay speaks plain `ws://` (behind a TLS proxy).
    pub tls: Option<TlsFiles>,
    /// Static bearer tokens, stored as SHA-256 hashes.
    #[serde(default)]
    pub static_tokens: Vec<StaticTokenEntry>,
    /// The machines the relay may reach.
    #[serde(default)]
    pub instances: Vec<InstanceEntry>,
    /// Who may reach what; nothing else is allowed.
    #[serde(default)]
    pub bindings: Vec<BindingEntry>,
    /// Timeouts and limits.
    #[serde(default)]
    pub limits: Limits,
    /// Address of the admin endpoint (`/healthz`, `/metrics`); off when absent.
    pub admin_listen: Option<SocketAddr>,
    /// This relay's name in a fleet; it starts every session id, so a load balancer can send
    /// `/v4/reconnect?sid=…` to the node that holds the session.
    pub node_id: Option<String>,
    /// File the audit log (JSON lines) is appended to; off when absent.
    pub audit_log: Option<PathBuf>,
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// OIDC/JWT issuers whose tokens are accepted.
    #[serde(default)]
    pub jwt: Vec<JwtIssuerConfig>,
    /// A token-info endpoint for Google-style access tokens.
    pub tokeninfo: Option<TokenInfoConfig>,
    /// Extra CA (PEM) trusted for the relay's own HTTPS lookups (JWKS, token-info).
    pub outbound_ca_file: Option<PathBuf>,
    /// Groups that bindings may name as `group:NAME`.
    #[serde(default)]
    pub groups: Vec<GroupEntry>,
    /// Destination groups for host-mode targets.
    #[serde(default)]
    pub dest_groups: Vec<DestGroupEntry>,
}

/// `[[groups]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    /// `group:NAME`.
    pub name: String,
    /// `user:…`, `serviceAccount:…`, `domain:…`.
    pub members: Vec<String>,
}

/// `[[dest_groups]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestGroupEntry {
    /// Project id.
    pub project: String,
    /// Region.
    pub region: String,
    /// Group name.
    pub name: String,
    /// Address ranges the relay may dial for this group.
    pub cidrs: Vec<String>,
    /// Host names clients may ask for; they must resolve inside `cidrs`.
    #[serde(default)]
    pub fqdns: Vec<String>,
}

/// `[tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates that client certificates must chain to; turns on mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// `"required"` (the default with `client_ca`) or `"optional"`.
    pub client_auth: Option<ClientAuthMode>,
}

/// `[[static_tokens]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticTokenEntry {
    /// Who presents it, e.g. `user:alice@example.com`.
    pub principal: String,
    /// Lowercase hex SHA-256 of the token.
    pub sha256: String,
}

/// `[[instances]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceEntry {
    /// Project id.
    pub project: String,
    /// Zone.
    pub zone: String,
    /// Instance name.
    pub name: String,
    /// Interface name → internal address.
    pub interfaces: HashMap<String, IpAddr>,
}

/// `[[bindings]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingEntry {
    /// Only `roles/iap.tunnelResourceAccessor` grants tunnels.
    pub role: String,
    /// `user:…`, `serviceAccount:…`, `domain:…`.
    pub members: Vec<String>,
    /// `projects/P`, `projects/P/zones/Z` or `projects/P/zones/Z/instances/NAME`.
    pub resource: String,
    /// Allowed destination ports; absent means any.
    pub ports: Option<Vec<u16>>,
    /// Condition: the client must have presented a verified TLS client certificate.
    #[serde(default)]
    pub require_client_cert: bool,
    /// Condition: the binding ends at this time (a TOML date-time with offset).
    pub expires: Option<toml::value::Datetime>,
}

/// `[limits]`, with defaults suited to a small deployment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Seconds a client may take from TCP accept to a finished WebSocket upgrade.
    pub handshake_timeout_secs: u64,
    /// Seconds to wait for the backend's TCP connect.
    pub backend_connect_timeout_secs: u64,
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Unacknowledged backend bytes held per session.
    pub max_unacked_bytes: usize,
    /// Seconds a session whose WebSocket dropped waits for its client to resume it.
    pub resume_window_secs: u64,
    /// When set, every this many seconds a session's WebSocket is closed with 4004 so the
    /// client resumes with a fresh token (continuous authentication).
    pub reauthenticate_after_secs: Option<u64>,
    /// Tunnels one principal may hold at once.
    pub max_connections_per_principal: usize,
    /// Seconds without tunnel data either way before a session is closed.
    pub idle_timeout_secs: Option<u64>,
    /// Longest a session may last, in seconds.
    pub max_session_secs: Option<u64>,
    /// On SIGTERM, seconds live sessions may take to finish before they are closed.
    pub drain_secs: u64,
    /// Seconds a new connection may stay silent before its first byte (the TLS ClientHello,
    /// or the request line without TLS); shorter than the whole handshake so idle sockets
    /// are dropped early. Not shorter than `handshake_timeout_secs`: that limit applies.
    pub first_byte_timeout_secs: u64,
    /// Connections from one client address (an IPv6 /64) that may be between accept and a
    /// finished upgrade at once; more are closed at once. Trusted proxies are exempt.
    pub max_handshakes_per_address: usize,
    /// Memory, in MiB, that the buffers of all sessions (attached and parked) may hold at
    /// most. Each session reserves its worst case when it opens
    /// (`max_unacked_bytes` + [`SESSION_OVERHEAD_BYTES`]); a new session that does not fit
    /// is refused with HTTP 503.
    pub memory_budget_mib: usize,
}

/// Per-session buffers besides the resend buffer, at their bounds: the output queue for the
/// backend (256 KiB and one message), the WebSocket write buffer (about 196 KiB), the
/// WebSocket read and message buffers (2 × 17 KiB), TLS buffers and the backend read buffer.
/// Rounded up; the sum is what one session reserves from the memory budget.
pub const SESSION_OVERHEAD_BYTES: usize = 768 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout_secs: 10,
            backend_connect_timeout_secs: 20,
            max_connections: 10_000,
            max_unacked_bytes: crate::session::state::DEFAULT_MAX_UNACKED,
            resume_window_secs: 60,
            reauthenticate_after_secs: None,
            max_connections_per_principal: 1000,
            idle_timeout_secs: None,
            max_session_secs: None,
            drain_secs: 30,
            first_byte_timeout_secs: 3,
            max_handshakes_per_address: 256,
            memory_budget_mib: 2048,
        }
    }
}
