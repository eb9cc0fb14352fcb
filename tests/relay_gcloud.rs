//! Unmodified gcloud through iap-relay with real identities: a JWT from a test issuer and a
//! Google-style access token checked at a token-info endpoint; instance mode and host mode
//! (`--region --network --dest-group`); stdin mode and gcloud's own `--local-host-port` mode.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;
mod idp;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use idp::{AUDIENCE, ISSUER, claims, jwt, now, signer, tokeninfo_endpoint, tokeninfo_section};

struct Rig {
    relay: Relay,
    sshd: Sshd,
    jwt_file: std::path::PathBuf,
    tokeninfo_file: std::path::PathBuf,
    _keys: tempfile::TempDir,
}

fn rig() -> Option<Rig> {
    if !require_openssh() || !require_tool("gcloud") {
        return None;
    }
    let keys = tempfile::tempdir().unwrap();
    let signer = signer("k1");
    let jwks = keys.path().join("jwks.json");
    std::fs::write(&jwks, &signer.jwks).unwrap();
    let sshd = spawn_sshd();
    let t = now();
    let token = jwt(
        &signer,
        "k1",
        claims("dev@example.com", ISSUER, AUDIENCE, t + 3600, t - 10),
    );
    let secrets = sshd.subdir("secrets");
    let jwt_file = write_token_file(&secrets, &token);
    let tokeninfo_file = write_token_file(&secrets, "ya29.tokeninfo-test-token");
    let port = sshd.port;
    let relay = spawn_relay(&RelaySpec {
        jwt: vec![JwtIssuer::with_file(ISSUER, AUDIENCE, &jwks).domains(&["example.com"])],
        tokeninfo: Some(tokeninfo_section(&tokeninfo_endpoint(
            "ya29.tokeninfo-test-token",
        ))),
        dest_groups: vec![DestGroup {
            project: PROJECT.into(),
            region: "test-region".into(),
            name: "loopback".into(),
            cidrs: vec!["127.0.0.0/8".into()],
            fqdns: vec![],
        }],
        bindings: vec![
            Binding::new(
                &["user:dev@example.com", "user:tina@example.com"],
                &format!("projects/{PROJECT}/zones/{ZONE}"),
            )
            .ports(&[port]),
            Binding::new(
                &["user:dev@example.com"],
                &format!("projects/{PROJECT}/iap_tunnel/locations/test-region/destGroups/loopback"),
            )
            .ports(&[port]),
        ],
        instances: vec![Instance::standard()],
        ..RelaySpec::default()
    });
    Some(Rig {
        relay,
        sshd,
        jwt_file,
        tokeninfo_file,
        _keys: keys,
    })
}

/// gcloud's environment: its own configuration folder, the token file, the test CA.
fn gcloud_env(cmd: &mut Command, relay: &Relay, token_file: &Path) {
    cmd.env("CLOUDSDK_CORE_PROJECT", PROJECT)
        .env("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", token_file)
        .env("CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE", relay.ca_pem())
        .env("CLOUDSDK_CORE_DISABLE_USAGE_REPORTING", "true")
        .env("CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK", "true");
}

fn gcloud_stdin_ssh(rig: &Rig, token_file: &Path, target_args: &str) -> Command {
    let gcloud = tool_path("gcloud").unwrap();
    let pc = format!(
        "{} compute start-iap-tunnel {target_args} --project {PROJECT} --listen-on-stdin --iap-tunnel-url-override={} --verbosity=warning",
        proxy_quote_path(&gcloud),
        proxy_quote(&rig.relay.url),
    );
    let mut cmd = ssh_command("ssh", &rig.sshd);
    gcloud_env(&mut cmd, &rig.relay, token_file);
    cmd.args(ssh_base_args(&rig.sshd, &pc)).arg(INSTANCE);
    cmd
}

fn assert_echo(mut cmd: Command, word: &str, rig: &Rig) {
    cmd.arg(format!("echo {word}"));
    let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT);
    assert!(
        out.status.success(),
        "{}\n--- relay ---\n{}",
        describe(&out),
        rig.relay.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{word}\n"));
}

#[test]
fn gcloud_with_a_jwt_identity_in_instance_and_host_mode() {
    let Some(rig) = rig() else { return };
    // Instance mode.
    assert_echo(
        gcloud_stdin_ssh(&rig, &rig.jwt_file, &format!("{INSTANCE} %p --zone {ZONE}")),
        "instance-mode",
        &rig,
    );
    // Host mode with a destination group: gcloud sends region, network, host and group.
    let cmd = gcloud_stdin_ssh(
        &rig,
        &rig.jwt_file,
        "127.0.0.1 %p --region test-region --network default --dest-group loopback",
    );
    assert_echo(cmd, "host-mode", &rig);
    let log = rig.relay.log();
    assert!(log.contains("principal=user:dev@example.com"), "{log}");
    assert!(log.contains("127.0.0.1 port"), "{log}");
}

#[test]
fn gcloud_local_port_mode_with_a_tokeninfo_identity() {
    let Some(rig) = rig() else { return };
    let gcloud = tool_path("gcloud").unwrap();
    let mut cmd = Command::new(gcloud);
    gcloud_env(&mut cmd, &rig.relay, &rig.tokeninfo_file);
    cmd.env("CLOUDSDK_CONFIG", rig.sshd.subdir("gcloud-config"))
        .args([
            "compute",
            "start-iap-tunnel",
            INSTANCE,
            &rig.sshd.port.to_string(),
            "--zone",
            ZONE,
            "--project",
            PROJECT,
        ])
        .arg("--local-host-port=127.0.0.1:0")
        .arg(format!("--iap-tunnel-url-override={}", rig.relay.url))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::new(cmd.spawn().unwrap());
    // gcloud prints "Picking local unused port [N]." on stderr before its connection check.
    // and "Listening on port [N]." on stdout once it serves.
    let stderr = child.child_mut().stderr.take().unwrap();
    let stdout = child.child_mut().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx2.send(line).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut port = None;
    let mut seen = Vec::new();
    while port.is_none()
        || !seen
            .iter()
            .any(|l: &String| l.contains("Listening on port"))
    {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("gcloud said: {seen:?}\n{}", rig.relay.log()));
        if let Some(p) = line
            .split('[')
            .nth(1)
            .and_then(|r| r.split(']').next())
            .and_then(|n| n.parse::<u16>().ok())
            && line.contains("Picking local unused port")
        {
            port = Some(p);
        }
        seen.push(line);
        assert!(started.elapsed() < Duration::from_secs(60), "{seen:?}");
    }
    let port = port.expect("gcloud named its port");
    let mut ssh = ssh_command("ssh", &rig.sshd);
    let mut args = ssh_base_args(&rig.sshd, "");
    // Point ssh at gcloud's local port instead of sshd's.
    for a in args.iter_mut() {
        if a.starts_with("Port=") {
            *a = format!("Port={port}");
        }
    }
    ssh.args(args).arg("127.0.0.1").arg("echo local-port-mode");
    let out = run_with_timeout(&mut ssh, COMMAND_TIMEOUT);
    assert!(
        out.status.success(),
        "{}\n{seen:?}\n{}",
        describe(&out),
        rig.relay.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "local-port-mode\n");
    let log = rig.relay.log();
    // The connection check and the ssh connection: two sessions by the token-info identity.
    assert!(
        log.matches("principal=user:tina@example.com").count() >= 2,
        "{log}"
    );
}
