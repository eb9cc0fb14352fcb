//! What a tunnel reaches: the [`Target`] type and the `/v4/connect` and
//! `/v4/reconnect` query strings on both sides of the relay protocol
//! (`protocol.md` §1.2, §1.3, §2). Resolving a target from the command line
//! lives in `client::destination`.

use std::fmt;

/// Interface gcloud and IAP Desktop name when none is given.
pub const DEFAULT_INTERFACE: &str = "nic0";
/// Longest value, in bytes, accepted for any query parameter, the session id
/// included; nothing legitimate comes close.
pub const MAX_VALUE_LEN: usize = 1024;

/// A tunnel destination as the relay protocol names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Compute Engine VM, reached on one of its network interfaces.
    Instance {
        /// Project id.
        project: String,
        /// Zone, e.g. `us-central1-a`.
        zone: String,
        /// Instance name.
        instance: String,
        /// Network interface name, e.g. `nic0`.
        interface: String,
    },
    /// An IP address or FQDN in a VPC network ("TCP forwarding by host").
    Host {
        /// Project id.
        project: String,
        /// Region, e.g. `us-central1`.
        region: String,
        /// VPC network name.
        network: String,
        /// IP address or FQDN.
        host: String,
        /// Destination group; `group` on the wire.
        dest_group: Option<String>,
    },
}

impl Target {
    /// Query string (no leading `?`) for `/v4/connect`: byte for byte what
    /// gcloud sends, parameter order included.
    pub fn connect_query(&self, port: u16) -> String {
        let port = port.to_string();
        let mut pairs = vec![("project", self.project()), ("port", &port)];
        pairs.push(("newWebsocket", "True"));
        match self {
            Target::Instance {
                zone: z,
                instance: i,
                interface: n,
                ..
            } => {
                pairs.extend([("zone", z.as_str()), ("instance", i), ("interface", n)]);
            }
            Target::Host {
                region: r,
                network: n,
                host: h,
                dest_group: g,
                ..
            } => {
                pairs.extend([("region", r.as_str()), ("network", n), ("host", h)]);
                pairs.extend(g.as_deref().map(|g| ("group", g)));
            }
        }
        encode(&pairs)
    }

    /// Query string for `/v4/reconnect`. `ack` is the total number of DATA
    /// bytes received from the relay since the session started.
    pub fn reconnect_query(&self, sid: &str, ack: u64) -> String {
        let ack = ack.to_string();
        let place = match self {
            Target::Instance { zone, .. } => ("zone", zone.as_str()),
            Target::Host { region, .. } => ("region", region.as_str()),
        };
        encode(&[("sid", sid), ("ack", &ack), ("newWebsocket", "True"), place])
    }

    /// Human description for messages, e.g. `vm-1 port 22 in my-project/us-central1-a`.
    pub fn describe(&self, port: u16) -> String {
        match self {
            Target::Instance {
                project: p,
                zone: z,
                instance: i,
                interface: n,
            } => {
                let nic = if n == DEFAULT_INTERFACE {
                    String::new()
                } else {
                    format!(" interface {n}")
                };
                format!("{i} port {port} in {p}/{z}{nic}")
            }
            Target::Host {
                project: p,
                region: r,
                network: n,
                host: h,
                dest_group: g,
            } => {
                let group = g
                    .as_ref()
                    .map(|g| format!(" group {g}"))
                    .unwrap_or_default();
                format!("{h} port {port} in {p}/{r} network {n}{group}")
            }
        }
    }

    /// The project the target belongs to.
    pub fn project(&self) -> &str {
        match self {
            Target::Instance { project, .. } | Target::Host { project, .. } => project,
        }
    }
}

/// Encodes pairs as Python's `urlencode` does (`quote_plus`: space as `+`,
/// `~` kept). `form_urlencoded::Serializer` differs on `*` and `~`, and the
/// goal is gcloud's exact bytes.
fn encode(pairs: &[(&str, &str)]) -> String {
    let quote = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b' ' => "+".to_owned(),
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let pairs: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", quote(k), quote(v)))
        .collect();
    pairs.join("&")
}

/// Why a relay rejects a connect or reconnect query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryError {
    /// A required parameter is absent.
    Missing(&'static str),
    /// A known parameter appears more than once.
    Duplicate(&'static str),
    /// A known parameter is present with an empty value.
    Empty(&'static str),
    /// A parameter's value is malformed; the text says how.
    Invalid(&'static str, &'static str),
    /// An instance parameter and a host parameter were both given.
    Mixed(&'static str, &'static str),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Missing(name) => write!(f, "query parameter {name} is missing"),
            QueryError::Duplicate(name) => write!(f, "query parameter {name} is repeated"),
            QueryError::Empty(name) => write!(f, "query parameter {name} is empty"),
            QueryError::Invalid(name, why) => write!(f, "query parameter {name} {why}"),
            QueryError::Mixed(a, b) => write!(f, "query parameters {a} and {b} do not go together"),
        }
    }
}

impl std::error::Error for QueryError {}

const BAD_PORT: &str = "must be a number from 1 to 65535";
const BAD_ACK: &str = "must be a whole number of bytes";
const TOO_LONG: &str = "is longer than 1024 bytes";
const BAD_CHARS: &str = "may hold only letters, digits and - . _ : + / =";

/// The parameters a relay reads, each at most once; others (IAP Desktop's
/// `_` cache buster, gcloud's `newWebsocket`) are ignored.
struct Params(Vec<(&'static str, Option<String>)>);

impl Params {
    /// `names` is space-separated.
    fn parse(query: &str, names: &'static str) -> Result<Params, QueryError> {
        let mut slots: Vec<_> = names.split(' ').map(|n| (n, None)).collect();
        let query = query.strip_prefix('?').unwrap_or(query);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let Some((name, slot)) = slots.iter_mut().find(|(n, _)| *n == key) else {
                continue;
            };
            if slot.is_some() {
                return Err(QueryError::Duplicate(name));
            }
            if value.is_empty() {
                return Err(QueryError::Empty(name));
            }
            if value.len() > MAX_VALUE_LEN {
                return Err(QueryError::Invalid(name, TOO_LONG));
            }
            // Values end up in logs and messages. Every legitimate one (project ids, zones,
            // names, IP addresses, FQDNs, numbers, session ids, which Google may write in
            // base64) is plain ASCII from this set, so controls, spaces, quotes and invisible
            // Unicode marks never get that far.
            if !value.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'-' | b'.' | b'_' | b':' | b'+' | b'/' | b'=')
            }) {
                return Err(QueryError::Invalid(name, BAD_CHARS));
            }
            *slot = Some(value.into_owned());
        }
        Ok(Params(slots))
    }

    fn first_present(&self, names: &'static str) -> Option<&'static str> {
        names
            .split(' ')
            .find(|n| self.0.iter().any(|(k, v)| k == n && v.is_some()))
    }

    fn take(&mut self, name: &str) -> Option<String> {
        self.0
            .iter_mut()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.take())
    }

    fn require(&mut self, name: &'static str) -> Result<String, QueryError> {
        self.take(name).ok_or(QueryError::Missing(name))
    }
}

/// Relay side: parses a `/v4/connect` query into the target and port.
///
/// # Errors
///
/// A required parameter missing, repeated or empty, a port outside
/// 1..=65535, or instance and host parameters mixed.
pub fn parse_connect_query(query: &str) -> Result<(Target, u16), QueryError> {
    let mut p = Params::parse(
        query,
        "project port zone instance interface region network host group",
    )?;
    let instance_param = p.first_present("zone instance interface");
    let host_param = p.first_present("region network host group");
    if let (Some(a), Some(b)) = (instance_param, host_param) {
        return Err(QueryError::Mixed(a, b));
    }
    let project = p.require("project")?;
    let port = p.require("port")?;
    let port = digits(&port)
        .and_then(|d| d.parse().ok())
        .filter(|&n| n != 0);
    let port = port.ok_or(QueryError::Invalid("port", BAD_PORT))?;
    let target = if host_param.is_some() {
        let (region, network, host) = (
            p.require("region")?,
            p.require("network")?,
            p.require("host")?,
        );
        Target::Host {
            project,
            region,
            network,
            host,
            dest_group: p.take("group"),
        }
    } else {
        let (zone, instance) = (p.require("zone")?, p.require("instance")?);
        let interface = p
            .take("interface")
            .unwrap_or_else(|| DEFAULT_INTERFACE.to_owned());
        Target::Instance {
            project,
            zone,
            instance,
            interface,
        }
    };
    Ok((target, port))
}

/// Only plain ASCII digits: `str::parse` would also take a leading `+`.
fn digits(s: &str) -> Option<&str> {
    s.bytes().all(|b| b.is_ascii_digit()).then_some(s)
}

/// A parsed `/v4/reconnect` query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconnectQuery {
    /// Session id from CONNECT_SUCCESS_SID.
    pub sid: String,
    /// DATA bytes the client has received since the session started.
    pub ack: u64,
    /// Zone, sent for instance targets.
    pub zone: Option<String>,
    /// Region, sent for host targets.
    pub region: Option<String>,
}

/// Relay side: parses a `/v4/reconnect` query.
///
/// # Errors
///
/// `sid` or `ack` missing, repeated or empty, any value longer than
/// [`MAX_VALUE_LEN`], or `ack` not a decimal `u64`.
pub fn parse_reconnect_query(query: &str) -> Result<ReconnectQuery, QueryError> {
    let mut p = Params::parse(query, "sid ack zone region")?;
    let (sid, ack) = (p.require("sid")?, p.require("ack")?);
    let ack = digits(&ack).and_then(|d| d.parse().ok());
    let ack = ack.ok_or(QueryError::Invalid("ack", BAD_ACK))?;
    Ok(ReconnectQuery {
        sid,
        ack,
        zone: p.take("zone"),
        region: p.take("region"),
    })
}

#[cfg(test)]
pub(crate) mod tests;
