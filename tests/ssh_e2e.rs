//! Real OpenSSH (ssh, scp, sftp, sshd) through `iap-ssh` as the ProxyCommand and `iap-relay` as
//! the relay, all on 127.0.0.1. Skips when OpenSSH is missing, except under CI=true.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Output, Stdio};

use common::*;

const ALICE: &str = "user:alice@example.com";
const MALLORY: &str = "user:mallory@example.com";
const CAROL: &str = "user:carol@example.com";

/// A relay that knows alice (bound on the project), mallory (no binding) and carol (bound only to
/// port 22), and an sshd reached as `vm-1` in `test-proj/test-zone-a`.
struct Setup {
    relay: Relay,
    sshd: Sshd,
    /// alice's token.
    token_file: PathBuf,
    /// mallory's token.
    unbound_token_file: PathBuf,
    /// carol's token.
    port22_token_file: PathBuf,
    /// The ProxyCommand for alice.
    pc: String,
}

fn setup() -> Option<Setup> {
    if !require_openssh() {
        return None;
    }
    let (alice, mallory, carol) = (random_hex(24), random_hex(24), random_hex(24));
    let mut spec = RelaySpec::standard(ALICE, &alice)
        .with_token(MALLORY, &mallory)
        .with_token(CAROL, &carol);
    spec.bindings.push(
        Binding::new(
            &[CAROL],
            &format!("projects/{PROJECT}/zones/{ZONE}/instances/{INSTANCE}"),
        )
        .ports(&[22]),
    );
    let relay = spawn_relay(&spec);
    let sshd = spawn_sshd();
    let secrets = sshd.subdir("secrets");
    let token_file = write_token_file(&secrets, &alice);
    let unbound_token_file = write_token_file(&secrets, &mallory);
    let port22_token_file = write_token_file(&secrets, &carol);
    let pc = proxy_command(&relay, &token_file, "");
    Some(Setup {
        relay,
        sshd,
        token_file,
        unbound_token_file,
        port22_token_file,
        pc,
    })
}

impl Setup {
    fn ssh(&self, pc: &str, host: &str, remote_cmd: &str) -> Output {
        ssh_run(&self.sshd, pc, host, remote_cmd, COMMAND_TIMEOUT)
    }

    /// Context for assertion messages: both server logs.
    fn logs(&self) -> String {
        format!(
            "--- iap-relay log ---\n{}\n--- sshd log ---\n{}",
            self.relay.log(),
            self.sshd.log()
        )
    }

    /// Runs iap-ssh directly (no ssh) with stdin held open, for cases where it must fail fast.
    fn iap_ssh_direct(&self, args: &[&str]) -> Output {
        run_with_io(
            iap_ssh(self.sshd.dir.path()).args(args),
            Stdio::piped(),
            None,
            COMMAND_TIMEOUT,
        )
    }

    fn endpoint_args(&self, token_file: &std::path::Path) -> Vec<String> {
        vec![
            "--endpoint".into(),
            self.relay.url.clone(),
            "--ca-file".into(),
            self.relay.ca_pem().display().to_string(),
            "--access-token-file".into(),
            token_file.display().to_string(),
        ]
    }
}

/// The harness itself: plain ssh straight to the test sshd, no tunnel. When this fails, the
/// problem is the machine (sshd, keys), not iap-ssh.
#[test]
fn harness_plain_ssh_reaches_test_sshd() {
    if !require_openssh() {
        return;
    }
    let sshd = spawn_sshd();
    let out = ssh_run(&sshd, "", "127.0.0.1", "echo hello", COMMAND_TIMEOUT);
    assert!(
        out.status.success(),
        "{}\n--- sshd log ---\n{}",
        describe(&out),
        sshd.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");

    // The same through a plain TCP ProxyCommand and the dotted instance name: checks the
    // known_hosts pattern and ProxyCommand quoting without iap-ssh in the way.
    if require_tool("socat") {
        let socat = tool_path("socat").unwrap();
        let pc = format!("{} - TCP:127.0.0.1:%p", proxy_quote_path(&socat));
        let out = ssh_run(&sshd, &pc, &dotted_host(), "echo proxied", COMMAND_TIMEOUT);
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "proxied\n");
    }
}

#[test]
fn ssh_runs_command_and_propagates_exit_status() {
    let Some(s) = setup() else { return };
    let host = dotted_host();

    let out = s.ssh(&s.pc, &host, "echo hello");
    assert!(out.status.success(), "{}\n{}", describe(&out), s.logs());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello\n",
        "{}",
        describe(&out)
    );
    // iap-ssh is quiet by default: ssh shows the ProxyCommand's stderr to the user.
    assert!(
        out.stderr.is_empty(),
        "expected no diagnostics on success\n{}",
        describe(&out)
    );

    let out = s.ssh(&s.pc, &host, "exit 7");
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}\n{}",
        describe(&out),
        s.logs()
    );

    // stdin reaches the remote command and its stdout comes back unchanged.
    let input = s.sshd.dir.path().join("stdin.txt");
    fs::write(&input, "line one\nline two\n").unwrap();
    let mut cmd = ssh_command("ssh", &s.sshd);
    cmd.args(ssh_base_args(&s.sshd, &s.pc))
        .arg(&host)
        .arg("tac");
    let out = run_with_io(
        &mut cmd,
        Stdio::from(fs::File::open(&input).unwrap()),
        None,
        COMMAND_TIMEOUT,
    );
    assert!(out.status.success(), "{}\n{}", describe(&out), s.logs());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "line two\nline one\n");
}

/// Every HOST form of the contract: `.iap` suffix, bare name with --zone/--project, bare name
/// (with or without `.iap`) with CLOUDSDK_COMPUTE_ZONE/CLOUDSDK_CORE_PROJECT, INSTANCE.ZONE with
/// --project; no zone at all; and zone and project from the active gcloud configuration.
#[test]
fn ssh_host_name_forms() {
    let Some(s) = setup() else { return };

    let out = s.ssh(&s.pc, &format!("{}.iap", dotted_host()), "echo suffix");
    assert!(out.status.success(), "{}\n{}", describe(&out), s.logs());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "suffix\n");

    let pc = proxy_command(
        &s.relay,
        &s.token_file,
        &format!("--project {PROJECT} --zone {ZONE}"),
    );
    let out = s.ssh(&pc, INSTANCE, "echo flags");
    assert!(out.status.success(), "{}\n{}", describe(&out), s.logs());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "flags\n");

    let pc = proxy_command(&s.relay, &s.token_file, &format!("--project {PROJECT}"));
    let out = s.ssh(&pc, &format!("{INSTANCE}.{ZONE}"), "echo zone-in-host");
    assert!(out.status.success(), "{}\n{}", describe(&out), s.logs());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "zone-in-host\n");

    for host in [INSTANCE.to_owned(), format!("{INSTANCE}.iap")] {
        let mut cmd = ssh_command("ssh", &s.sshd);
        cmd.env("CLOUDSDK_CORE_PROJECT", PROJECT)
            .env("CLOUDSDK_COMPUTE_ZONE", ZONE)
            .args(ssh_base_args(&s.sshd, &s.pc))
            .arg(&host)
            .arg("echo env");
        let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT);
        assert!(
            out.status.success(),
            "{host}: {}\n{}",
            describe(&out),
            s.logs()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "env\n");
    }

    // Missing zone and project is a usage error that says where it looked.
    let out = s.ssh(&s.pc, INSTANCE, "true");
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr_of(&out).contains("CLOUDSDK_COMPUTE_ZONE") || stderr_of(&out).contains("--zone"),
        "the error should say where the zone is looked for\n{}",
        describe(&out)
    );

    // The active gcloud configuration ($CLOUDSDK_CONFIG, which hermetic_env points at an empty
    // folder of this test) supplies them, as `gcloud config set` would have written them.
    let gcloud = s.sshd.dir.path().join("gcloud-config");
    fs::create_dir_all(gcloud.join("configurations")).unwrap();
    fs::write(gcloud.join("active_config"), "e2e").unwrap();
    fs::write(
        gcloud.join("configurations").join("config_e2e"),
        format!("[core]\nproject = {PROJECT}\n\n[compute]\nzone = {ZONE}\n"),
    )
    .unwrap();
    let out = s.ssh(&s.pc, &format!("{INSTANCE}.iap"), "echo gcloud-config");
    assert!(out.status.success(), "{}\n{}", describe(&out), s.logs());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "gcloud-config\n");
}

#[test]
fn scp_64mib_upload_and_download() {
    let Some(s) = setup() else { return };
    let local = s.sshd.subdir("local");
    let remote = s.sshd.subdir("remote");
    let src = random_file(&local, "up.bin", 64 << 20);
    let want = sha256_file(&src);
    let host = dotted_host();

    let remote_file = remote.join("up.bin");
    let mut cmd = ssh_command("scp", &s.sshd);
    cmd.arg("-q")
        .args(ssh_base_args(&s.sshd, &s.pc))
        .arg(&src)
        .arg(format!("{host}:{}", remote_file.display()));
    let out = run_with_timeout(&mut cmd, TRANSFER_TIMEOUT);
    assert!(out.status.success(), "{}\n{}", describe(&out), s.logs());
    assert_eq!(sha256_file(&remote_file), want, "upload corrupted");

    let back = local.join("down.bin");
    let mut cmd = ssh_command("scp", &s.sshd);
    cmd.arg("-q")
        .args(ssh_base_args(&s.sshd, &s.pc))
        .arg(format!("{host}:{}", remote_file.display()))
        .arg(&back);
    let out = run_with_timeout(&mut cmd, TRANSFER_TIMEOUT);
    assert!(out.status.success(), "{}\n{}", describe(&out), s.logs());
    assert_eq!(sha256_file(&back), want, "download corrupted");
}

#[test]
fn sftp_batch_put_get_ls() {
    let Some(s) = setup() else { return };
    let local = s.sshd.subdir("local");
    let remote = s.sshd.subdir("remote");
    let size = 8 << 20;
    let src = random_file(&local, "sftp-up.bin", size);
    let back = local.join("sftp-down.bin");
    let batch = local.join("batch.txt");
    fs::write(
        &batch,
        format!(
            "put {src} {remote}/sftp-up.bin\nget {remote}/sftp-up.bin {back}\nls -l {remote}\n",
            src = src.display(),
            remote = remote.display(),
            back = back.display()
        ),
    )
    .unwrap();
    let mut cmd = ssh_command("sftp", &s.sshd);
    cmd.arg("-b")
        .arg(&batch)
        .args(ssh_base_args(&s.sshd, &s.pc))
        .arg(dotted_host());
    let out = run_with_timeout(&mut cmd, TRANSFER_TIMEOUT);
    assert!(out.status.success(), "{}\n{}", describe(&out), s.logs());
    let listing = String::from_utf8_lossy(&out.stdout);
    let line = listing
        .lines()
        .find(|l| l.contains("sftp-up.bin") && !l.starts_with("sftp>"))
        .unwrap_or_else(|| panic!("ls output lacks the file\n{}", describe(&out)));
    assert!(
        line.split_whitespace().any(|w| w == size.to_string()),
        "ls line {line:?} lacks size {size}"
    );
    let want = sha256_file(&src);
    assert_eq!(
        sha256_file(&remote.join("sftp-up.bin")),
        want,
        "put corrupted"
    );
    assert_eq!(sha256_file(&back), want, "get corrupted");
}

/// The shipped ssh_config.example, with its self-hosted-relay line and its ControlMaster lines
/// switched on and the placeholders filled in, works as is; the second ssh rides the master.
#[test]
fn ssh_config_example_works() {
    let Some(s) = setup() else { return };
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ssh_config.example");
    let text = fs::read_to_string(&example).expect("reading ssh_config.example");
    let cm_dir = s.sshd.subdir("cm");
    let _masters = ControlMasters {
        dir: cm_dir.clone(),
    };

    fn replaced(text: String, from: &str, to: &str) -> String {
        assert!(
            text.contains(from),
            "ssh_config.example no longer contains {from:?}; update this test with it"
        );
        text.replacen(from, to, 1)
    }
    let mut cfg = replaced(text, "    ProxyCommand iap-ssh %h %p\n", "");
    cfg = replaced(
        cfg,
        "#ProxyCommand iap-ssh --endpoint wss://relay.example.com --ca-file ~/.config/iap-ssh/relay-ca.pem %h %p",
        &format!(
            "ProxyCommand {} --endpoint {} --ca-file {} %h %p",
            proxy_quote_path(&iap_ssh_bin()),
            proxy_quote(&s.relay.url),
            proxy_quote_path(s.relay.ca_pem())
        ),
    );
    cfg = replaced(cfg, "#ControlMaster auto", "ControlMaster auto");
    cfg = replaced(
        cfg,
        "#ControlPath ~/.ssh/cm-%C",
        &format!("ControlPath {}/cm-%C", cm_dir.display()),
    );
    cfg = replaced(cfg, "#ControlPersist 10m", "ControlPersist 10m");
    let cfg_path = s.sshd.dir.path().join("ssh_config");
    fs::write(&cfg_path, &cfg).unwrap();

    let host = format!("{}.iap", dotted_host());
    let run = |args: &[&str]| {
        let mut cmd = ssh_command("ssh", &s.sshd);
        // The token comes from the environment variable that gcloud also reads.
        cmd.env("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", &s.token_file)
            .arg("-F")
            .arg(&cfg_path)
            .arg("-p")
            .arg(s.sshd.port.to_string())
            .arg("-i")
            .arg(&s.sshd.client_key)
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                s.sshd.known_hosts.display()
            ))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR"])
            .args(["-l", "root"])
            .args(args);
        run_with_timeout(&mut cmd, COMMAND_TIMEOUT)
    };

    let out = run(&[&host, "true"]);
    assert!(
        out.status.success(),
        "{}\n--- config ---\n{cfg}\n{}",
        describe(&out),
        s.logs()
    );
    let out = run(&["-O", "check", &host]);
    assert!(
        out.status.success(),
        "ControlPersist master not running after the first ssh\n{}",
        describe(&out)
    );
    let out = run(&[&host, "echo again"]);
    assert!(out.status.success(), "{}\n{}", describe(&out), s.logs());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "again\n");
    let out = run(&["-O", "exit", &host]);
    assert!(out.status.success(), "ssh -O exit: {}", describe(&out));
}

#[test]
fn unknown_token_is_rejected() {
    let Some(s) = setup() else { return };
    let bogus = write_token_file(&s.sshd.subdir("secrets"), &random_hex(24));
    let pc = proxy_command(&s.relay, &bogus, "");
    let out = s.ssh(&pc, &dotted_host(), "true");
    assert!(!out.status.success(), "ssh succeeded with a bogus token");
    let err = stderr_of(&out);
    assert!(
        err.contains("iap-ssh: ") && err.contains("401") && err.contains("credentials"),
        "stderr lacks iap-ssh's authentication message (HTTP 401, check the credentials)\n{}",
        describe(&out)
    );

    let mut args = s.endpoint_args(&bogus);
    args.extend([dotted_host(), s.sshd.port.to_string()]);
    let out = s.iap_ssh_direct(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let token = fs::read_to_string(&bogus).unwrap();
    assert!(
        !stderr_of(&out).contains(token.trim()),
        "the token leaked into stderr"
    );
    assert!(out.stdout.is_empty(), "stdout carries tunnel bytes only");
}

#[test]
fn principal_without_binding_is_not_authorized() {
    let Some(s) = setup() else { return };
    let pc = proxy_command(&s.relay, &s.unbound_token_file, "");
    let out = s.ssh(&pc, &dotted_host(), "true");
    assert!(!out.status.success(), "ssh succeeded without a binding");
    let err = stderr_of(&out);
    assert!(
        err.contains("not authorized") && err.contains(TUNNEL_ROLE),
        "stderr lacks the not-authorized message naming {TUNNEL_ROLE}\n{}",
        describe(&out)
    );

    let mut args = s.endpoint_args(&s.unbound_token_file);
    args.extend([dotted_host(), s.sshd.port.to_string()]);
    let out = s.iap_ssh_direct(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "stdout carries tunnel bytes only");
}

/// The exit codes of the contract for each relay refusal, plus usage errors.
#[test]
fn iap_ssh_exit_codes() {
    let Some(s) = setup() else { return };
    let port = s.sshd.port.to_string();
    let direct = |token: &PathBuf, host: &str, port: &str| {
        let mut args = s.endpoint_args(token);
        args.extend([host.to_owned(), port.to_owned()]);
        s.iap_ssh_direct(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // 4033 through a binding limited to port 22.
    let out = direct(&s.port22_token_file, &dotted_host(), &port);
    assert_eq!(
        out.status.code(),
        Some(4),
        "port-limited binding\n{}",
        describe(&out)
    );

    // 4047: no such instance.
    let out = direct(&s.token_file, &format!("vm-404.{ZONE}.{PROJECT}"), &port);
    assert_eq!(
        out.status.code(),
        Some(5),
        "unknown instance\n{}",
        describe(&out)
    );

    // 4003: the instance exists but nothing listens on the port.
    let closed = free_port().to_string();
    let out = direct(&s.token_file, &dotted_host(), &closed);
    assert_eq!(
        out.status.code(),
        Some(6),
        "closed port\n{}",
        describe(&out)
    );

    // Usage: no arguments; a port that is not a number.
    let out = s.iap_ssh_direct(&[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "no arguments\n{}",
        describe(&out)
    );
    let out = direct(&s.token_file, &dotted_host(), "ssh");
    assert_eq!(out.status.code(), Some(2), "bad port\n{}", describe(&out));
}
