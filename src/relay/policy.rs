//! Who may reach what: IAM-style bindings, default deny. Pure: no I/O; the clock is an input.

use std::collections::HashMap;
use std::time::SystemTime;

use anyhow::bail;

use crate::target::Target;

/// A resource a binding grants access on, from the widest to the narrowest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    /// `projects/P`: every instance and destination group in the project.
    Project(String),
    /// `projects/P/zones/Z`: every instance in the zone.
    Zone {
        /// Project id.
        project: String,
        /// Zone.
        zone: String,
    },
    /// `projects/P/zones/Z/instances/NAME`: one instance.
    Instance {
        /// Project id.
        project: String,
        /// Zone.
        zone: String,
        /// Instance name.
        name: String,
    },
    /// `projects/P/iap_tunnel/locations/REGION/destGroups/GROUP`: one destination group, as
    /// Google Cloud names it.
    DestGroup {
        /// Project id.
        project: String,
        /// Region.
        region: String,
        /// Group name.
        group: String,
    },
}

impl Resource {
    /// Parses a resource name.
    ///
    /// # Errors
    /// For any other form.
    pub fn parse(text: &str) -> anyhow::Result<Resource> {
        let parts: Vec<&str> = text.split('/').collect();
        let ok = |s: &&str| !s.is_empty();
        let own = |s: &&str| (*s).to_owned();
        Ok(match parts.as_slice() {
            ["projects", p] if ok(p) => Resource::Project(own(p)),
            ["projects", p, "zones", z] if ok(p) && ok(z) => Resource::Zone {
                project: own(p),
                zone: own(z),
            },
            ["projects", p, "zones", z, "instances", n] if ok(p) && ok(z) && ok(n) => {
                Resource::Instance {
                    project: own(p),
                    zone: own(z),
                    name: own(n),
                }
            }
            ["projects", p, "iap_tunnel", "locations", r, "destGroups", g]
                if ok(p) && ok(r) && ok(g) =>
            {
                Resource::DestGroup {
                    project: own(p),
                    region: own(r),
                    group: own(g),
                }
            }
            _ => bail!(
                "resource {text:?} must be projects/P, projects/P/zones/Z, projects/P/zones/Z/instances/NAME or projects/P/iap_tunnel/locations/REGION/destGroups/GROUP"
            ),
        })
    }

    /// Whether this resource covers `target`. `group` is the destination group the inventory
    /// placed a host-mode target in (the client may not have named one).
    fn covers(&self, target: &Target, group: Option<&str>) -> bool {
        match (self, target) {
            (Resource::Project(p), t) => p == t.project(),
            (
                Resource::Zone { project, zone },
                Target::Instance {
                    project: tp,
                    zone: tz,
                    ..
                },
            ) => project == tp && zone == tz,
            (
                Resource::Instance {
                    project,
                    zone,
                    name,
                },
                Target::Instance {
                    project: tp,
                    zone: tz,
                    instance,
                    ..
                },
            ) => project == tp && zone == tz && name == instance,
            (
                Resource::DestGroup {
                    project,
                    region,
                    group: g,
                },
                Target::Host {
                    project: tp,
                    region: tr,
                    ..
                },
            ) => project == tp && region == tr && group == Some(g.as_str()),
            _ => false,
        }
    }
}

/// One grant of the tunnel role.
#[derive(Clone, Debug)]
pub struct Binding {
    /// Name for logs, e.g. `bindings[2]`.
    pub name: String,
    /// Members: `user:…`, `serviceAccount:…`, `group:…`, `domain:…`.
    pub members: Vec<String>,
    /// Where it applies.
    pub resource: Resource,
    /// Condition: allowed ports; `None` means any.
    pub ports: Option<Vec<u16>>,
    /// Condition: the caller presented a verified TLS client certificate.
    pub require_client_cert: bool,
    /// Condition: the grant ends at this time.
    pub expires: Option<SystemTime>,
}

/// All bindings, and the groups their members may name.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// In configuration order.
    pub bindings: Vec<Binding>,
    /// `group:NAME` → its members (`user:…`, `serviceAccount:…`, `domain:…`; no nesting).
    pub groups: HashMap<String, Vec<String>>,
}

/// One tunnel request, as the policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Who asks.
    pub principal: &'a str,
    /// For what.
    pub target: &'a Target,
    /// Which port.
    pub port: u16,
    /// The destination group a host-mode target was found in.
    pub group: Option<&'a str>,
    /// Whether a verified TLS client certificate was presented.
    pub client_cert: bool,
    /// The time of the decision.
    pub now: SystemTime,
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the named binding.
    Allow {
        /// The binding that matched, for the log.
        binding: String,
        /// When that binding expires; the session must be decided again then.
        until: Option<SystemTime>,
    },
    /// Denied; the reason is for the relay's log only, never for the client.
    Deny {
        /// Why.
        reason: String,
    },
}

fn matches_member(member: &str, principal: &str) -> bool {
    if let Some(domain) = member.strip_prefix("domain:") {
        // A domain grant covers users and service accounts whose address is in that domain.
        return principal
            .split_once(':')
            .and_then(|(_, email)| email.rsplit_once('@'))
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain));
    }
    member == principal
}

impl Policy {
    fn is_member(&self, member: &str, principal: &str) -> bool {
        if member.starts_with("group:") {
            return self
                .groups
                .get(member)
                .is_some_and(|members| members.iter().any(|m| matches_member(m, principal)));
        }
        matches_member(member, principal)
    }
}

/// Whether the request is allowed. Default deny; the first binding whose resource, member and
/// conditions all match allows it. A deny names the closest miss for the log.
pub fn decide(policy: &Policy, req: &Request<'_>) -> Decision {
    let mut unmet = None;
    for binding in &policy.bindings {
        if !binding.resource.covers(req.target, req.group)
            || !binding
                .members
                .iter()
                .any(|m| policy.is_member(m, req.principal))
        {
            continue;
        }
        let miss = match &binding.ports {
            Some(ports) if !ports.contains(&req.port) => {
                Some(format!("{} does not allow port {}", binding.name, req.port))
            }
            _ if binding.require_client_cert && !req.client_cert => Some(format!(
                "{} requires a verified client certificate and none was presented",
                binding.name
            )),
            _ if binding.expires.is_some_and(|e| e <= req.now) => {
                Some(format!("{} has expired", binding.name))
            }
            _ => None,
        };
        match miss {
            Some(why) => unmet = Some(why),
            None => {
                return Decision::Allow {
                    binding: binding.name.clone(),
                    until: binding.expires,
                };
            }
        }
    }
    Decision::Deny {
        reason: unmet.unwrap_or_else(|| "no binding grants this principal the target".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn vm(project: &str, zone: &str, name: &str) -> Target {
        Target::Instance {
            project: project.into(),
            zone: zone.into(),
            instance: name.into(),
            interface: "nic0".into(),
        }
    }

    fn host(project: &str, region: &str, addr: &str) -> Target {
        Target::Host {
            project: project.into(),
            region: region.into(),
            network: "default".into(),
            host: addr.into(),
            dest_group: None,
        }
    }

    fn binding(name: &str, member: &str, resource: &str, ports: Option<Vec<u16>>) -> Binding {
        Binding {
            name: name.into(),
            members: vec![member.into()],
            resource: Resource::parse(resource).unwrap(),
            ports,
            require_client_cert: false,
            expires: None,
        }
    }

    fn ask(policy: &Policy, principal: &str, target: &Target, port: u16) -> Decision {
        let req = Request {
            principal,
            target,
            port,
            group: None,
            client_cert: false,
            now: SystemTime::now(),
        };
        decide(policy, &req)
    }

    fn expect(got: Decision, expected: Result<&str, &str>, what: &str) {
        match (got, expected) {
            (Decision::Allow { binding, .. }, Ok(b)) => assert_eq!(binding, b, "{what}"),
            (Decision::Deny { reason }, Err(text)) => {
                assert!(reason.contains(text), "{what}: {reason}")
            }
            (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn decide_table() {
        let policy = Policy {
            bindings: vec![
                binding("b0", "user:a@x.io", "projects/p", Some(vec![22])),
                binding("b1", "user:b@x.io", "projects/p/zones/z", None),
                binding(
                    "b2",
                    "serviceAccount:ci@p.iam",
                    "projects/p/zones/z/instances/vm-2",
                    Some(vec![22, 3389]),
                ),
                binding("b3", "domain:corp.io", "projects/q", None),
                binding("b4", "group:admins", "projects/r", None),
            ],
            groups: HashMap::from([(
                "group:admins".to_owned(),
                vec!["user:root@x.io".to_owned(), "domain:ops.io".to_owned()],
            )]),
        };
        let cases: Vec<(&str, Target, u16, Result<&str, &str>)> = vec![
            ("user:a@x.io", vm("p", "z", "vm-1"), 22, Ok("b0")),
            (
                "user:a@x.io",
                vm("p", "z", "vm-1"),
                23,
                Err("does not allow port 23"),
            ),
            ("user:a@x.io", vm("q", "z", "vm-1"), 22, Err("no binding")),
            ("user:b@x.io", vm("p", "z", "vm-9"), 5432, Ok("b1")),
            ("user:b@x.io", vm("p", "y", "vm-9"), 22, Err("no binding")),
            (
                "serviceAccount:ci@p.iam",
                vm("p", "z", "vm-2"),
                3389,
                Ok("b2"),
            ),
            (
                "serviceAccount:ci@p.iam",
                vm("p", "z", "vm-3"),
                22,
                Err("no binding"),
            ),
            ("user:eve@corp.io", vm("q", "z", "vm-1"), 22, Ok("b3")),
            (
                "user:eve@evilcorp.io",
                vm("q", "z", "vm-1"),
                22,
                Err("no binding"),
            ),
            (
                "user:nobody@x.io",
                vm("p", "z", "vm-1"),
                22,
                Err("no binding"),
            ),
            ("user:root@x.io", vm("r", "z", "vm-1"), 22, Ok("b4")),
            ("user:sam@ops.io", vm("r", "z", "vm-1"), 22, Ok("b4")),
            (
                "user:sam@ops.io",
                vm("p", "z", "vm-1"),
                22,
                Err("no binding"),
            ),
            ("group:admins", vm("r", "z", "vm-1"), 22, Err("no binding")),
        ];
        for (principal, target, port, expected) in cases {
            expect(
                ask(&policy, principal, &target, port),
                expected,
                &format!("{principal} {target:?} {port}"),
            );
        }
    }

    #[test]
    fn destination_groups_and_expiry() {
        let mut expired = binding("old", "user:a@x.io", "projects/p/zones/z", None);
        expired.expires = Some(SystemTime::now() - Duration::from_secs(1));
        let mut later = binding("later", "user:c@x.io", "projects/p/zones/z", None);
        later.expires = Some(SystemTime::now() + Duration::from_secs(3600));
        let policy = Policy {
            bindings: vec![
                binding(
                    "dg",
                    "user:a@x.io",
                    "projects/p/iap_tunnel/locations/r1/destGroups/db",
                    Some(vec![5432]),
                ),
                expired,
                later,
            ],
            groups: HashMap::new(),
        };
        let t = host("p", "r1", "10.0.0.5");
        let req = |group: Option<&'static str>, port| Request {
            principal: "user:a@x.io",
            target: &t,
            port,
            group,
            client_cert: false,
            now: SystemTime::now(),
        };
        expect(
            decide(&policy, &req(Some("db"), 5432)),
            Ok("dg"),
            "in group",
        );
        expect(
            decide(&policy, &req(Some("web"), 5432)),
            Err("no binding"),
            "other group",
        );
        expect(
            decide(&policy, &req(None, 5432)),
            Err("no binding"),
            "no group",
        );
        expect(
            decide(&policy, &req(Some("db"), 22)),
            Err("does not allow port 22"),
            "port",
        );
        expect(
            ask(&policy, "user:a@x.io", &vm("p", "z", "v"), 22),
            Err("old has expired"),
            "expired",
        );
        expect(
            ask(&policy, "user:c@x.io", &vm("p", "z", "v"), 22),
            Ok("later"),
            "not yet expired",
        );
    }

    #[test]
    fn resource_names() {
        for bad in [
            "folders/p",
            "projects/",
            "projects/p/zones",
            "projects/p/regions/r/destGroups/g",
            "",
        ] {
            assert!(Resource::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Resource::parse("projects/p/iap_tunnel/locations/us-east1/destGroups/db").unwrap(),
            Resource::DestGroup {
                project: "p".into(),
                region: "us-east1".into(),
                group: "db".into()
            }
        );
    }

    #[test]
    fn empty_policy_denies() {
        assert!(matches!(
            ask(&Policy::default(), "user:a@x.io", &vm("p", "z", "v"), 22),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn client_certificate_condition() {
        let mut device = binding("dev", "user:a@x.io", "projects/p", Some(vec![22]));
        device.require_client_cert = true;
        let policy = Policy {
            bindings: vec![device],
            groups: HashMap::new(),
        };
        let target = vm("p", "z", "vm-1");
        let req = |principal, cert, port| Request {
            principal,
            target: &target,
            port,
            group: None,
            client_cert: cert,
            now: SystemTime::now(),
        };
        expect(
            decide(&policy, &req("user:a@x.io", true, 22)),
            Ok("dev"),
            "with cert",
        );
        expect(
            decide(&policy, &req("user:a@x.io", false, 22)),
            Err("dev requires a verified client certificate"),
            "no cert",
        );
        expect(
            decide(&policy, &req("user:a@x.io", true, 23)),
            Err("dev does not allow port 23"),
            "port",
        );
        expect(
            decide(&policy, &req("user:b@x.io", true, 22)),
            Err("no binding"),
            "other user",
        );
    }
}
