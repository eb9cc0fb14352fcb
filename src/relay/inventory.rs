//! Which machines exist and their internal addresses. The relay dials only addresses found
//! here, so it can never be used as an open proxy.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::target::Target;

/// Instances by (project, zone, name), each with its interfaces.
#[derive(Debug, Default)]
pub struct Inventory {
    instances: HashMap<(String, String, String), HashMap<String, IpAddr>>,
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

    /// The internal address for `target`, if the inventory names it.
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
            // Destination groups come with host-mode support; until then nothing is reachable.
            Target::Host { .. } => None,
        }
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
}
