//! The syntax of the names a destination is made of (instances, projects, zones and other
//! GCE resource names, hosts), checked before a round trip to the relay can catch a typo.

use std::net::IpAddr;

use super::fail;
use crate::client::error::Error;

/// Syntax checks that catch typos before a round trip to the relay.
#[derive(Clone, Copy)]
pub(super) enum Rule {
    /// GCE resource names: zones, regions, networks, interfaces, groups.
    Name,
    Instance,
    /// Includes domain-scoped ids such as `example.com:proj`.
    Project,
    Host,
}

impl Rule {
    /// `Ok` when `value` (the `what` that came `from` a flag, HOST or the environment) has
    /// the right syntax; else a usage error naming it, where it came from, and the rule.
    pub(super) fn check(self, what: &str, value: &str, from: &str) -> Result<(), Error> {
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
