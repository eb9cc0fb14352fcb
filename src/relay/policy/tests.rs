//! Unit tests of the policy: the decision table, destination groups and expiry, resource
//! names, default deny and the client-certificate condition.

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
