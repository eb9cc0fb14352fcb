//! The example Kubernetes manifests in `deploy/k8s/` are not run here, but they must parse
//! (PyYAML, Debian's python3-yaml), hold what a fleet needs (a StatefulSet whose pod names are
//! the node ids, a headless Service that keeps draining pods resolvable, probes on /healthz
//! that do not kill a draining pod), carry a relay.toml that `iap-relay --check-config`
//! accepts, and embed exactly the HAProxy configuration that `tests/fleet.rs` runs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const K8S_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s");
const HAPROXY_CFG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy/haproxy.cfg");

/// Loads every YAML document of every file in deploy/k8s with PyYAML's `safe_load_all`,
/// as `(file name, document)`. None (after printing why) when no python3 has PyYAML outside CI.
fn manifests() -> Option<Vec<(String, Value)>> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        out = []\n\
        for path in sys.argv[1:]:\n\
        \x20   with open(path) as f:\n\
        \x20       for doc in yaml.safe_load_all(f):\n\
        \x20           if doc is not None:\n\
        \x20               out.append([path.rsplit('/', 1)[-1], doc])\n\
        print(json.dumps(out))\n";
    let mut files: Vec<PathBuf> = fs::read_dir(K8S_DIR)
        .expect("deploy/k8s")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/k8s");
    // Debian's interpreter first: a python3 earlier in PATH (pyenv) may lack PyYAML.
    let pythons = ["/usr/bin/python3", "python3"];
    let python = pythons.iter().filter_map(|p| tool_path(p)).find(|p| {
        run_with_timeout(
            Command::new(p).args(["-c", "import yaml"]),
            Duration::from_secs(30),
        )
        .status
        .success()
    });
    let Some(python) = python else {
        skip_or_fail("python3 with PyYAML (Debian package python3-yaml)");
        return None;
    };
    let out = run_with_timeout(
        Command::new(python).arg("-c").arg(SCRIPT).args(&files),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "a manifest does not parse\n{}",
        describe(&out)
    );
    let docs: Vec<(String, Value)> =
        serde_json::from_slice(&out.stdout).expect("PyYAML output as JSON");
    Some(docs)
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
}

fn containers(pod: &Value, key: &str) -> Vec<Value> {
    pod[key].as_array().cloned().unwrap_or_default()
}

#[test]
fn manifests_parse_and_hold_a_fleet() {
    let Some(docs) = manifests() else { return };
    for (file, d) in &docs {
        for field in ["apiVersion", "kind"] {
            assert!(d[field].is_string(), "{file}: a document without {field}");
        }
        assert!(
            d["metadata"]["name"].is_string(),
            "{file}: a {} without a name",
            d["kind"]
        );
    }

    // The relays: a StatefulSet (stable pod names = node ids) behind a headless Service that
    // publishes not-ready (draining) pods.
    let sts = find(&docs, "StatefulSet", "iap-relay");
    let service = find(
        &docs,
        "Service",
        sts["spec"]["serviceName"].as_str().unwrap_or(""),
    );
    assert_eq!(service["spec"]["clusterIP"], "None", "headless Service");
    assert_eq!(service["spec"]["publishNotReadyAddresses"], true);
    let pod = &sts["spec"]["template"]["spec"];
    let init = containers(pod, "initContainers");
    let sets_node_id = init.iter().any(|c| {
        c["env"].as_array().into_iter().flatten().any(|e| {
            e["name"] == "POD_NAME" && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        }) && c.to_string().contains("@NODE_ID@")
    });
    assert!(
        sets_node_id,
        "no init container writing the pod name into node_id"
    );
    let relay = containers(pod, "containers")
        .into_iter()
        .find(|c| c["name"] == "iap-relay")
        .expect("iap-relay container");
    assert_eq!(relay["readinessProbe"]["httpGet"]["path"], "/healthz");
    assert_ne!(
        relay["livenessProbe"]["httpGet"]["path"], "/healthz",
        "a liveness probe on /healthz restarts a draining relay"
    );
    assert!(relay["livenessProbe"].is_object(), "no liveness probe");

    // relay.toml: valid for iap-relay once the node id is in, and drain_secs shorter than the
    // grace period Kubernetes gives before SIGKILL.
    let template = find(&docs, "ConfigMap", "iap-relay-config")["data"]["relay.toml"]
        .as_str()
        .expect("relay.toml in the ConfigMap")
        .to_owned();
    assert!(template.contains("node_id = \"@NODE_ID@\""));
    let dir = tempfile::tempdir().expect("temp dir");
    let toml = template.replace("@NODE_ID@", "iap-relay-0").replace(
        "/var/log/iap-relay/audit.jsonl",
        &dir.path().join("audit.jsonl").display().to_string(),
    );
    // --check-config fetches JWKS URLs; the example's issuer does not exist, so its key set is
    // read from a file here instead.
    let jwks_url = "jwks_url = \"https://accounts.example.com/.well-known/jwks.json\"";
    assert!(
        toml.contains(jwks_url),
        "the [[jwt]] example changed: update this test"
    );
    // (The public key of RFC 7517's example A.1.)
    let jwks = r#"{"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "1",
        "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
        "y": "4Etl6SRW2YilurMzYGxd0dLrUPbY5IITkhW-mqTO8tw"}]}"#;
    fs::write(dir.path().join("jwks.json"), jwks).expect("jwks.json");
    let toml = toml.replace(jwks_url, "jwks_file = \"jwks.json\"");
    let config = dir.path().join("relay.toml");
    fs::write(&config, &toml).expect("writing relay.toml");
    let mut cmd = Command::new(iap_relay_bin());
    hermetic_env(&mut cmd, dir.path());
    let out = run_with_timeout(
        cmd.arg("--config").arg(&config).arg("--check-config"),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "relay.toml from the ConfigMap\n{}",
        describe(&out)
    );
    let drain: u64 = toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("drain_secs = "))
        .and_then(|v| v.trim().parse().ok())
        .expect("drain_secs in relay.toml");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > drain,
        "grace period {grace} s <= drain_secs {drain}"
    );

    // HAProxy: the shipped configuration, unchanged, with every variable it reads set.
    let cfg = find(&docs, "ConfigMap", "iap-relay-haproxy")["data"]["haproxy.cfg"]
        .as_str()
        .expect("haproxy.cfg in the ConfigMap");
    assert!(
        cfg == fs::read_to_string(HAPROXY_CFG).expect("haproxy.cfg"),
        "deploy/k8s/haproxy.yaml embeds a haproxy.cfg that differs from deploy/haproxy/haproxy.cfg: copy it in"
    );
    let deployment = find(&docs, "Deployment", "iap-relay-haproxy");
    let haproxy = containers(&deployment["spec"]["template"]["spec"], "containers")
        .into_iter()
        .next()
        .expect("haproxy container");
    let env: Vec<(String, String)> = haproxy["env"]
        .as_array()
        .expect("haproxy env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or("").to_owned(),
                e["value"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for var in variables(cfg) {
        assert!(
            env.iter().any(|(k, _)| *k == var) || var == "IAP_MAXCONN",
            "haproxy.cfg reads ${{{var}}} but the Deployment does not set it"
        );
    }
    let replicas = sts["spec"]["replicas"].as_u64().expect("replicas");
    for i in 0..replicas {
        let id = format!("iap-relay-{i}");
        assert!(
            env.iter().any(|(k, v)| k.ends_with("_ID") && *v == id),
            "HAProxy has no route for pod {id}"
        );
    }
    check_haproxy_accepts(&env);
}

/// `${NAME}` and `${NAME-default}` references in a HAProxy configuration (comments skipped).
fn variables(cfg: &str) -> Vec<String> {
    let mut vars = Vec::new();
    for line in cfg.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        for part in line.split("${").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !vars.contains(&name) {
                vars.push(name);
            }
        }
    }
    vars
}

/// `haproxy -c` on the shipped configuration with the Deployment's environment (the TLS file
/// replaced by a test one). Skipped when haproxy is missing outside CI.
fn check_haproxy_accepts(env: &[(String, String)]) {
    if !require_tool("haproxy") {
        return;
    }
    let pki = test_pki();
    let pem = pki.dir.path().join("haproxy.pem");
    let mut combined = fs::read_to_string(&pki.cert_pem).expect("cert");
    combined.push_str(&fs::read_to_string(&pki.key_pem).expect("key"));
    fs::write(&pem, combined).expect("pem");
    let mut cmd = Command::new(tool_path("haproxy").expect("haproxy"));
    cmd.args(["-c", "-f", HAPROXY_CFG]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // `-c` binds nothing, so the Deployment's IAP_BIND is kept.
    cmd.env("IAP_TLS_PEM", &pem).current_dir(Path::new(K8S_DIR));
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "haproxy -c with the Deployment's environment\n{}",
        describe(&out)
    );
}
