//! What a tunnel reaches: the [`Target`] type, its resolution from the command
//! line and environment, and the `/v4/connect` and `/v4/reconnect` query
//! strings on both sides of the relay protocol (`protocol.md` §1.2, §1.3, §2).

use std::fmt;
use std::net::IpAddr;

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
const CONTROLS: &str = "contains control characters";

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
            // Values end up in logs and messages; nothing legitimate has controls.
            if value.chars().any(char::is_control) {
                return Err(QueryError::Invalid(name, CONTROLS));
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

/// Client side: everything the command line says about the destination.
#[derive(Clone, Debug, Default)]
pub struct TargetArgs {
    /// The HOST argument: `INSTANCE[.ZONE[.PROJECT]]`, or an IP address or
    /// FQDN in host mode, optionally followed by `suffix`.
    pub host: String,
    /// Suffix removed from HOST when present, e.g. `.iap`; empty for none.
    pub suffix: String,
    /// `--project`.
    pub project: Option<String>,
    /// `--zone`.
    pub zone: Option<String>,
    /// `--interface`; defaults to [`DEFAULT_INTERFACE`].
    pub interface: Option<String>,
    /// `--region`; with `network`, selects host mode.
    pub region: Option<String>,
    /// `--network`; with `region`, selects host mode.
    pub network: Option<String>,
    /// `--dest-group`; host mode only.
    pub dest_group: Option<String>,
}

/// Project and zone from the sources after the environment (gcloud
/// configuration, service-account key), found by the caller.
#[derive(Clone, Debug, Default)]
pub struct Fallback {
    /// Project as `(value, label of where it came from)`.
    pub project: Option<(String, String)>,
    /// Zone as `(value, label of where it came from)`.
    pub zone: Option<(String, String)>,
    /// Labels of every place the caller looked, for "not found" errors.
    pub looked_at: Vec<String>,
}

/// Why no [`Target`] could be resolved; a usage error in every case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolveError(String);

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ResolveError {}

fn fail<T>(msg: String) -> Result<T, ResolveError> {
    Err(ResolveError(msg))
}

const PROJECT_ENV: &str = "CLOUDSDK_CORE_PROJECT";
const ZONE_ENV: &str = "CLOUDSDK_COMPUTE_ZONE";

/// Resolves the destination from HOST, flags, the environment (read through
/// `env`) and `fallback`; for project and zone the first that has a value wins.
///
/// # Errors
///
/// A malformed HOST or value, a missing project or zone (the message lists
/// every place looked at), or flags that do not go together.
pub fn resolve(
    args: &TargetArgs,
    env: &dyn Fn(&str) -> Option<String>,
    fallback: &Fallback,
) -> Result<Target, ResolveError> {
    let host = strip_suffix(&args.host, &args.suffix);
    if host.is_empty() {
        let host = args.host.escape_debug();
        return fail(format!(
            "HOST \"{host}\" is empty: use INSTANCE[.ZONE[.PROJECT]]"
        ));
    }
    let sources = Sources { env, fallback };
    let (region, network) = match (&args.region, &args.network, &args.dest_group) {
        (Some(region), Some(network), _) => (region, network),
        (None, None, None) => return resolve_instance(args, host, &sources),
        (None, None, Some(_)) => return fail("--dest-group needs --region and --network".into()),
        _ => return fail("--region and --network go together: give both or neither".into()),
    };
    if args.zone.is_some() || args.interface.is_some() {
        let why = "--zone and --interface are for instances: drop them with --region and --network";
        return fail(why.into());
    }
    // ssh users may write an IPv6 literal the URL way.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Rule::Host.check("host", host, "HOST")?;
    Rule::Name.check("region", region, "--region")?;
    Rule::Name.check("network", network, "--network")?;
    if let Some(group) = &args.dest_group {
        Rule::Name.check("destination group", group, "--dest-group")?;
    }
    let project = sources.find("project", host, ("--project", &args.project), None)?;
    let (region, network, dest_group) = (region.clone(), network.clone(), args.dest_group.clone());
    let host = host.to_owned();
    Ok(Target::Host {
        project,
        region,
        network,
        host,
        dest_group,
    })
}

fn resolve_instance(
    args: &TargetArgs,
    host: &str,
    sources: &Sources,
) -> Result<Target, ResolveError> {
    let shown = host.escape_debug();
    if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
        return fail(format!(
            "HOST {shown} is an address: add --region and --network"
        ));
    }
    // GCE instance names and zones contain no dots, so everything after the
    // second dot is the project (domain-scoped project ids have dots).
    let mut parts = host.splitn(3, '.');
    let instance = parts.next().unwrap_or_default();
    let (zone_part, project_part) = (parts.next(), parts.next());
    if zone_part == Some("") || project_part == Some("") {
        return fail(format!(
            "HOST {shown} has an empty part: use INSTANCE[.ZONE[.PROJECT]]"
        ));
    }
    Rule::Instance.check("instance name", instance, "HOST")?;
    let in_host = Some((zone_part, format!("{instance}.ZONE.PROJECT")));
    let zone = sources.find("zone", instance, ("--zone", &args.zone), in_host)?;
    let in_host = Some((project_part, format!("{instance}.{zone}.PROJECT")));
    let project = sources.find("project", instance, ("--project", &args.project), in_host)?;
    let interface = args.interface.as_deref().unwrap_or(DEFAULT_INTERFACE);
    Rule::Name.check("interface", interface, "--interface")?;
    let (instance, interface) = (instance.to_owned(), interface.to_owned());
    Ok(Target::Instance {
        project,
        zone,
        instance,
        interface,
    })
}

/// Removes `suffix` ignoring ASCII case: ssh lowercases `%h`, but the suffix
/// comes from the user's configuration as typed.
fn strip_suffix<'a>(host: &'a str, suffix: &str) -> &'a str {
    let cut = host.len().wrapping_sub(suffix.len());
    match (host.get(..cut), host.get(cut..)) {
        (Some(rest), Some(tail)) if !suffix.is_empty() && tail.eq_ignore_ascii_case(suffix) => rest,
        _ => host,
    }
}

/// The places after HOST and the flags: the environment and the fallback.
struct Sources<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    fallback: &'a Fallback,
}

impl Sources<'_> {
    /// The first value for `what` ("zone" or "project"), checked. `in_host`,
    /// for instance targets only, is the HOST part if present and the HOST
    /// form to suggest. An empty environment variable or fallback counts as
    /// unset, as in gcloud; an empty flag is kept and fails the check.
    fn find(
        &self,
        what: &str,
        subject: &str,
        (flag, flag_value): (&str, &Option<String>),
        in_host: Option<(Option<&str>, String)>,
    ) -> Result<String, ResolveError> {
        let zone = what == "zone";
        let (env_name, rule) = if zone {
            (ZONE_ENV, Rule::Name)
        } else {
            (PROJECT_ENV, Rule::Project)
        };
        let fallback = if zone {
            &self.fallback.zone
        } else {
            &self.fallback.project
        };
        let found = match (&in_host, flag_value) {
            (Some((Some(part), _)), _) => Some((part.to_string(), "HOST".to_owned())),
            (_, Some(value)) => Some((value.clone(), flag.to_owned())),
            _ => (self.env)(env_name)
                .filter(|v| !v.is_empty())
                .map(|v| (v, env_name.to_owned()))
                .or_else(|| fallback.clone().filter(|(v, _)| !v.is_empty())),
        };
        if let Some((value, from)) = found {
            return rule.check(what, &value, &from).map(|()| value);
        }
        let (ways, mut places) = match in_host {
            Some((_, form)) => (
                format!("give it as {form}, {flag}, or {env_name}"),
                vec!["HOST"],
            ),
            None => (format!("give {flag} or {env_name}"), vec![]),
        };
        places.extend([flag, env_name]);
        places.extend(self.fallback.looked_at.iter().map(String::as_str));
        let places = places.join(", ");
        fail(format!(
            "no {what} for {subject}: {ways} (looked at: {places})"
        ))
    }
}

/// Syntax checks that catch typos before a round trip to the relay.
#[derive(Clone, Copy)]
enum Rule {
    /// GCE resource names: zones, regions, networks, interfaces, groups.
    Name,
    Instance,
    /// Includes domain-scoped ids such as `example.com:proj`.
    Project,
    Host,
}

impl Rule {
    fn check(self, what: &str, value: &str, from: &str) -> Result<(), ResolveError> {
        let name = |s: &str| {
            (1..=63).contains(&s.len())
                && s.bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        };
        let label = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        };
        let project = |s: &str| {
            (1..=100).contains(&s.len())
                && s.bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b':'))
        };
        let letters = "1-63 lowercase letters, digits and hyphens";
        let (ok, rule) = match self {
            Rule::Name => (name(value), format!("use {letters}")),
            Rule::Instance => {
                let ok = name(value) && value.starts_with(|c: char| c.is_ascii_lowercase());
                (
                    ok && !value.ends_with('-'),
                    format!("use {letters}, starting with a letter"),
                )
            }
            Rule::Project => {
                let rule = "use a project id such as my-project or example.com:my-project";
                (project(value), rule.to_owned())
            }
            Rule::Host => {
                let dns = value.len() <= 253 && value.split('.').all(label);
                (
                    value.parse::<IpAddr>().is_ok() || dns,
                    "use an IP address or a DNS name".into(),
                )
            }
        };
        if ok {
            return Ok(());
        }
        fail(format!(
            "invalid {what} \"{}\" from {from}: {rule}",
            value.escape_debug()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(project: &str, zone: &str, instance: &str, interface: &str) -> Target {
        let s = |v: &str| v.to_owned();
        let (project, zone, instance, interface) = (s(project), s(zone), s(instance), s(interface));
        Target::Instance {
            project,
            zone,
            instance,
            interface,
        }
    }

    fn host(project: &str, region: &str, network: &str, addr: &str, group: Option<&str>) -> Target {
        let s = |v: &str| v.to_owned();
        let (project, region, network, host) = (s(project), s(region), s(network), s(addr));
        Target::Host {
            project,
            region,
            network,
            host,
            dest_group: group.map(s),
        }
    }

    /// Runs `resolve` for one table row: HOST, `name=value` flags (suffix
    /// defaults to `.iap`), and `P=`/`Z=` environment values or `cfg` for a
    /// gcloud-configuration fallback.
    fn run(host: &str, flags: &str, env: &str) -> Result<String, String> {
        let mut a = TargetArgs {
            host: host.into(),
            suffix: ".iap".into(),
            ..Default::default()
        };
        for (name, value) in flags.split_whitespace().filter_map(|f| f.split_once('=')) {
            let v = Some(value.to_owned());
            match name {
                "suffix" => a.suffix = value.into(),
                "project" => a.project = v,
                "zone" => a.zone = v,
                "interface" => a.interface = v,
                "region" => a.region = v,
                "network" => a.network = v,
                _ => a.dest_group = v,
            }
        }
        let label = "gcloud config default".to_owned();
        let mut fb = Fallback {
            looked_at: vec![label.clone(), "key file".into()],
            ..Default::default()
        };
        if env.contains("cfg") {
            fb.project = Some(("cfg-proj".into(), label.clone()));
            fb.zone = Some(("cfg-zone".into(), label));
        }
        let vars: Vec<(&str, &str)> = env
            .split_whitespace()
            .filter_map(|e| e.split_once('='))
            .collect();
        let lookup = |k: &str| {
            let short = if k == PROJECT_ENV { "P" } else { "Z" };
            vars.iter()
                .find(|(n, _)| *n == short)
                .map(|(_, v)| (*v).to_owned())
        };
        resolve(&a, &lookup, &fb)
            .map(|t| t.describe(22))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn golden_queries() {
        let vm = inst("my-proj", "us-central1-a", "vm-1", "nic0");
        let addr = host("p", "us-central1", "default", "10.0.0.5", Some("my-group"));
        let got = [
            vm.connect_query(22),
            addr.connect_query(3389),
            host("p", "r", "n", "fd00::5", None).connect_query(22),
            inst("p", "z", "vm", "nic0").reconnect_query("AbC+/=x", 123),
            addr.reconnect_query("s", u64::MAX),
        ];
        let want = "\
project=my-proj&port=22&newWebsocket=True&zone=us-central1-a&instance=vm-1&interface=nic0
project=p&port=3389&newWebsocket=True&region=us-central1&network=default&host=10.0.0.5&group=my-group
project=p&port=22&newWebsocket=True&region=r&network=n&host=fd00%3A%3A5
sid=AbC%2B%2F%3Dx&ack=123&newWebsocket=True&zone=z
sid=s&ack=18446744073709551615&newWebsocket=True&region=us-central1";
        assert_eq!(got.join("\n"), want);
    }

    #[test]
    fn encoding_matches_python_urlencode() {
        // Expected values printed by Python 3's urllib.parse.urlencode.
        let cases = [
            ("+/= @:", "%2B%2F%3D+%40%3A"),
            ("*~é!'()", "%2A~%C3%A9%21%27%28%29"),
            ("a-b_c.d", "a-b_c.d"),
        ];
        for (value, want) in cases {
            assert_eq!(encode(&[("k", value)]), format!("k={want}"), "{value:?}");
        }
        let theirs = form_urlencoded::Serializer::new(String::new())
            .append_pair("k", "+/= @:")
            .finish();
        assert_eq!(encode(&[("k", "+/= @:")]), theirs);
    }

    #[test]
    fn queries_round_trip() {
        let targets = [
            inst("my-proj", "us-central1-a", "vm-1", "nic0"),
            inst("example.com:proj", "europe-west4-b", "a", "nic1"),
            host("p", "us-central1", "default", "10.0.0.5", None),
            host("p", "r", "n", "fd00::5", Some("g")),
            host("p", "r", "n", "db.internal.example.com", Some("a b+c*~")),
        ];
        for t in targets {
            for port in [1, 22, 3389, 65535] {
                assert_eq!(
                    parse_connect_query(&t.connect_query(port)),
                    Ok((t.clone(), port))
                );
            }
            let back = parse_reconnect_query(&t.reconnect_query("AbC+/=x", 7));
            assert_eq!(back.map(|r| (r.sid, r.ack)), Ok(("AbC+/=x".to_owned(), 7)));
        }
    }

    #[test]
    fn connect_query_accepts_other_clients() {
        // IAP Desktop: its own order, a `_` cache buster, no newWebsocket.
        let q = "project=p&zone=z&instance=vm&port=22&_=0b6d3f&newWebsocket=true";
        assert_eq!(
            parse_connect_query(q),
            Ok((inst("p", "z", "vm", "nic0"), 22))
        );
        let q = format!("?{q}&interface=nic2");
        assert_eq!(
            parse_connect_query(&q),
            Ok((inst("p", "z", "vm", "nic2"), 22))
        );
    }

    #[test]
    fn connect_query_errors() {
        let long = "x".repeat(MAX_VALUE_LEN + 1);
        let cases = "\
            port=22&zone=z&instance=i => query parameter project is missing
            project=p&zone=z&instance=i => query parameter port is missing
            project=p&port=22&instance=i => query parameter zone is missing
            project=p&port=22&zone=z => query parameter instance is missing
            project=p&port=22 => query parameter zone is missing
            project=p&port=22&region=r&host=h => query parameter network is missing
            project=p&port=22&region=r&network=n => query parameter host is missing
            project=p&port=22&zone=z&instance=i&zone=y => query parameter zone is repeated
            project=&port=22&zone=z&instance=i => query parameter project is empty
            project=p&port=22&zone=z&instance=i&interface= => query parameter interface is empty
            project=p&port=0&zone=z&instance=i => query parameter port must be a number from 1 to 65535
            project=p&port=65536&zone=z&instance=i => query parameter port must be a number from 1 to 65535
            project=p&port=%2B22&zone=z&instance=i => query parameter port must be a number from 1 to 65535
            project=p&port=ssh&zone=z&instance=i => query parameter port must be a number from 1 to 65535
            project=p&port=22&zone=z&instance=i%0A => query parameter instance contains control characters
            project=LONG&port=22&zone=z&instance=i => query parameter project is longer than 1024 bytes
            project=p&port=22&zone=z&instance=i&host=h => query parameters zone and host do not go together
            project=p&port=22&interface=nic0&group=g => query parameters interface and group do not go together";
        for line in cases.lines() {
            let (query, want) = line.trim().split_once(" => ").unwrap_or_default();
            let got = parse_connect_query(&query.replace("LONG", &long)).map_err(|e| e.to_string());
            assert_eq!(got, Err(want.to_owned()), "{query}");
        }
        let mixed = parse_connect_query("zone=z&host=h");
        assert_eq!(mixed, Err(QueryError::Mixed("zone", "host")));
    }

    #[test]
    fn reconnect_query_parsing() {
        let max = "s".repeat(MAX_VALUE_LEN);
        let cases = "\
            sid=AbC%2B%2F%3Dx&ack=123&newWebsocket=True&zone=z => AbC+/=x 123 Some(\"z\") None
            _=1&region=r&ack=0&sid=s => s 0 None Some(\"r\")
            sid=MAX&ack=1 => MAX 1 None None
            sid=MAXs&ack=1 => query parameter sid is longer than 1024 bytes
            ack=1 => query parameter sid is missing
            sid=&ack=1 => query parameter sid is empty
            sid=s => query parameter ack is missing
            sid=s&ack=1&ack=2 => query parameter ack is repeated
            sid=s&ack=-1 => query parameter ack must be a whole number of bytes
            sid=s&ack=18446744073709551616 => query parameter ack must be a whole number of bytes";
        for line in cases.lines() {
            let (query, want) = line.trim().split_once(" => ").unwrap_or_default();
            let got = match parse_reconnect_query(&query.replace("MAX", &max)) {
                Ok(r) => format!("{} {} {:?} {:?}", r.sid, r.ack, r.zone, r.region),
                Err(e) => e.to_string(),
            };
            assert_eq!(got, want.replace("MAX", &max), "{query}");
        }
    }

    #[test]
    fn describe_targets() {
        let got = [
            inst("my-project", "us-central1-a", "vm-1", "nic0").describe(22),
            inst("p", "z", "vm-1", "nic1").describe(2222),
            host("my-project", "us-central1", "default", "10.0.0.5", None).describe(22),
            host("p", "r", "n", "fd00::5", Some("g")).describe(3389),
        ];
        let want = "\
vm-1 port 22 in my-project/us-central1-a
vm-1 port 2222 in p/z interface nic1
10.0.0.5 port 22 in my-project/us-central1 network default
fd00::5 port 3389 in p/r network n group g";
        assert_eq!(got.join("\n"), want);
        assert_eq!(inst("p", "z", "i", "n").project(), "p");
        assert_eq!(host("q", "r", "n", "h", None).project(), "q");
    }

    #[test]
    fn resolve_table() {
        // HOST | flags | environment | Target::describe(22), or "!" and part of the error.
        let cases = "\
            vm-1.us-central1-a.my-proj.iap |  |  | vm-1 port 22 in my-proj/us-central1-a
            vm-1.us-central1-a.my-proj |  |  | vm-1 port 22 in my-proj/us-central1-a
            vm-1.z.example.com:proj.IAP |  |  | vm-1 port 22 in example.com:proj/z
            vm-1.z.p.corp | suffix=.corp interface=nic1 |  | vm-1 port 22 in p/z interface nic1
            vm-1.z.iap | suffix= project=p |  | vm-1 port 22 in iap/z
            vm-1.iap | zone=z project=p |  | vm-1 port 22 in p/z
            vm.hz.hp | zone=fz project=fp | P=ep Z=ez cfg | vm port 22 in hp/hz
            vm.hz | zone=fz project=fp | P=ep Z=ez cfg | vm port 22 in fp/hz
            vm | zone=fz project=fp | P=ep Z=ez cfg | vm port 22 in fp/fz
            vm | zone=fz | P=ep Z=ez cfg | vm port 22 in ep/fz
            vm |  | P=ep Z=ez cfg | vm port 22 in ep/ez
            vm |  | P= Z= cfg | vm port 22 in cfg-proj/cfg-zone
            10.0.0.5 | region=us-central1 network=default | P=ep Z=ez | 10.0.0.5 port 22 in ep/us-central1 network default
            fd00::5.iap | region=r network=n | P=ep | fd00::5 port 22 in ep/r network n
            [fd00::5] | region=r network=n | P=ep | fd00::5 port 22 in ep/r network n
            db.p.example.iap | region=r network=n group=g project=p |  | db.p.example port 22 in p/r network n group g
            vm-1 |  |  | !no zone for vm-1: give it as vm-1.ZONE.PROJECT, --zone, or CLOUDSDK_COMPUTE_ZONE (looked at: HOST, --zone, CLOUDSDK_COMPUTE_ZONE, gcloud config default, key file)
            vm-1.z |  |  | !no project for vm-1: give it as vm-1.z.PROJECT, --project, or CLOUDSDK_CORE_PROJECT (looked at: HOST, --project, CLOUDSDK_CORE_PROJECT, gcloud config default, key file)
            10.0.0.5 | region=r network=n |  | !no project for 10.0.0.5: give --project or CLOUDSDK_CORE_PROJECT (looked at: --project, CLOUDSDK_CORE_PROJECT, gcloud config default, key file)
            10.0.0.5 | region=r project=p |  | !--region and --network go together
            10.0.0.5 | network=n project=p |  | !--region and --network go together
            vm | group=g |  | !--dest-group needs --region and --network
            h | region=r network=n zone=z |  | !--zone and --interface are for instances: drop them
            10.0.0.5 | project=p |  | !HOST 10.0.0.5 is an address: add --region and --network
            fd00::5 | project=p |  | !is an address
            .iap |  |  | !HOST \".iap\" is empty: use INSTANCE
            vm..p |  |  | !HOST vm..p has an empty part
            vm\x07. |  |  | !HOST vm\\u{7}. has an empty part
            VM-1.z.p |  |  | !invalid instance name \"VM-1\" from HOST: use 1-63 lowercase
            1vm.z.p |  |  | !starting with a letter
            vm-.z.p |  |  | !starting with a letter
            vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv.z.p |  |  | !1-63
            vm | zone= project=p |  | !invalid zone \"\" from --zone
            vm.bad_zone.p |  |  | !invalid zone \"bad_zone\" from HOST
            vm.z | project=My_Proj |  | !invalid project \"My_Proj\" from --project: use a project id
            vm.z |  | P=a/b | !invalid project \"a/b\" from CLOUDSDK_CORE_PROJECT
            a%b | region=r network=n project=p |  | !invalid host \"a%b\" from HOST
            h | region=R network=n project=p |  | !invalid region \"R\" from --region
            h | region=r network=n project=p group=G |  | !invalid destination group \"G\"
            vm.z.p | interface=nic/0 |  | !invalid interface";
        for line in cases.lines() {
            let cols: Vec<&str> = line.trim().split(" | ").collect();
            let [h, flags, env, want] = cols[..] else {
                panic!("bad row {line}")
            };
            let got = run(h, flags.trim(), env.trim());
            match want.strip_prefix('!') {
                Some(part) => assert!(
                    matches!(&got, Err(e) if e.contains(part)),
                    "{line}\n{got:?}"
                ),
                None => assert_eq!(got, Ok(want.to_owned()), "{line}"),
            }
        }
    }

    #[test]
    fn resolve_returns_exact_fields_and_one_line_errors() {
        let args = TargetArgs {
            host: "vm-1.z.p.iap".into(),
            suffix: ".iap".into(),
            ..Default::default()
        };
        let got = resolve(&args, &|_| None, &Fallback::default());
        assert_eq!(got, Ok(inst("p", "z", "vm-1", "nic0")));
        let args = TargetArgs {
            host: "vm.z".into(),
            ..Default::default()
        };
        let err = resolve(&args, &|_| Some("x\ny".into()), &Fallback::default())
            .map_err(|e| e.to_string());
        assert_eq!(err, Err("invalid project \"x\\ny\" from CLOUDSDK_CORE_PROJECT: use a project id such as my-project or example.com:my-project".into()));
    }
}
