//! Who may reach what: IAM-style bindings, default deny. Pure: no I/O, no clock.

use anyhow::bail;

use crate::target::Target;

/// A resource a binding grants access on, from the widest to the narrowest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    /// `projects/P`: every instance and destination in the project.
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
}

impl Resource {
    /// Parses a resource name.
    ///
    /// # Errors
    /// For any other form.
    pub fn parse(text: &str) -> anyhow::Result<Resource> {
        let parts: Vec<&str> = text.split('/').collect();
        let ok = |s: &&str| !s.is_empty();
        Ok(match parts.as_slice() {
            ["projects", p] if ok(p) => Resource::Project((*p).to_owned()),
            ["projects", p, "zones", z] if ok(p) && ok(z) => Resource::Zone {
                project: (*p).to_owned(),
                zone: (*z).to_owned(),
            },
            ["projects", p, "zones", z, "instances", n] if ok(p) && ok(z) && ok(n) => {
                Resource::Instance {
                    project: (*p).to_owned(),
                    zone: (*z).to_owned(),
                    name: (*n).to_owned(),
                }
            }
            _ => bail!(
                "resource {text:?} must be projects/P, projects/P/zones/Z or projects/P/zones/Z/instances/NAME"
            ),
        })
    }

    fn covers(&self, target: &Target) -> bool {
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
            _ => false,
        }
    }
}

/// One grant of the tunnel role.
#[derive(Clone, Debug)]
pub struct Binding {
    /// Name for logs, e.g. `bindings[2]`.
    pub name: String,
    /// Members: `user:…`, `serviceAccount:…`, `domain:…`.
    pub members: Vec<String>,
    /// Where it applies.
    pub resource: Resource,
    /// Allowed ports; `None` means any.
    pub ports: Option<Vec<u16>>,
    /// Condition: the caller presented a verified TLS client certificate.
    pub require_client_cert: bool,
}

/// All bindings.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// In configuration order.
    pub bindings: Vec<Binding>,
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the named binding.
    Allow {
        /// The binding that matched, for the log.
        binding: String,
    },
    /// Denied; the reason is for the relay's log only, never for the client.
    Deny {
        /// Why.
        reason: String,
    },
}

fn is_member(member: &str, principal: &str) -> bool {
    if let Some(domain) = member.strip_prefix("domain:") {
        // A domain grant covers users and service accounts whose address is in that domain.
        return principal
            .split_once(':')
            .and_then(|(_, email)| email.rsplit_once('@'))
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain));
    }
    member == principal
}

/// Whether `principal` may open a tunnel to `port` on `target`, for a caller that presented no
/// TLS client certificate (bindings with `require_client_cert` never match). Default deny.
pub fn decide(policy: &Policy, principal: &str, target: &Target, port: u16) -> Decision {
    decide_with_cert(policy, principal, false, target, port)
}

/// Whether `principal` may open a tunnel to `port` on `target`; `client_cert` says whether the
/// connection carried a verified TLS client certificate. Default deny.
pub fn decide_with_cert(
    policy: &Policy,
    principal: &str,
    client_cert: bool,
    target: &Target,
    port: u16,
) -> Decision {
    let mut unmet = None;
    for binding in &policy.bindings {
        if !binding.resource.covers(target)
            || !binding.members.iter().any(|m| is_member(m, principal))
        {
            continue;
        }
        match &binding.ports {
            Some(ports) if !ports.contains(&port) => {
                unmet = Some(format!("{} does not allow port {port}", binding.name));
            }
            _ if binding.require_client_cert && !client_cert => {
                unmet = Some(format!(
                    "{} requires a verified client certificate and none was presented",
                    binding.name
                ));
            }
            _ => {
                return Decision::Allow {
                    binding: binding.name.clone(),
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

    fn vm(project: &str, zone: &str, name: &str) -> Target {
        Target::Instance {
            project: project.into(),
            zone: zone.into(),
            instance: name.into(),
            interface: "nic0".into(),
        }
    }

    fn binding(name: &str, member: &str, resource: &str, ports: Option<Vec<u16>>) -> Binding {
        Binding {
            name: name.into(),
            members: vec![member.into()],
            resource: Resource::parse(resource).unwrap(),
            ports,
            require_client_cert: false,
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
            ],
        };
        let allow = |b: &str| Decision::Allow { binding: b.into() };
        let cases: Vec<(&str, Target, u16, Result<Decision, &str>)> = vec![
            ("user:a@x.io", vm("p", "z", "vm-1"), 22, Ok(allow("b0"))),
            (
                "user:a@x.io",
                vm("p", "z", "vm-1"),
                23,
                Err("does not allow port 23"),
            ),
            ("user:a@x.io", vm("q", "z", "vm-1"), 22, Err("no binding")),
            ("user:b@x.io", vm("p", "z", "vm-9"), 5432, Ok(allow("b1"))),
            ("user:b@x.io", vm("p", "y", "vm-9"), 22, Err("no binding")),
            (
                "serviceAccount:ci@p.iam",
                vm("p", "z", "vm-2"),
                3389,
                Ok(allow("b2")),
            ),
            (
                "serviceAccount:ci@p.iam",
                vm("p", "z", "vm-3"),
                22,
                Err("no binding"),
            ),
            (
                "user:eve@corp.io",
                vm("q", "z", "vm-1"),
                22,
                Ok(allow("b3")),
            ),
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
        ];
        for (principal, target, port, expected) in cases {
            let got = decide(&policy, principal, &target, port);
            match expected {
                Ok(d) => assert_eq!(got, d, "{principal} {target:?} {port}"),
                Err(text) => match got {
                    Decision::Deny { reason } => assert!(reason.contains(text), "{reason}"),
                    other => panic!("{principal} {port}: expected deny, got {other:?}"),
                },
            }
        }
    }

    #[test]
    fn empty_policy_denies() {
        assert!(matches!(
            decide(&Policy::default(), "user:a@x.io", &vm("p", "z", "v"), 22),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn client_certificate_condition() {
        let mut device = binding("dev", "user:a@x.io", "projects/p", Some(vec![22]));
        device.require_client_cert = true;
        let policy = Policy {
            bindings: vec![device],
        };
        let target = vm("p", "z", "vm-1");
        let allow = Decision::Allow {
            binding: "dev".into(),
        };
        assert_eq!(
            decide_with_cert(&policy, "user:a@x.io", true, &target, 22),
            allow
        );
        for (cert, port, want) in [
            (false, 22, "dev requires a verified client certificate"),
            (true, 23, "dev does not allow port 23"),
        ] {
            match decide_with_cert(&policy, "user:a@x.io", cert, &target, port) {
                Decision::Deny { reason } => assert!(reason.contains(want), "{reason}"),
                other => panic!("expected deny, got {other:?}"),
            }
        }
        // Without certificate information, the condition is never met.
        assert!(matches!(
            decide(&policy, "user:a@x.io", &target, 22),
            Decision::Deny { .. }
        ));
        assert!(matches!(
            decide_with_cert(&policy, "user:b@x.io", true, &target, 22),
            Decision::Deny { .. }
        ));
    }
}
