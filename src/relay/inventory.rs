//! Which machines exist and their internal addresses. The relay dials only addresses found
//! here: instances by name, and for host-mode targets only addresses inside a destination
//! group's CIDR ranges, including every address a group's FQDN resolves to (so DNS cannot
//! point the relay anywhere else). Pure: resolving names is the server's job.

use std::collections::HashMap;
use std::net::IpAddr;

use anyhow::{Context, bail};

use crate::target::Target;

/// An IP network, e.g. `10.0.0.0/24` or `fd00::/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` (or a bare address, a /32 or /128).
    ///
    /// # Errors
    /// For anything else, or host bits set beyond the prefix.
    pub fn parse(text: &str) -> anyhow::Result<Cidr> {
        let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
        let net: IpAddr = addr
            .parse()
            .with_context(|| format!("{text:?} is not an address or CIDR range"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .with_context(|| format!("{text:?}: prefix must be 0 to {max}"))?
        };
        let cidr = Cidr { net, prefix };
        if !cidr.contains(net) || mask(net, prefix) != bits(net) {
            bail!("{text:?} has host bits set beyond /{prefix}");
        }
        Ok(cidr)
    }

    /// Whether `addr` is inside.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        addr.is_ipv4() == self.net.is_ipv4()
            && mask(addr, self.prefix) == mask(self.net, self.prefix)
    }
}

fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn mask(addr: IpAddr, prefix: u8) -> u128 {
    let width = if addr.is_ipv4() { 32 } else { 128 };
    let host_bits = width - u32::from(prefix);
    if host_bits >= 128 {
        0
    } else {
        (bits(addr) >> host_bits) << host_bits
    }
}

/// A destination group: addresses and names reachable in host mode.
#[derive(Clone, Debug)]
pub struct DestGroup {
    /// Project id.
    pub project: String,
    /// Region.
    pub region: String,
    /// Group name.
    pub name: String,
    /// Address ranges; every dialled address must be inside one.
    pub cidrs: Vec<Cidr>,
    /// Host names clients may ask for (`*.example.com` matches one or more labels).
    pub fqdns: Vec<String>,
}

impl DestGroup {
    /// Whether `addr` is inside the group's ranges.
    pub fn admits(&self, addr: IpAddr) -> bool {
        self.cidrs.iter().any(|c| c.contains(addr))
    }

    fn names(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.fqdns.iter().any(|f| {
            let f = f.trim_end_matches('.').to_ascii_lowercase();
            match f.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}"))
                }
                None => host == f,
            }
        })
    }
}

/// Where a host-mode target leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostLookup {
    /// An address inside the named group: dial it.
    Address {
        /// The group that admits it.
        group: String,
        /// The address.
        addr: IpAddr,
    },
    /// A name the group lists: resolve it and dial only addresses the group admits.
    Name {
        /// The group that lists it.
        group: String,
    },
    /// The named group does not exist (4047).
    UnknownGroup,
    /// No group admits this host (4033): never dialled.
    Outside,
}

/// Instances and destination groups.
#[derive(Debug, Default)]
pub struct Inventory {
    instances: HashMap<(String, String, String), HashMap<String, IpAddr>>,
    groups: Vec<DestGroup>,
}

impl Inventory {
    /// Adds an instance.
    pub fn add_instance(
        &mut self,
        project: &str,
        zone: &str,
        name: &str,
        interfaces: HashMap<String, IpAddr>,
    ) {
        self.instances.insert(
            (project.to_owned(), zone.to_owned(), name.to_owned()),
            interfaces,
        );
    }

    /// Adds a destination group.
    pub fn add_group(&mut self, group: DestGroup) {
        self.groups.push(group);
    }

    /// The internal address of an instance target, if the inventory names it.
    pub fn resolve(&self, target: &Target) -> Option<IpAddr> {
        match target {
            Target::Instance {
                project,
                zone,
                instance,
                interface,
            } => self
                .instances
                .get(&(project.clone(), zone.clone(), instance.clone()))?
                .get(interface)
                .copied(),
            Target::Host { .. } => None,
        }
    }

    /// A destination group by coordinates.
    pub fn group(&self, project: &str, region: &str, name: &str) -> Option<&DestGroup> {
        self.groups
            .iter()
            .find(|g| g.project == project && g.region == region && g.name == name)
    }

    /// Where a host-mode target leads. With a group named, only that group is considered;
    /// without one, the first group of the project and region that admits the host.
    pub fn locate_host(
        &self,
        project: &str,
        region: &str,
        host: &str,
        group: Option<&str>,
    ) -> HostLookup {
        let candidates: Vec<&DestGroup> = match group {
            Some(name) => match self.group(project, region, name) {
                Some(g) => vec![g],
                None => return HostLookup::UnknownGroup,
            },
            None => self
                .groups
                .iter()
                .filter(|g| g.project == project && g.region == region)
                .collect(),
        };
        let ip = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        for g in candidates {
            match ip {
                Some(addr) if g.admits(addr) => {
                    return HostLookup::Address {
                        group: g.name.clone(),
                        addr,
                    };
                }
                None if g.names(host) => {
                    return HostLookup::Name {
                        group: g.name.clone(),
                    };
                }
                _ => {}
            }
        }
        HostLookup::Outside
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_only_named_interfaces() {
        let mut inv = Inventory::default();
        inv.add_instance(
            "p",
            "z",
            "vm-1",
            HashMap::from([("nic0".to_owned(), "10.0.0.5".parse().unwrap())]),
        );
        let t = |iface: &str, name: &str| Target::Instance {
            project: "p".into(),
            zone: "z".into(),
            instance: name.into(),
            interface: iface.into(),
        };
        assert_eq!(
            inv.resolve(&t("nic0", "vm-1")),
            Some("10.0.0.5".parse().unwrap())
        );
        assert_eq!(inv.resolve(&t("nic1", "vm-1")), None);
        assert_eq!(inv.resolve(&t("nic0", "vm-2")), None);
    }

    #[test]
    fn cidr_table() {
        let cases = [
            ("10.0.0.0/24", "10.0.0.255", true),
            ("10.0.0.0/24", "10.0.1.0", false),
            ("10.0.0.0/24", "::ffff:10.0.0.7", true),
            ("0.0.0.0/0", "192.0.2.1", true),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("fd00::/64", "fd00::1", true),
            ("fd00::/64", "fd00:0:0:1::1", false),
            ("fd00::/64", "10.0.0.1", false),
        ];
        for (cidr, addr, inside) in cases {
            assert_eq!(
                Cidr::parse(cidr).unwrap().contains(addr.parse().unwrap()),
                inside,
                "{cidr} {addr}"
            );
        }
        for bad in ["10.0.0.1/24", "10.0.0.0/33", "x/8", "fd00::/129", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_lookup_table() {
        let mut inv = Inventory::default();
        inv.add_group(DestGroup {
            project: "p".into(),
            region: "r".into(),
            name: "db".into(),
            cidrs: vec![Cidr::parse("10.0.0.0/24").unwrap()],
            fqdns: vec!["db.corp.example".into(), "*.db.corp.example".into()],
        });
        inv.add_group(DestGroup {
            project: "p".into(),
            region: "r".into(),
            name: "web".into(),
            cidrs: vec![Cidr::parse("10.1.0.0/16").unwrap()],
            fqdns: vec![],
        });
        let addr = |group: &str, a: &str| HostLookup::Address {
            group: group.into(),
            addr: a.parse().unwrap(),
        };
        let name = |group: &str| HostLookup::Name {
            group: group.into(),
        };
        let cases = [
            ("10.0.0.5", Some("db"), addr("db", "10.0.0.5")),
            ("10.0.0.5", None, addr("db", "10.0.0.5")),
            ("10.1.2.3", None, addr("web", "10.1.2.3")),
            ("10.1.2.3", Some("db"), HostLookup::Outside),
            ("192.168.1.1", None, HostLookup::Outside),
            ("10.0.0.5", Some("nope"), HostLookup::UnknownGroup),
            ("DB.corp.example.", Some("db"), name("db")),
            ("a.db.corp.example", None, name("db")),
            ("db.corp.example.evil.io", None, HostLookup::Outside),
            ("xdb.corp.example", None, HostLookup::Outside),
        ];
        for (host, group, want) in cases {
            assert_eq!(
                inv.locate_host("p", "r", host, group),
                want,
                "{host} {group:?}"
            );
        }
        assert_eq!(
            inv.locate_host("p", "other", "10.0.0.5", None),
            HostLookup::Outside
        );
    }
}
