//! `relay.toml`: parsed, checked, and turned into the relay's typed parts.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use std::time::{Duration, SystemTime};

use super::authn::StaticTokens;
use super::inventory::{Cidr, DestGroup, Inventory};
use super::jwt::JwtIssuerConfig;
use super::policy::{Binding, Policy, Resource};
use super::tls::{ClientAuthMode, ClientCa};
use super::tokeninfo::TokenInfoConfig;

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

/// The role that grants tunnel access, as in Google Cloud IAM.
pub const TUNNEL_ROLE: &str = "roles/iap.tunnelResourceAccessor";

/// A checked configuration.
#[derive(Debug)]
pub struct RelayConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Certificate chain and key paths (resolved against the config file's folder).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Client-certificate verification (`[tls] client_ca`), if configured.
    pub client_ca: Option<ClientCa>,
    /// Static tokens.
    pub tokens: StaticTokens,
    /// Reachable machines.
    pub inventory: Inventory,
    /// Bindings.
    pub policy: Policy,
    /// Limits.
    pub limits: Limits,
    /// Admin endpoint address.
    pub admin_listen: Option<SocketAddr>,
    /// Node id, prefixed to session ids.
    pub node_id: Option<String>,
    /// Audit log file.
    pub audit_log: Option<PathBuf>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// JWT issuers (JWKS file paths resolved).
    pub jwt: Vec<JwtIssuerConfig>,
    /// Token-info endpoint.
    pub tokeninfo: Option<TokenInfoConfig>,
    /// Extra CA for the relay's own HTTPS lookups.
    pub outbound_ca_file: Option<PathBuf>,
}

/// Every problem found in a configuration, one sentence each.
#[derive(Debug)]
pub struct ConfigProblems(pub Vec<String>);

impl std::fmt::Display for ConfigProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl std::error::Error for ConfigProblems {}

impl RelayConfig {
    /// Reads and checks `path`.
    ///
    /// # Errors
    /// Reading the file, or [`ConfigProblems`] naming every entry that is wrong.
    pub fn load(path: &Path) -> anyhow::Result<RelayConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading relay config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).with_context(|| format!("relay config {}", path.display()))
    }

    /// Parses and checks configuration text; relative paths are taken from `base`.
    ///
    /// # Errors
    /// [`ConfigProblems`] naming every entry that is wrong.
    pub fn parse(text: &str, base: &Path) -> anyhow::Result<RelayConfig> {
        match Self::parse_all(text, base) {
            (Some(config), problems) if problems.is_empty() => Ok(config),
            (_, problems) => Err(ConfigProblems(problems).into()),
        }
    }

    /// Parses configuration text and lists every problem: the configuration holds every entry
    /// that was right (for further checks); `None` when the text is not a relay.toml at all.
    pub fn parse_all(text: &str, base: &Path) -> (Option<RelayConfig>, Vec<String>) {
        let file: RelayFile = match toml::from_str(text) {
            Ok(file) => file,
            // TOML and serde stop at the first error: there is nothing to go on from.
            Err(e) => return (None, vec![one_line(&e.to_string())]),
        };
        let mut problems: Vec<String> = Vec::new();
        let mut tokens = StaticTokens::default();
        for (i, entry) in file.static_tokens.iter().enumerate() {
            if let Err(e) = tokens.add(&entry.principal, &entry.sha256) {
                problems.push(format!("static_tokens[{i}]: {e:#}"));
            }
        }
        let mut inventory = Inventory::default();
        for (i, entry) in file.instances.into_iter().enumerate() {
            if entry.interfaces.is_empty() {
                problems.push(format!("instances[{i}] ({}) has no interfaces", entry.name));
                continue;
            }
            inventory.add_instance(&entry.project, &entry.zone, &entry.name, entry.interfaces);
        }
        for (i, entry) in file.dest_groups.into_iter().enumerate() {
            let what = format!("dest_groups[{i}] ({})", entry.name);
            if entry.cidrs.is_empty() {
                problems.push(format!(
                    "{what}: cidrs is empty: list the address ranges the relay may dial for this group"
                ));
                continue;
            }
            let cidrs = match entry
                .cidrs
                .iter()
                .map(|c| Cidr::parse(c))
                .collect::<anyhow::Result<Vec<_>>>()
            {
                Ok(cidrs) => cidrs,
                Err(e) => {
                    problems.push(format!("{what}: {e:#}"));
                    continue;
                }
            };
            inventory.add_group(DestGroup {
                project: entry.project,
                region: entry.region,
                name: entry.name,
                cidrs,
                fqdns: entry.fqdns,
            });
        }
        let mut groups = HashMap::new();
        for (i, entry) in file.groups.into_iter().enumerate() {
            if !entry.name.starts_with("group:") || entry.name.len() <= 6 {
                problems.push(format!(
                    "groups[{i}]: name {:?} must look like group:NAME",
                    entry.name
                ));
                continue;
            }
            let mut ok = true;
            for m in &entry.members {
                if m.starts_with("group:") {
                    problems.push(format!(
                        "groups[{i}] ({}): member {m:?}: groups cannot contain groups",
                        entry.name
                    ));
                    ok = false;
                } else if let Err(e) = check_member(m) {
                    problems.push(format!("groups[{i}] ({}): {e:#}", entry.name));
                    ok = false;
                }
            }
            if ok {
                groups.insert(entry.name, entry.members);
            }
        }
        let mut trusted_proxies = Vec::new();
        for c in &file.trusted_proxies {
            match Cidr::parse(c) {
                Ok(c) => trusted_proxies.push(c),
                Err(e) => problems.push(format!("trusted_proxies: {e:#}")),
            }
        }
        if let Some(tokeninfo) = &file.tokeninfo
            && let Err(e) = tokeninfo.check()
        {
            problems.push(format!("[tokeninfo]: {e:#}"));
        }
        if let Err(e) = super::jwt::check_issuers(&file.jwt, file.tokeninfo.is_some()) {
            problems.push(format!("{e:#}"));
        }
        let mut jwt = file.jwt;
        for issuer in &mut jwt {
            issuer.jwks_file = issuer.jwks_file.take().map(|f| base.join(f));
        }
        let client_ca = match &file.tls {
            Some(TlsFiles {
                client_ca: Some(ca),
                client_auth,
                ..
            }) => Some(ClientCa {
                ca: base.join(ca),
                mode: client_auth.unwrap_or(ClientAuthMode::Required),
            }),
            Some(TlsFiles {
                client_auth: Some(_),
                ..
            }) => {
                problems.push(
                    "[tls] client_auth needs client_ca, the CA that client certificates chain to"
                        .to_owned(),
                );
                None
            }
            _ => None,
        };
        let mut bindings = Vec::new();
        for (i, entry) in file.bindings.into_iter().enumerate() {
            let before = problems.len();
            if entry.role != TUNNEL_ROLE {
                problems.push(format!(
                    "bindings[{i}]: role {:?} grants no tunnels (use {TUNNEL_ROLE})",
                    entry.role
                ));
            }
            if entry.members.is_empty() {
                problems.push(format!("bindings[{i}] has no members"));
            }
            for member in &entry.members {
                if let Err(e) = check_member(member) {
                    problems.push(format!("bindings[{i}]: {e:#}"));
                } else if member.starts_with("group:") && !groups.contains_key(member) {
                    problems.push(format!(
                        "bindings[{i}]: {member} is not defined in [[groups]]"
                    ));
                }
            }
            let expires = match entry.expires.as_ref().map(datetime_to_system).transpose() {
                Ok(expires) => expires,
                Err(e) => {
                    problems.push(format!("bindings[{i}]: expires: {e:#}"));
                    None
                }
            };
            let resource = match Resource::parse(&entry.resource) {
                Ok(resource) => Some(resource),
                Err(e) => {
                    problems.push(format!("bindings[{i}]: {e:#}"));
                    None
                }
            };
            if entry
                .ports
                .as_ref()
                .is_some_and(|p| p.is_empty() || p.contains(&0))
            {
                problems.push(format!(
                    "bindings[{i}]: ports must list ports from 1 to 65535 (omit it to allow any)"
                ));
            }
            if entry.require_client_cert && client_ca.is_none() {
                problems.push(format!(
                    "bindings[{i}]: require_client_cert needs [tls] client_ca (no client could ever match)"
                ));
            }
            if let Some(resource) = resource
                && problems.len() == before
            {
                bindings.push(Binding {
                    name: format!("bindings[{i}]"),
                    members: entry.members,
                    resource,
                    ports: entry.ports,
                    require_client_cert: entry.require_client_cert,
                    expires,
                });
            }
        }
        if let Err(e) = check_limits(&file.limits) {
            problems.push(format!("{e:#}"));
        }
        let node_id = match file.node_id {
            Some(id)
                if id.is_empty()
                    || id.len() > 32
                    || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
            {
                problems.push(format!(
                    "node_id {id:?} must be 1 to 32 letters, digits or '-'"
                ));
                None
            }
            other => other,
        };
        let config = RelayConfig {
            listen: file.listen,
            tls: file.tls.map(|t| (base.join(t.cert), base.join(t.key))),
            client_ca,
            tokens,
            inventory,
            policy: Policy { bindings, groups },
            limits: file.limits,
            admin_listen: file.admin_listen,
            node_id,
            audit_log: file.audit_log.map(|p| base.join(p)),
            trusted_proxies,
            jwt,
            tokeninfo: file.tokeninfo,
            outbound_ca_file: file.outbound_ca_file.map(|p| base.join(p)),
        };
        (Some(config), problems)
    }
}

impl RelayConfig {
    /// A warning when the relay would serve plaintext `ws://` beyond this machine with no
    /// TLS-terminating proxy named: bearer tokens would cross the network in the clear.
    pub fn plaintext_warning(&self) -> Option<String> {
        (self.tls.is_none() && !self.listen.ip().is_loopback() && self.trusted_proxies.is_empty())
            .then(|| {
                format!(
                    "serving plaintext ws:// on {} (not loopback) with no trusted_proxies: bearer tokens cross the network in the clear; add [tls], or list the TLS-terminating proxy in trusted_proxies",
                    self.listen
                )
            })
    }
}

/// A library error text on one line (TOML errors quote the offending line over several).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn check_limits(limits: &Limits) -> anyhow::Result<()> {
    if limits.first_byte_timeout_secs == 0 || limits.handshake_timeout_secs == 0 {
        bail!("limits.first_byte_timeout_secs and handshake_timeout_secs must be at least 1");
    }
    if limits.max_handshakes_per_address == 0 {
        bail!("limits.max_handshakes_per_address must be at least 1");
    }
    let per_session = limits.max_unacked_bytes + SESSION_OVERHEAD_BYTES;
    if limits.memory_budget_mib.saturating_mul(1024 * 1024) < per_session {
        bail!(
            "limits.memory_budget_mib ({} MiB) does not fit one session ({} KiB: max_unacked_bytes plus {} KiB of other buffers)",
            limits.memory_budget_mib,
            per_session / 1024,
            SESSION_OVERHEAD_BYTES / 1024
        );
    }
    Ok(())
}

fn check_member(member: &str) -> anyhow::Result<()> {
    if !["user:", "serviceAccount:", "group:", "domain:"]
        .iter()
        .any(|p| member.starts_with(p) && member.len() > p.len())
    {
        bail!("member {member:?} must start with user:, serviceAccount:, group: or domain:");
    }
    Ok(())
}

/// A TOML offset date-time as a point in time, to the whole second (a fraction is dropped).
fn datetime_to_system(dt: &toml::value::Datetime) -> anyhow::Result<SystemTime> {
    if dt.date.is_none() || dt.time.is_none() || dt.offset.is_none() {
        bail!("{dt} must be a full date-time with offset, e.g. 2027-01-31T00:00:00Z");
    }
    // TOML writes a full offset date-time in RFC 3339, the form a timestamp parses from.
    let at: jiff::Timestamp = dt
        .to_string()
        .parse()
        .with_context(|| format!("{dt} is not a valid date-time"))?;
    if at < jiff::Timestamp::UNIX_EPOCH {
        bail!("{dt} is before 1970");
    }
    let secs = u64::try_from(at.as_second()).unwrap_or_default();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:0"
[tls]
cert = "c.pem"
key = "k.pem"
[[static_tokens]]
principal = "user:a@example.com"
sha256 = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
[[instances]]
project = "p"
zone = "z"
name = "vm-1"
interfaces = { nic0 = "127.0.0.1" }
[[bindings]]
role = "roles/iap.tunnelResourceAccessor"
members = ["user:a@example.com"]
resource = "projects/p"
ports = [22]
"#;

    #[test]
    fn binding_expiries_are_points_in_time() {
        let at = |text: &str| {
            let dt: toml::value::Datetime = text.parse().unwrap();
            datetime_to_system(&dt)
                .map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs())
        };
        assert_eq!(at("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(at("2000-02-29T00:00:00Z").unwrap(), 951_782_400);
        assert_eq!(at("2026-11-18T11:06:40.999Z").unwrap(), 1_795_000_000);
        assert_eq!(at("2026-11-18T12:36:40+01:30").unwrap(), 1_795_000_000);
        assert_eq!(at("2099-12-31T23:59:59-00:00").unwrap(), 4_102_444_799);
        assert!(at("1969-12-31T23:59:59Z").is_err());
        assert!(at("2027-01-31T00:00:00").is_err(), "no offset");
        assert!(at("2027-01-31").is_err(), "a date only");
    }

    #[test]
    fn good_config_parses_with_paths_resolved() {
        let config = RelayConfig::parse(GOOD, Path::new("/etc/relay")).unwrap();
        assert_eq!(config.client_ca, None);
        assert!(!config.policy.bindings[0].require_client_cert);
        let (cert, key) = config.tls.unwrap();
        assert_eq!(cert, Path::new("/etc/relay/c.pem"));
        assert_eq!(key, Path::new("/etc/relay/k.pem"));
        assert_eq!(config.policy.bindings.len(), 1);
        assert_eq!(
            config.tokens.authenticate("foo"),
            Some("user:a@example.com")
        );
    }

    #[test]
    fn client_certificates_are_configured_in_tls() {
        let text = GOOD.replace("key = \"k.pem\"", "key = \"k.pem\"\nclient_ca = \"ca.pem\"");
        let config = RelayConfig::parse(&text, Path::new("/r")).unwrap();
        let want = ClientCa {
            ca: "/r/ca.pem".into(),
            mode: ClientAuthMode::Required,
        };
        assert_eq!(config.client_ca, Some(want));
        let text = text
            .replace("ports = [22]", "ports = [22]\nrequire_client_cert = true")
            .replace(
                "client_ca = \"ca.pem\"",
                "client_ca = \"ca.pem\"\nclient_auth = \"optional\"",
            );
        let config = RelayConfig::parse(&text, Path::new("/r")).unwrap();
        assert_eq!(
            config.client_ca.map(|c| c.mode),
            Some(ClientAuthMode::Optional)
        );
        assert!(config.policy.bindings[0].require_client_cert);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let cases = [
            (
                GOOD.replace("roles/iap.tunnelResourceAccessor", "roles/viewer"),
                "grants no tunnels",
            ),
            (
                GOOD.replace("\"user:a@example.com\"]", "\"alice\"]"),
                "must start with user:",
            ),
            (GOOD.replace("projects/p\"", "folders/p\""), "bindings[0]"),
            (
                GOOD.replace("ports = [22]", "ports = []"),
                "ports must list",
            ),
            (GOOD.replace("2c26", "zz26"), "static_tokens[0]"),
            (GOOD.replace("listen", "lisen"), "unknown field"),
            (
                GOOD.replace("{ nic0 = \"127.0.0.1\" }", "{}"),
                "has no interfaces",
            ),
            (
                GOOD.replace("ports = [22]", "require_client_cert = true"),
                "require_client_cert needs [tls] client_ca",
            ),
            (
                GOOD.replace(
                    "key = \"k.pem\"",
                    "key = \"k.pem\"\nclient_auth = \"optional\"",
                ),
                "client_auth needs client_ca",
            ),
            (
                GOOD.replace(
                    "key = \"k.pem\"",
                    "key = \"k.pem\"\nclient_ca = \"c\"\nclient_auth = \"maybe\"",
                ),
                "unknown variant",
            ),
        ];
        for (text, expected) in cases {
            let err = format!(
                "{:#}",
                RelayConfig::parse(&text, Path::new(".")).unwrap_err()
            );
            assert!(err.contains(expected), "expected {expected:?} in {err}");
        }
    }
}

#[cfg(test)]
mod identity_sources {
    use super::*;

    const BASE: &str = "listen = \"127.0.0.1:0\"\n";
    const TOKENINFO: &str = "[tokeninfo]\nurl = \"http://127.0.0.1:1/ti\"\nallowed_client_ids = [\"c1\"]\nrequired_scopes = [\"s1\"]\n";

    fn issuer(name: &str, limit: &str) -> String {
        format!("[[jwt]]\nissuer = \"{name}\"\naudience = \"a\"\njwks_file = \"j.json\"\n{limit}\n")
    }

    fn error(text: &str) -> String {
        format!(
            "{:#}",
            RelayConfig::parse(text, Path::new(".")).unwrap_err()
        )
    }

    #[test]
    fn tokeninfo_needs_clients_and_scopes() {
        let ok = format!("{BASE}{TOKENINFO}");
        RelayConfig::parse(&ok, Path::new(".")).unwrap();
        for (text, want) in [
            (
                ok.replace("allowed_client_ids = [\"c1\"]\n", ""),
                "[tokeninfo]: allowed_client_ids must list",
            ),
            (
                ok.replace("[\"c1\"]", "[\"\"]"),
                "[tokeninfo]: allowed_client_ids must list",
            ),
            (
                ok.replace("required_scopes = [\"s1\"]\n", ""),
                "[tokeninfo]: required_scopes must list",
            ),
            (
                ok.replace("http://127.0.0.1:1/ti", "http://example.com/ti"),
                "must be an https:// URL",
            ),
        ] {
            let err = error(&text);
            assert!(err.contains(want), "expected {want:?} in {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn issuers_beside_another_source_must_be_confined() {
        let one = format!("{BASE}{}", issuer("https://a", ""));
        RelayConfig::parse(&one, Path::new(".")).unwrap();
        let two = format!(
            "{BASE}{}{}",
            issuer("https://a", ""),
            issuer("https://ci", "")
        );
        let err = error(&two);
        assert!(
            err.contains("jwt[0] (issuer \"https://a\"): set allowed_domains"),
            "{err}"
        );
        let with_tokeninfo = format!("{BASE}{TOKENINFO}{}", issuer("https://a", ""));
        assert!(error(&with_tokeninfo).contains("set allowed_domains"));
        let confined = format!(
            "{BASE}{TOKENINFO}{}{}",
            issuer("https://a", "allowed_domains = [\"example.com\"]"),
            issuer(
                "https://ci",
                "allowed_principal_prefixes = [\"user:repo:my-org/\"]"
            )
        );
        RelayConfig::parse(&confined, Path::new(".")).unwrap();
        for (limit, want) in [
            (
                "allowed_domains = [\"@example.com\"]",
                "must be a plain domain",
            ),
            (
                "allowed_domains = [\"*.example.com\"]",
                "must be a plain domain",
            ),
            ("allowed_domains = [\"com\"]", "must be a plain domain"),
            (
                "allowed_principal_prefixes = [\"user:\"]",
                "must start with user: or serviceAccount:",
            ),
            (
                "allowed_principal_prefixes = [\"group:x\"]",
                "must start with user: or serviceAccount:",
            ),
        ] {
            let err = error(&format!("{BASE}{}", issuer("https://a", limit)));
            assert!(err.contains(want), "expected {want:?} in {err}");
        }
    }
}

#[cfg(test)]
mod problems {
    use super::*;

    #[test]
    fn every_problem_is_listed_and_the_good_entries_kept() {
        let text = r#"
listen = "127.0.0.1:0"
node_id = "bad id"
[[instances]]
project = "p"
zone = "z"
name = "vm-1"
interfaces = { nic0 = "127.0.0.1" }
[[bindings]]
role = "roles/viewer"
members = ["alice"]
resource = "projects/p"
[[bindings]]
role = "roles/iap.tunnelResourceAccessor"
members = ["user:a@example.com"]
resource = "projects/p"
"#;
        let (config, problems) = RelayConfig::parse_all(text, Path::new("."));
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("node_id")),
            "{problems:?}"
        );
        let config = config.unwrap();
        assert_eq!(config.policy.bindings.len(), 1);
        let err = RelayConfig::parse(text, Path::new(".")).unwrap_err();
        assert_eq!(err.downcast_ref::<ConfigProblems>().unwrap().0, problems);
        let (none, syntax) = RelayConfig::parse_all("listen = ", Path::new("."));
        assert!(none.is_none());
        assert_eq!(syntax.len(), 1);
        assert!(!syntax[0].contains('\n'), "{syntax:?}");
    }

    #[test]
    fn plaintext_beyond_loopback_is_warned() {
        let parse = |t: &str| RelayConfig::parse(t, Path::new(".")).unwrap();
        assert!(
            parse("listen = \"0.0.0.0:80\"")
                .plaintext_warning()
                .is_some()
        );
        assert!(parse("listen = \"[::1]:80\"").plaintext_warning().is_none());
        let proxied = "listen = \"0.0.0.0:80\"\ntrusted_proxies = [\"10.0.0.1\"]";
        assert!(parse(proxied).plaintext_warning().is_none());
    }
}

#[cfg(test)]
mod example {
    use super::*;

    /// The example shipped for operators must stay a valid configuration.
    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../../deploy/relay.toml.example");
        let config = RelayConfig::parse(text, Path::new("/etc/iap-relay")).unwrap();
        assert_eq!(config.policy.bindings.len(), 2);
        assert_eq!(config.jwt.len(), 1);
        assert!(config.admin_listen.is_some());
    }

    /// The commented `[tokeninfo]` block, once uncommented, is complete.
    #[test]
    fn shipped_tokeninfo_example_parses() {
        let text = include_str!("../../deploy/relay.toml.example");
        let start = text.find("# [tokeninfo]").unwrap();
        let block: String = text[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(block.contains("required_scopes"), "{block}");
        // At the end, so the table swallows none of the keys that follow it in the file.
        let text = format!("{text}\n{block}");
        let config = RelayConfig::parse(&text, Path::new("/etc/iap-relay")).unwrap();
        let tokeninfo = config.tokeninfo.unwrap();
        assert_eq!(
            tokeninfo.required_scopes,
            ["https://www.googleapis.com/auth/cloud-platform"]
        );
    }
}
