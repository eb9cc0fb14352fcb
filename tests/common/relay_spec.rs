//! [`RelaySpec`]: a typed relay.toml. Every section of the file has a field here, and
//! [`RelaySpec::to_toml`] renders it; `extra_toml` stays as the escape hatch for a test whose
//! point is an odd or malformed file.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::files::sha256_hex;
use super::{INSTANCE, PROJECT, TUNNEL_ROLE, ZONE};

/// What a test relay knows: listen options, identities, inventory, policy and limits.
#[derive(Debug, Clone)]
pub struct RelaySpec {
    /// `listen` (127.0.0.1:0; the in-process relay always binds 127.0.0.1:0 itself).
    pub listen: SocketAddr,
    /// Serve `wss://` with a fresh test PKI (default) or plain `ws://`.
    pub tls: bool,
    /// `[tls] client_ca` (a path) and `client_auth` (`"required"` / `"optional"`).
    pub client_ca: Option<(PathBuf, Option<String>)>,
    /// `admin_listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `node_id`.
    pub node_id: Option<String>,
    /// `audit_log` (relative paths are taken from the config's folder).
    pub audit_log: Option<PathBuf>,
    /// `trusted_proxies`: addresses or CIDR ranges.
    pub trusted_proxies: Vec<String>,
    /// `outbound_ca_file`.
    pub outbound_ca_file: Option<PathBuf>,
    /// `[limits]`.
    pub limits: Limits,
    /// `[[static_tokens]]` as `(principal, plaintext token)`; only the SHA-256 is written.
    pub tokens: Vec<(String, String)>,
    /// `[[jwt]]` issuers.
    pub jwt: Vec<JwtIssuer>,
    /// `[tokeninfo]`.
    pub tokeninfo: Option<TokenInfo>,
    /// `[[groups]]` as `(group:NAME, members)`.
    pub groups: Vec<(String, Vec<String>)>,
    /// `[[instances]]`.
    pub instances: Vec<Instance>,
    /// `[[dest_groups]]`.
    pub dest_groups: Vec<DestGroup>,
    /// `[[bindings]]`.
    pub bindings: Vec<Binding>,
    /// Raw TOML inserted right after the top-level keys, before any table: may hold
    /// top-level keys and whole tables. For what the typed fields cannot say.
    pub extra_toml: String,
}

impl Default for RelaySpec {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: true,
            client_ca: None,
            admin_listen: None,
            node_id: None,
            audit_log: None,
            trusted_proxies: Vec::new(),
            outbound_ca_file: None,
            limits: Limits::default(),
            tokens: Vec::new(),
            jwt: Vec::new(),
            tokeninfo: None,
            groups: Vec::new(),
            instances: Vec::new(),
            dest_groups: Vec::new(),
            bindings: Vec::new(),
            extra_toml: String::new(),
        }
    }
}

/// `[limits]`: only the settings given are written (the relay's defaults for the rest).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// `handshake_timeout_secs`.
    pub handshake_timeout_secs: Option<u64>,
    /// `backend_connect_timeout_secs`.
    pub backend_connect_timeout_secs: Option<u64>,
    /// `max_connections`.
    pub max_connections: Option<u64>,
    /// `max_connections_per_principal`.
    pub max_connections_per_principal: Option<u64>,
    /// `max_unacked_bytes`.
    pub max_unacked_bytes: Option<u64>,
    /// `resume_window_secs`.
    pub resume_window_secs: Option<u64>,
    /// `reauthenticate_after_secs`.
    pub reauthenticate_after_secs: Option<u64>,
    /// `idle_timeout_secs`.
    pub idle_timeout_secs: Option<u64>,
    /// `max_session_secs`.
    pub max_session_secs: Option<u64>,
    /// `drain_secs`.
    pub drain_secs: Option<u64>,
    /// `first_byte_timeout_secs`.
    pub first_byte_timeout_secs: Option<u64>,
    /// `max_handshakes_per_address`.
    pub max_handshakes_per_address: Option<u64>,
    /// `memory_budget_mib`.
    pub memory_budget_mib: Option<u64>,
}

impl Limits {
    fn entries(&self) -> [(&'static str, Option<u64>); 13] {
        [
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            (
                "backend_connect_timeout_secs",
                self.backend_connect_timeout_secs,
            ),
            ("max_connections", self.max_connections),
            (
                "max_connections_per_principal",
                self.max_connections_per_principal,
            ),
            ("max_unacked_bytes", self.max_unacked_bytes),
            ("resume_window_secs", self.resume_window_secs),
            ("reauthenticate_after_secs", self.reauthenticate_after_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("max_session_secs", self.max_session_secs),
            ("drain_secs", self.drain_secs),
            ("first_byte_timeout_secs", self.first_byte_timeout_secs),
            (
                "max_handshakes_per_address",
                self.max_handshakes_per_address,
            ),
            ("memory_budget_mib", self.memory_budget_mib),
        ]
    }
}

/// One `[[jwt]]` issuer.
#[derive(Debug, Clone, Default)]
pub struct JwtIssuer {
    /// `issuer`.
    pub issuer: String,
    /// `audience`.
    pub audience: String,
    /// `jwks_file`.
    pub jwks_file: Option<PathBuf>,
    /// `jwks_url`.
    pub jwks_url: Option<String>,
    /// `algorithms`; empty: not written.
    pub algorithms: Vec<String>,
    /// `identity_claim`.
    pub identity_claim: Option<String>,
    /// `leeway_secs`.
    pub leeway_secs: Option<u64>,
    /// `allowed_domains`; empty: not written.
    pub allowed_domains: Vec<String>,
    /// `allowed_principal_prefixes`; empty: not written.
    pub allowed_principal_prefixes: Vec<String>,
}

impl JwtIssuer {
    /// An issuer whose keys are in a JWKS file.
    pub fn with_file(issuer: &str, audience: &str, jwks_file: impl Into<PathBuf>) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            jwks_file: Some(jwks_file.into()),
            ..Self::default()
        }
    }

    /// An issuer whose keys are served at a URL.
    pub fn with_url(issuer: &str, audience: &str, jwks_url: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            jwks_url: Some(jwks_url.to_owned()),
            ..Self::default()
        }
    }

    /// Sets `allowed_domains`.
    pub fn domains(mut self, domains: &[&str]) -> Self {
        self.allowed_domains = domains.iter().map(|d| (*d).to_owned()).collect();
        self
    }
}

/// `[tokeninfo]`.
#[derive(Debug, Clone, Default)]
pub struct TokenInfo {
    /// `url`; None: not written (the relay's default, Google's).
    pub url: Option<String>,
    /// `allowed_client_ids`; empty: not written.
    pub allowed_client_ids: Vec<String>,
    /// `required_scopes`; empty: not written.
    pub required_scopes: Vec<String>,
}

/// One `[[instances]]` entry.
#[derive(Debug, Clone)]
pub struct Instance {
    /// `project`.
    pub project: String,
    /// `zone`.
    pub zone: String,
    /// `name`.
    pub name: String,
    /// `interfaces`: `(nicN, address)`.
    pub interfaces: Vec<(String, String)>,
}

impl Instance {
    /// An instance with one interface, `nic0` at `addr`.
    pub fn new(project: &str, zone: &str, name: &str, addr: &str) -> Self {
        Self {
            project: project.to_owned(),
            zone: zone.to_owned(),
            name: name.to_owned(),
            interfaces: vec![("nic0".to_owned(), addr.to_owned())],
        }
    }

    /// [`PROJECT`]/[`ZONE`]/[`INSTANCE`] with nic0 = 127.0.0.1.
    pub fn standard() -> Self {
        Self::new(PROJECT, ZONE, INSTANCE, "127.0.0.1")
    }
}

/// One `[[dest_groups]]` entry.
#[derive(Debug, Clone)]
pub struct DestGroup {
    /// `project`.
    pub project: String,
    /// `region`.
    pub region: String,
    /// `name`.
    pub name: String,
    /// `cidrs`.
    pub cidrs: Vec<String>,
    /// `fqdns`; empty: not written.
    pub fqdns: Vec<String>,
}

/// One `[[bindings]]` entry.
#[derive(Debug, Clone)]
pub struct Binding {
    /// `role` ([`TUNNEL_ROLE`] unless a test wants another).
    pub role: String,
    /// `members`.
    pub members: Vec<String>,
    /// `resource`.
    pub resource: String,
    /// `ports`; None: any port.
    pub ports: Option<Vec<u16>>,
    /// `require_client_cert`.
    pub require_client_cert: bool,
    /// `expires`, a TOML offset date-time written bare (e.g. `2020-01-01T00:00:00Z`).
    pub expires: Option<String>,
}

impl Binding {
    /// The tunnel role for `members` on `resource`, any port, no condition.
    pub fn new<S: AsRef<str>>(members: &[S], resource: &str) -> Self {
        Self {
            role: TUNNEL_ROLE.to_owned(),
            members: members.iter().map(|m| m.as_ref().to_owned()).collect(),
            resource: resource.to_owned(),
            ports: None,
            require_client_cert: false,
            expires: None,
        }
    }

    /// Only these ports.
    pub fn ports(mut self, ports: &[u16]) -> Self {
        self.ports = Some(ports.to_vec());
        self
    }

    /// Ends at `datetime` (TOML offset date-time).
    pub fn expires(mut self, datetime: &str) -> Self {
        self.expires = Some(datetime.to_owned());
        self
    }

    /// Ends at `when` (written in UTC, to the millisecond).
    pub fn expires_at(self, when: std::time::SystemTime) -> Self {
        let millis = when
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a time after 1970")
            .as_millis();
        let at = jiff::Timestamp::from_millisecond(millis as i64).expect("a representable time");
        self.expires(&at.to_string())
    }

    /// Only for clients that presented a verified certificate.
    pub fn require_client_cert(mut self) -> Self {
        self.require_client_cert = true;
        self
    }
}

impl RelaySpec {
    /// One principal with one token, one instance (nic0 = 127.0.0.1), and a binding of that
    /// principal on the whole project.
    pub fn single(principal: &str, token: &str, project: &str, zone: &str, instance: &str) -> Self {
        Self {
            tokens: vec![(principal.to_owned(), token.to_owned())],
            instances: vec![Instance::new(project, zone, instance, "127.0.0.1")],
            bindings: vec![Binding::new(&[principal], &format!("projects/{project}"))],
            ..Self::default()
        }
    }

    /// The usual test setup: `single` on [`PROJECT`]/[`ZONE`]/[`INSTANCE`].
    pub fn standard(principal: &str, token: &str) -> Self {
        Self::single(principal, token, PROJECT, ZONE, INSTANCE)
    }

    /// Adds a principal and token with no binding at all.
    pub fn with_token(mut self, principal: &str, token: &str) -> Self {
        self.tokens.push((principal.to_owned(), token.to_owned()));
        self
    }

    /// Plain `ws://` instead of `wss://`.
    pub fn plaintext(mut self) -> Self {
        self.tls = false;
        self
    }

    /// Adds a binding.
    pub fn binding(mut self, binding: Binding) -> Self {
        self.bindings.push(binding);
        self
    }

    /// Changes the limits with `f`.
    pub fn limits(mut self, f: impl FnOnce(&mut Limits)) -> Self {
        f(&mut self.limits);
        self
    }

    /// Sets `audit_log`.
    pub fn audit_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.audit_log = Some(path.into());
        self
    }

    /// Renders relay.toml; `tls` gives the cert and key paths (relative to the config's folder).
    pub fn to_toml(&self, tls: Option<(&str, &str)>) -> String {
        let mut t = format!(
            "# written by the test harness\nlisten = {}\n",
            q(&self.listen.to_string())
        );
        if let Some(addr) = self.admin_listen {
            let _ = writeln!(t, "admin_listen = {}", q(&addr.to_string()));
        }
        if let Some(id) = &self.node_id {
            let _ = writeln!(t, "node_id = {}", q(id));
        }
        if let Some(path) = &self.audit_log {
            let _ = writeln!(t, "audit_log = {}", qp(path));
        }
        if !self.trusted_proxies.is_empty() {
            let _ = writeln!(t, "trusted_proxies = {}", list(&self.trusted_proxies));
        }
        if let Some(path) = &self.outbound_ca_file {
            let _ = writeln!(t, "outbound_ca_file = {}", qp(path));
        }
        if !self.extra_toml.is_empty() {
            t.push_str(&self.extra_toml);
            t.push('\n');
        }
        if let Some((cert, key)) = tls {
            let _ = write!(t, "\n[tls]\ncert = {}\nkey = {}\n", q(cert), q(key));
            if let Some((ca, auth)) = &self.client_ca {
                let _ = writeln!(t, "client_ca = {}", qp(ca));
                if let Some(auth) = auth {
                    let _ = writeln!(t, "client_auth = {}", q(auth));
                }
            }
        }
        let limits: Vec<_> = self
            .limits
            .entries()
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        if !limits.is_empty() {
            t.push_str("\n[limits]\n");
            for (k, v) in limits {
                let _ = writeln!(t, "{k} = {v}");
            }
        }
        if let Some(ti) = &self.tokeninfo {
            t.push_str("\n[tokeninfo]\n");
            if let Some(url) = &ti.url {
                let _ = writeln!(t, "url = {}", q(url));
            }
            if !ti.allowed_client_ids.is_empty() {
                let _ = writeln!(t, "allowed_client_ids = {}", list(&ti.allowed_client_ids));
            }
            if !ti.required_scopes.is_empty() {
                let _ = writeln!(t, "required_scopes = {}", list(&ti.required_scopes));
            }
        }
        for (principal, token) in &self.tokens {
            let _ = write!(
                t,
                "\n[[static_tokens]]\nprincipal = {}\nsha256 = {}\n",
                q(principal),
                q(&sha256_hex(token.as_bytes()))
            );
        }
        for j in &self.jwt {
            let _ = write!(
                t,
                "\n[[jwt]]\nissuer = {}\naudience = {}\n",
                q(&j.issuer),
                q(&j.audience)
            );
            if let Some(path) = &j.jwks_file {
                let _ = writeln!(t, "jwks_file = {}", qp(path));
            }
            if let Some(url) = &j.jwks_url {
                let _ = writeln!(t, "jwks_url = {}", q(url));
            }
            if !j.algorithms.is_empty() {
                let _ = writeln!(t, "algorithms = {}", list(&j.algorithms));
            }
            if let Some(claim) = &j.identity_claim {
                let _ = writeln!(t, "identity_claim = {}", q(claim));
            }
            if let Some(secs) = j.leeway_secs {
                let _ = writeln!(t, "leeway_secs = {secs}");
            }
            if !j.allowed_domains.is_empty() {
                let _ = writeln!(t, "allowed_domains = {}", list(&j.allowed_domains));
            }
            if !j.allowed_principal_prefixes.is_empty() {
                let _ = writeln!(
                    t,
                    "allowed_principal_prefixes = {}",
                    list(&j.allowed_principal_prefixes)
                );
            }
        }
        for i in &self.instances {
            let nics: Vec<String> = i
                .interfaces
                .iter()
                .map(|(nic, addr)| format!("{nic} = {}", q(addr)))
                .collect();
            let _ = write!(
                t,
                "\n[[instances]]\nproject = {}\nzone = {}\nname = {}\ninterfaces = {{ {} }}\n",
                q(&i.project),
                q(&i.zone),
                q(&i.name),
                nics.join(", ")
            );
        }
        for g in &self.dest_groups {
            let _ = write!(
                t,
                "\n[[dest_groups]]\nproject = {}\nregion = {}\nname = {}\ncidrs = {}\n",
                q(&g.project),
                q(&g.region),
                q(&g.name),
                list(&g.cidrs)
            );
            if !g.fqdns.is_empty() {
                let _ = writeln!(t, "fqdns = {}", list(&g.fqdns));
            }
        }
        for (name, members) in &self.groups {
            let _ = write!(
                t,
                "\n[[groups]]\nname = {}\nmembers = {}\n",
                q(name),
                list(members)
            );
        }
        for b in &self.bindings {
            let _ = write!(
                t,
                "\n[[bindings]]\nrole = {}\nmembers = {}\nresource = {}\n",
                q(&b.role),
                list(&b.members),
                q(&b.resource)
            );
            if let Some(ports) = &b.ports {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                let _ = writeln!(t, "ports = [{}]", ports.join(", "));
            }
            if b.require_client_cert {
                t.push_str("require_client_cert = true\n");
            }
            if let Some(when) = &b.expires {
                let _ = writeln!(t, "expires = {when}");
            }
        }
        t
    }
}

/// A TOML basic string (JSON's string syntax is a subset of it).
pub fn q(s: &str) -> String {
    serde_json::to_string(s).expect("string to TOML string")
}

/// A path as a TOML string.
fn qp(p: &std::path::Path) -> String {
    q(&p.to_string_lossy())
}

/// A TOML array of strings, `["a", "b"]`.
fn list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", items.join(", "))
}
