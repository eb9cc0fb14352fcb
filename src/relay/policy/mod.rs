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
mod tests;
