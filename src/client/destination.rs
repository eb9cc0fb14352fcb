//! Client side: resolving the destination from HOST, flags, the environment and
//! fallbacks (gcloud configuration, the service-account key).

use std::net::IpAddr;
use std::path::Path;

use super::auth::KeyFileInfo;
use super::error::Error;
use super::gcloud_properties::GcloudProperties;
use crate::target::{DEFAULT_INTERFACE, Target};

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
    /// Everything read from the active gcloud configuration file.
    pub gcloud: GcloudProperties,
}

impl Fallback {
    /// Puts project and zone from the gcloud account's `config-helper` answer first: that
    /// answer already holds gcloud's own precedence (environment, configuration,
    /// installation).
    pub fn prefer_gcloud_answer(&mut self, props: &GcloudProperties) {
        let label = "gcloud config config-helper";
        if let Some(p) = &props.project {
            self.project = Some((p.clone(), format!("{label} core/project")));
        }
        if let Some(z) = &props.zone {
            self.zone = Some((z.clone(), format!("{label} compute/zone")));
        }
        self.looked_at.insert(0, label.to_owned());
    }

    /// Reads the fallbacks, in gcloud's order: the active gcloud configuration in
    /// `gcloud_dir` (`$CLOUDSDK_CONFIG` or `~/.config/gcloud`, found by the caller) named by
    /// `active_config` (`CLOUDSDK_ACTIVE_CONFIG_NAME`) or the dir's `active_config` file or
    /// `default`, then the service-account key file's `project_id`. Unreadable files count as
    /// absent; every file looked at is listed for "not found" messages.
    pub fn load(
        gcloud_dir: Option<&Path>,
        active_config: Option<&str>,
        key_file: Option<&Path>,
    ) -> Fallback {
        let mut fallback = Fallback::default();
        if let Some(dir) = gcloud_dir {
            let name = active_config
                .map(str::to_owned)
                .filter(|n| !n.trim().is_empty())
                .or_else(|| std::fs::read_to_string(dir.join("active_config")).ok())
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty() && !n.contains(['/', '\\']))
                .unwrap_or_else(|| "default".to_owned());
            let path = dir.join("configurations").join(format!("config_{name}"));
            let label = format!("gcloud configuration {}", path.display());
            if let Ok(text) = std::fs::read_to_string(&path) {
                let props = GcloudProperties::parse(&text);
                fallback.project = props
                    .project
                    .clone()
                    .map(|p| (p, format!("{label} [core] project")));
                fallback.zone = props
                    .zone
                    .clone()
                    .map(|z| (z, format!("{label} [compute] zone")));
                fallback.gcloud = props;
            }
            fallback.looked_at.push(label);
        }
        if let Some(key) = key_file {
            let label = format!("project_id in {}", key.display());
            if fallback.project.is_none()
                && let Some(project) = std::fs::read_to_string(key)
                    .ok()
                    .and_then(|t| KeyFileInfo::parse(&t))
                    .and_then(|k| k.project_id)
                    .filter(|p| !p.is_empty())
            {
                fallback.project = Some((project, label.clone()));
            }
            fallback.looked_at.push(label);
        }
        fallback
    }
}

fn fail<T>(msg: String) -> Result<T, Error> {
    Err(Error::usage(msg))
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
) -> Result<Target, Error> {
    resolve_with_origins(args, env, fallback).map(|(target, _)| target)
}

/// Checks HOST and the target flags for mistakes that need no lookup (a malformed HOST, a
/// suffix that does not match, flags that do not go together), so that they are reported
/// before credentials are looked for. Project and zone are stood in for: whether they can be
/// found is for [`resolve`] to say.
///
/// # Errors
///
/// As [`resolve`], except "no project" and "no zone".
pub fn check_syntax(args: &TargetArgs) -> Result<(), Error> {
    let stand_in = |what: &str| Some((format!("stand-in-{what}"), String::new()));
    let fallback = Fallback {
        project: stand_in("project"),
        zone: stand_in("zone"),
        ..Fallback::default()
    };
    resolve(args, &|_| None, &fallback).map(|_| ())
}

/// [`resolve`], also saying where the project and the zone came from, as
/// `(name, "value (from)")` pairs (for `--check`).
///
/// # Errors
///
/// As [`resolve`].
pub fn resolve_with_origins(
    args: &TargetArgs,
    env: &dyn Fn(&str) -> Option<String>,
    fallback: &Fallback,
) -> Result<(Target, Vec<(String, String)>), Error> {
    let sources = Sources {
        env,
        fallback,
        origins: std::cell::RefCell::new(Vec::new()),
    };
    let target = resolve_from(args, &sources)?;
    Ok((target, sources.origins.into_inner()))
}

fn resolve_from(args: &TargetArgs, sources: &Sources) -> Result<Target, Error> {
    let host = strip_suffix(&args.host, &args.suffix);
    if host.is_empty() {
        let host = args.host.escape_debug();
        return fail(format!(
            "HOST \"{host}\" is empty: use INSTANCE[.ZONE[.PROJECT]]"
        ));
    }
    let (region, network) = match (&args.region, &args.network, &args.dest_group) {
        (Some(region), Some(network), _) => (region, network),
        (None, None, None) => return resolve_instance(args, host, sources),
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

fn resolve_instance(args: &TargetArgs, host: &str, sources: &Sources) -> Result<Target, Error> {
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
    // A project part with a dot outside a domain-scoped id is not a project: the HOST has
    // more parts than INSTANCE.ZONE.PROJECT, or ends in a suffix other than --host-suffix.
    if let Some(project) = project_part
        && Rule::Project.check("project", project, "HOST").is_err()
    {
        let suffix = &args.suffix;
        let shown_suffix = if suffix.is_empty() {
            "no suffix".to_owned()
        } else {
            format!("the suffix \"{}\"", suffix.escape_debug())
        };
        let hint = match project.rsplit_once('.') {
            Some((_, tail)) if !tail.is_empty() && !tail.contains(':') => format!(
                "; if \".{}\" is a suffix, pass --host-suffix .{}",
                tail.escape_debug(),
                tail.escape_debug()
            ),
            _ => String::new(),
        };
        return fail(format!(
            "HOST {shown} does not match INSTANCE[.ZONE[.PROJECT]] with {shown_suffix}: \"{}\" is not a project id (e.g. my-project or example.com:my-project){hint}",
            project.escape_debug()
        ));
    }
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
    /// Where each value found came from, in the order found.
    origins: std::cell::RefCell<Vec<(String, String)>>,
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
    ) -> Result<String, Error> {
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
            rule.check(what, &value, &from)?;
            self.origins
                .borrow_mut()
                .push((what.to_owned(), format!("{value} ({from})")));
            return Ok(value);
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
    fn check(self, what: &str, value: &str, from: &str) -> Result<(), Error> {
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
        // A project id, or a domain-scoped one (`example.com:my-project`): dots only in the
        // domain, before the one colon.
        let project = |s: &str| {
            let id = |p: &str| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
            };
            let ok = match s.split_once(':') {
                Some((domain, rest)) => {
                    !domain.is_empty() && domain.split('.').all(label) && id(rest)
                }
                None => id(s),
            };
            ok && s.len() <= 100
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
            vm.z.p | interface=nic/0 |  | !invalid interface
            vm.zone.proj.extra |  |  | !HOST vm.zone.proj.extra does not match INSTANCE[.ZONE[.PROJECT]] with the suffix \".iap\": \"proj.extra\" is not a project id
            vm.z.p.iap | suffix=.gcp |  | !\"p.iap\" is not a project id (e.g. my-project or example.com:my-project); if \".iap\" is a suffix, pass --host-suffix .iap
            vm.z.example.com | suffix= |  | !with no suffix
            vm.z.example.com:proj.x |  |  | !is not a project id
            vm.z | project=a.b |  | !invalid project \"a.b\" from --project
            vm.z | project=:p |  | !invalid project \":p\" from --project";
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

    #[test]
    fn fallback_reads_the_active_configuration_then_the_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let gcloud = dir.path().join("gcloud");
        std::fs::create_dir_all(gcloud.join("configurations")).unwrap();
        let key = dir.path().join("key.json");
        std::fs::write(
            &key,
            r#"{"type":"service_account","project_id":"key-proj"}"#,
        )
        .unwrap();
        let write = |name: &str, text: &str| {
            std::fs::write(gcloud.join("configurations").join(name), text).unwrap()
        };
        write(
            "config_default",
            "[core]\nproject = def-proj\n[compute]\nzone = def-zone\n",
        );
        write("config_work", "[compute]\nzone = work-zone\n");

        let fb = Fallback::load(Some(&gcloud), None, Some(&key));
        assert_eq!(fb.project.as_ref().map(|p| p.0.as_str()), Some("def-proj"));
        assert!(
            fb.project
                .unwrap()
                .1
                .contains("config_default [core] project")
        );
        assert_eq!(fb.zone.map(|z| z.0), Some("def-zone".into()));
        assert_eq!(fb.looked_at.len(), 2);

        std::fs::write(gcloud.join("active_config"), "work\n").unwrap();
        let fb = Fallback::load(Some(&gcloud), None, Some(&key));
        assert_eq!(fb.zone.map(|z| z.0), Some("work-zone".into()));
        assert_eq!(fb.project.map(|p| p.0), Some("key-proj".into()));

        // CLOUDSDK_ACTIVE_CONFIG_NAME wins over the active_config file.
        let fb = Fallback::load(Some(&gcloud), Some("default"), None);
        assert_eq!(fb.zone.map(|z| z.0), Some("def-zone".into()));

        let fb = Fallback::load(Some(&dir.path().join("missing")), None, None);
        assert!(fb.project.is_none() && fb.zone.is_none());
        assert!(
            fb.looked_at[0].contains("config_default"),
            "{:?}",
            fb.looked_at
        );

        // The full chain through resolve(): the environment beats the configuration file.
        let fb = Fallback::load(Some(&gcloud), Some("default"), Some(&key));
        let args = TargetArgs {
            host: "vm".into(),
            ..Default::default()
        };
        let env = |k: &str| (k == ZONE_ENV).then(|| "env-zone".to_owned());
        let got = resolve(&args, &env, &fb).map(|t| t.describe(22));
        assert_eq!(got, Ok("vm port 22 in def-proj/env-zone".into()));
    }
}
