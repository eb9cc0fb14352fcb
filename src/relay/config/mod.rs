//! `relay.toml`: parsed, checked, and turned into the relay's typed parts. What the file may
//! say is in [`file`]; this module checks it and builds the relay's parts from it.

mod file;

pub use file::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use std::time::{Duration, SystemTime};

use super::authn::StaticTokens;
use super::inventory::{Cidr, DestGroup, Inventory};
use super::jwt::JwtIssuerConfig;
use super::policy::{Binding, Policy, Resource};
use super::tls::{ClientAuthMode, ClientCa};
use super::tokeninfo::TokenInfoConfig;

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
mod tests;
