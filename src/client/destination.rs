//! Client side: resolving the destination from HOST, flags, the environment and
//! fallbacks (gcloud configuration, the service-account key).

use std::net::IpAddr;
use std::path::Path;

use super::auth::KeyFileInfo;
use super::error::Error;
use super::gcloud_properties::GcloudProperties;
use crate::target::{DEFAULT_INTERFACE, Target};
use syntax::Rule;

mod syntax;

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

#[cfg(test)]
mod tests;
