//! Where a target leads: from the inventory and the request to the addresses the relay may
//! dial, or a refusal. Pure: a listed host name is resolved by the caller (`dial::resolve`)
//! and the answers are passed back in, so the rule that DNS cannot steer the relay outside a
//! destination group is decided and tested here.
//!
//! Two steps, because the policy comes between them: [`locate`] names the destination group
//! (which the policy may match on) without dialling or resolving anything, and only once the
//! policy allows the request does [`addresses`] turn the route into addresses.

use std::net::IpAddr;

use super::inventory::{HostLookup, Inventory};
use crate::close;
use crate::target::Target;

/// Why a target cannot be reached: the close code, the reason for the audit log, and the
/// result label for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The close code sent to the client.
    pub code: u16,
    /// Why, for the log and the audit line only.
    pub reason: &'static str,
    /// The counter label.
    pub result: &'static str,
}

impl Refusal {
    const fn denied(reason: &'static str) -> Refusal {
        Refusal {
            code: close::NOT_AUTHORIZED,
            reason,
            result: "denied",
        }
    }
}

/// A host-mode target whose host no destination group admits; never dialled.
pub const OUTSIDE: Refusal = Refusal::denied("host is outside every destination group");
/// An instance the inventory does not list, or an unknown destination group.
pub const NOT_LISTED: Refusal = Refusal {
    code: close::LOOKUP_FAILED,
    reason: "target not in inventory",
    result: "not_found",
};
/// A listed host name with no address.
pub const UNRESOLVED: Refusal = Refusal::denied("host name does not resolve");
/// A listed host name whose every address is outside its destination group.
pub const RESOLVED_OUTSIDE: Refusal =
    Refusal::denied("host name resolves outside the destination group");

/// Where a target leads, before the policy is asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The destination group a host-mode target is in (the policy may match on it).
    pub group: Option<String>,
    /// How to find its address.
    pub way: Way,
}

/// How a route's address is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Way {
    /// The inventory names it.
    Address(IpAddr),
    /// A host name the group lists: resolve it, then keep only what the group admits.
    Resolve(String),
    /// Not listed (4047), refused once the policy has been asked.
    NotListed,
}

/// Where `target` leads, without resolving or dialling anything.
///
/// # Errors
/// [`OUTSIDE`] for a host that no destination group admits: refused before the policy.
pub fn locate(inventory: &Inventory, target: &Target) -> Result<Route, Refusal> {
    let Target::Host {
        project,
        region,
        host,
        dest_group,
        ..
    } = target
    else {
        let way = inventory
            .resolve(target)
            .map_or(Way::NotListed, Way::Address);
        return Ok(Route { group: None, way });
    };
    match inventory.locate_host(project, region, host, dest_group.as_deref()) {
        HostLookup::Address { group, addr } => Ok(Route {
            group: Some(group),
            way: Way::Address(addr),
        }),
        HostLookup::Name { group } => Ok(Route {
            group: Some(group),
            way: Way::Resolve(host.clone()),
        }),
        HostLookup::UnknownGroup => Ok(Route {
            group: None,
            way: Way::NotListed,
        }),
        HostLookup::Outside => Err(OUTSIDE),
    }
}

/// The addresses to dial for a route whose host name resolved to `resolved` (ignored for a
/// route with an address). A name's addresses are kept only when its group admits them, in
/// the resolver's order: the address checked is the address dialled.
///
/// # Errors
/// [`NOT_LISTED`], [`UNRESOLVED`] or [`RESOLVED_OUTSIDE`].
pub fn addresses(
    inventory: &Inventory,
    target: &Target,
    route: &Route,
    resolved: &[IpAddr],
) -> Result<Vec<IpAddr>, Refusal> {
    match &route.way {
        Way::Address(addr) => Ok(vec![*addr]),
        Way::NotListed => Err(NOT_LISTED),
        Way::Resolve(_) => {
            let group = match (target, &route.group) {
                (
                    Target::Host {
                        project, region, ..
                    },
                    Some(name),
                ) => inventory.group(project, region, name),
                _ => None,
            };
            let admitted: Vec<IpAddr> = resolved
                .iter()
                .copied()
                .filter(|ip| group.is_some_and(|g| g.admits(*ip)))
                .collect();
            match (admitted.is_empty(), resolved.is_empty()) {
                (false, _) => Ok(admitted),
                (true, true) => Err(UNRESOLVED),
                (true, false) => Err(RESOLVED_OUTSIDE),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::relay::inventory::{Cidr, DestGroup};

    fn inventory() -> Inventory {
        let mut inv = Inventory::default();
        inv.add_instance(
            "p",
            "z",
            "vm-1",
            HashMap::from([("nic0".to_owned(), ip("10.0.0.5"))]),
        );
        inv.add_group(DestGroup {
            project: "p".into(),
            region: "r".into(),
            name: "db".into(),
            cidrs: vec![Cidr::parse("10.1.0.0/24").unwrap()],
            fqdns: vec!["db.corp.example".into()],
        });
        inv
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn instance(name: &str) -> Target {
        Target::Instance {
            project: "p".into(),
            zone: "z".into(),
            instance: name.into(),
            interface: "nic0".into(),
        }
    }

    fn host(host: &str, group: Option<&str>) -> Target {
        Target::Host {
            project: "p".into(),
            region: "r".into(),
            network: "default".into(),
            host: host.into(),
            dest_group: group.map(str::to_owned),
        }
    }

    /// Locates `target`, then turns the route into addresses with `resolved` as DNS's answer.
    fn both(target: &Target, resolved: &[&str]) -> Result<(Option<String>, Vec<IpAddr>), Refusal> {
        let inv = inventory();
        let route = locate(&inv, target)?;
        let resolved: Vec<IpAddr> = resolved.iter().map(|s| ip(s)).collect();
        let addrs = addresses(&inv, target, &route, &resolved)?;
        Ok((route.group, addrs))
    }

    #[test]
    fn instances_lead_to_their_listed_address() {
        assert_eq!(
            both(&instance("vm-1"), &[]),
            Ok((None, vec![ip("10.0.0.5")]))
        );
        assert_eq!(both(&instance("vm-2"), &[]), Err(NOT_LISTED));
    }

    #[test]
    fn hosts_lead_only_inside_their_group() {
        let db = Some("db".to_owned());
        assert_eq!(
            both(&host("10.1.0.9", None), &[]),
            Ok((db.clone(), vec![ip("10.1.0.9")]))
        );
        assert_eq!(both(&host("10.2.0.9", None), &[]), Err(OUTSIDE));
        assert_eq!(both(&host("10.1.0.9", Some("nope")), &[]), Err(NOT_LISTED));
        let inv = inventory();
        assert_eq!(
            locate(&inv, &host("10.1.0.9", Some("nope"))),
            Ok(Route {
                group: None,
                way: Way::NotListed
            }),
            "an unknown group names no group for the policy"
        );
    }

    #[test]
    fn a_listed_name_keeps_only_addresses_its_group_admits() {
        let db = Some("db".to_owned());
        let name = host("db.corp.example", Some("db"));
        assert_eq!(
            both(&name, &["192.0.2.1", "10.1.0.7", "10.1.0.8"]),
            Ok((db, vec![ip("10.1.0.7"), ip("10.1.0.8")]))
        );
        assert_eq!(both(&name, &[]), Err(UNRESOLVED));
        assert_eq!(both(&name, &["192.0.2.1"]), Err(RESOLVED_OUTSIDE));
        assert_eq!(both(&host("web.corp.example", None), &[]), Err(OUTSIDE));
    }
}
