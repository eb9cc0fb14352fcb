//! Every `iap-ssh` option in one table: its flag, its configuration file key, and how
//! `--print-ssh-config` and `--check` show it. The command line itself is argh's
//! ([`Args`]); the configuration file's keys, the printed ProxyCommand and the settings
//! listing are made from this table, so a new option is one field there and one row here
//! (a test checks that the two agree).

use std::path::Path;

use super::cli::Args;
use super::user_config::Loaded;
use Kind::{Count, File, Seconds, Source, Switch, Text};
use Rank::{BelowEnvironment, BelowFlag};

/// What an option takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A word, carried as given.
    Text,
    /// A file: made absolute in a printed ProxyCommand (ssh runs it in another folder); in
    /// the configuration file, relative to the file's folder.
    File,
    /// `gcloud`, `adc`, or a file (made absolute like [`Kind::File`]).
    Source,
    /// A whole number of seconds.
    Seconds,
    /// A switch.
    Switch,
    /// A switch that may be repeated (`-v`, `-vv`).
    Count,
}

/// Where a value from the configuration file ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rank {
    /// Below the flag only; [`merge`] takes it and `--check` lists where it came from.
    BelowFlag,
    /// Below the flag and the environment (project, zone): the destination resolver takes it
    /// and lists where it came from.
    BelowEnvironment,
}

/// What the command line says about one option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Given {
    /// Not given.
    No,
    /// Given with this value (a file as written).
    Value(String),
    /// A switch given this many times.
    Times(u8),
}

/// An option's place in the configuration file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileKey {
    /// The key.
    pub key: &'static str,
    /// Where its value ranks.
    pub rank: Rank,
    /// Its place when the file's keys are listed (error messages, `--check`'s settings),
    /// which keeps the order earlier releases showed.
    pub order: u8,
}

/// One option.
#[derive(Clone, Copy)]
pub struct Opt {
    /// The long flag without its dashes, as argh derives it from the field name.
    pub name: &'static str,
    /// The one-letter form of a repeated switch, if any.
    pub short: Option<char>,
    /// What it takes.
    pub kind: Kind,
    /// Its key in the configuration file, if the file may set it.
    pub file: Option<FileKey>,
    /// A mode (`--listen`, `--check` …) rather than a setting: `--print-ssh-config` decides
    /// about modes itself instead of carrying them into the ProxyCommand.
    pub mode: bool,
    /// Reads the option from the parsed command line.
    pub given: fn(&Args) -> Given,
}

/// A setting named `name` taking `kind`, read by `given`.
const fn setting(name: &'static str, kind: Kind, given: fn(&Args) -> Given) -> Opt {
    Opt {
        name,
        short: None,
        kind,
        file: None,
        mode: false,
        given,
    }
}

/// A mode named `name` taking `kind`, read by `given`.
const fn mode(name: &'static str, kind: Kind, given: fn(&Args) -> Given) -> Opt {
    Opt {
        mode: true,
        ..setting(name, kind, given)
    }
}

impl Opt {
    /// The same option, also set by `key` in the configuration file.
    const fn in_file(self, key: &'static str, rank: Rank, order: u8) -> Opt {
        Opt {
            file: Some(FileKey { key, rank, order }),
            ..self
        }
    }

    /// The same option, also written `-short`.
    const fn short(self, short: char) -> Opt {
        Opt {
            short: Some(short),
            ..self
        }
    }
}

fn text(value: &Option<String>) -> Given {
    value.clone().map_or(Given::No, Given::Value)
}

fn path(value: &Option<std::path::PathBuf>) -> Given {
    value
        .as_ref()
        .map_or(Given::No, |p| Given::Value(p.display().to_string()))
}

fn seconds(value: Option<u64>) -> Given {
    value.map_or(Given::No, |s| Given::Value(s.to_string()))
}

fn times(given: bool) -> Given {
    Given::Times(u8::from(given))
}

/// Every option, in the order a printed ProxyCommand lists them.
pub const OPTIONS: &[Opt] = &[
    setting("project", Text, |a| text(&a.project)).in_file("project", BelowEnvironment, 3),
    setting("zone", Text, |a| text(&a.zone)).in_file("zone", BelowEnvironment, 4),
    setting("interface", Text, |a| text(&a.interface)),
    setting("region", Text, |a| text(&a.region)),
    setting("network", Text, |a| text(&a.network)),
    setting("dest-group", Text, |a| text(&a.dest_group)),
    setting("host-suffix", Text, |a| text(&a.host_suffix)).in_file("host_suffix", BelowFlag, 2),
    setting("endpoint", Text, |a| text(&a.endpoint)).in_file("endpoint", BelowFlag, 0),
    setting("ca-file", File, |a| path(&a.ca_file)).in_file("ca_file", BelowFlag, 1),
    setting("client-cert", File, |a| path(&a.client_cert)),
    setting("client-key", File, |a| path(&a.client_key)),
    setting("proxy", Text, |a| text(&a.proxy)).in_file("proxy", BelowFlag, 5),
    setting("access-token-file", File, |a| path(&a.access_token_file)),
    setting("credentials", Source, |a| text(&a.credentials)),
    setting("credentials-file", File, |a| path(&a.credentials_file)),
    setting("resume-timeout", Seconds, |a| seconds(a.resume_timeout)).in_file(
        "resume_timeout_secs",
        BelowFlag,
        6,
    ),
    setting("request-reason", Text, |a| text(&a.request_reason)),
    setting("universe-domain", Text, |a| text(&a.universe_domain)),
    setting("no-token-cache", Switch, |a| times(a.no_token_cache)),
    setting("verbose", Count, |a| Given::Times(a.verbose)).short('v'),
    mode("listen", Text, |a| text(&a.listen)),
    mode("check", Switch, |a| times(a.check)),
    mode("no-check", Switch, |a| times(a.no_check)),
    mode("print-ssh-config", Switch, |a| times(a.print_ssh_config)),
    mode("version", Switch, |a| times(a.version)),
];

/// The options the configuration file may set, with their keys, in the file's order.
pub fn in_file() -> Vec<(&'static Opt, FileKey)> {
    let mut rows: Vec<_> = OPTIONS
        .iter()
        .filter_map(|o| o.file.map(|f| (o, f)))
        .collect();
    rows.sort_by_key(|(_, f)| f.order);
    rows
}

/// The row for the configuration file key `key`.
pub fn by_file_key(key: &str) -> Option<&'static Opt> {
    OPTIONS
        .iter()
        .find(|o| o.file.is_some_and(|f| f.key == key))
}

/// The configuration file's keys, in the file's order.
pub fn file_keys() -> impl Iterator<Item = &'static str> {
    in_file().into_iter().map(|(_, f)| f.key)
}

/// Whether the argument `arg` (`--name`) takes a value. Unknown flags are taken to: argh
/// refuses them anyway.
pub fn takes_value(arg: &str) -> bool {
    match arg
        .strip_prefix("--")
        .and_then(|name| OPTIONS.iter().find(|o| o.name == name))
    {
        Some(opt) => !matches!(opt.kind, Kind::Switch | Kind::Count),
        None => arg != "--help",
    }
}

/// The options to repeat in a printed ProxyCommand, in table order: every setting given on
/// the command line, as `(flag, value)` (modes are the caller's to accept or refuse). Files
/// become absolute against `cwd`, since ssh runs the command in its own working directory.
pub fn proxy_command(args: &Args, cwd: Option<&Path>) -> Vec<(String, Option<String>)> {
    let absolute = |p: String| match cwd {
        Some(cwd) if Path::new(&p).is_relative() => cwd.join(p).display().to_string(),
        _ => p,
    };
    let mut out = Vec::new();
    for opt in OPTIONS.iter().filter(|o| !o.mode) {
        let flag = format!("--{}", opt.name);
        match ((opt.given)(args), opt.kind) {
            (Given::No, _) => {}
            // `gcloud` and `adc` name sources; anything else is a file.
            (Given::Value(v), Kind::Source) if v == "gcloud" || v == "adc" => {
                out.push((flag, Some(v)));
            }
            (Given::Value(v), Kind::File | Kind::Source) => out.push((flag, Some(absolute(v)))),
            (Given::Value(v), _) => out.push((flag, Some(v))),
            (Given::Times(n), _) => {
                let shown = opt.short.map_or(flag, |c| format!("-{c}"));
                out.extend(std::iter::repeat_n((shown, None), usize::from(n)));
            }
        }
    }
    out
}

/// The settings the configuration file may give below a flag ([`Rank::BelowFlag`]), each
/// taken from the flag, else from the file.
#[derive(Debug, Default)]
pub struct Merged {
    values: Vec<(&'static str, String)>,
    /// Where each came from, as `(name, "value (source)")`, for `--check`; passwords in URLs
    /// are hidden.
    pub origins: Vec<(String, String)>,
}

impl Merged {
    /// The value of the option `name`, if the flag or the file gave one.
    pub fn get(&self, name: &str) -> Option<&str> {
        debug_assert!(OPTIONS.iter().any(|o| o.name == name), "no option {name}");
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Lets each flag given win over the configuration `file`, in the file's order.
pub fn merge(args: &Args, file: Option<&Loaded>) -> Merged {
    let mut merged = Merged::default();
    for (opt, key) in in_file() {
        if key.rank != Rank::BelowFlag {
            continue;
        }
        let chosen = match ((opt.given)(args), file) {
            (Given::Value(v), _) => Some((v, format!("--{}", opt.name))),
            (_, Some(file)) => file.get(opt.name).map(|v| (v.to_owned(), file.label())),
            _ => None,
        };
        if let Some((value, from)) = chosen {
            let shown = without_password(&value);
            merged
                .origins
                .push((opt.name.to_owned(), format!("{shown} ({from})")));
            merged.values.push((opt.name, value));
        }
    }
    merged
}

/// `value` for display: a URL's password (a proxy's `http://user:password@host`) replaced
/// by `***`; anything else as is.
fn without_password(value: &str) -> String {
    let Some((scheme, rest)) = value.split_once("://") else {
        return value.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests;
