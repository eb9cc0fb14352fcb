//! `iap-relay` as an operator meets it: `--version`, `-h` and usage errors; `--check-config`
//! listing every problem without side effects; the plaintext warning; `iap-relay init` giving a
//! folder that runs as is and that the real `iap-ssh` tunnels through; and what both programs
//! say about a CA certificate used as the relay's own (the `openssl req -x509` one-liner).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

const QUICK: Duration = Duration::from_secs(30);

fn relay_cmd(state: &Path) -> Command {
    let mut cmd = Command::new(iap_relay_bin());
    hermetic_env(&mut cmd, state);
    cmd.current_dir(state);
    cmd
}

fn run(state: &Path, args: &[&str]) -> Output {
    run_with_timeout(relay_cmd(state).args(args), QUICK)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn version_help_and_usage_errors() {
    let state = tempfile::tempdir().unwrap();
    let s = state.path();
    for flag in ["-V", "--version"] {
        let out = run(s, &[flag]);
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(
            stdout(&out),
            format!("iap-relay {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
    for flag in ["-h", "--help"] {
        let out = run(s, &[flag]);
        assert!(out.status.success(), "{}", describe(&out));
        let text = stdout(&out);
        assert!(text.starts_with("Usage: iap-relay "), "{text}");
        assert!(
            text.contains("--check-config") && text.contains("init"),
            "{text}"
        );
    }
    let out = run(s, &["init", "-h"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("--name"), "{}", describe(&out));

    // Usage errors: exit status 2, one line naming the problem.
    for (args, says) in [
        (&[][..], "--config FILE is required"),
        (&["--bogus"][..], "Unrecognized argument: --bogus"),
        (
            &["--config", "x.toml", "--online"][..],
            "--online goes with --check-config",
        ),
        (
            &["--config", "x.toml", "init", "d"][..],
            "init takes no --config",
        ),
        (
            &["init", "d", "--listen", "nowhere"][..],
            "--listen must be an address and port",
        ),
    ] {
        let out = run(s, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        let err = stderr_of(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("iap-relay: ") && err.contains(says),
            "{args:?}: {err}"
        );
    }
    // -vv is two -v, not a usage error.
    let missing = s.join("missing.toml");
    let out = run(
        s,
        &[
            "-vv",
            "--config",
            missing.to_str().unwrap(),
            "--check-config",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr_of(&out).contains("cannot be read"),
        "{}",
        describe(&out)
    );
}

#[test]
fn check_config_lists_every_problem_offline_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A JWKS URL where nothing listens: fine offline, a problem with --online.
    let closed = free_port();
    let config = d.join("relay.toml");
    fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"
audit_log = "no-such-folder/audit.jsonl"
[tls]
cert = "missing-cert.pem"
key = "missing-key.pem"
[[jwt]]
issuer = "https://idp.example"
audience = "relay"
jwks_url = "http://127.0.0.1:{closed}/jwks.json"
[[bindings]]
role = "roles/viewer"
members = ["alice"]
resource = "projects/p"
[[bindings]]
role = "roles/iap.tunnelResourceAccessor"
members = ["user:bob@example.com"]
resource = "folders/p"
"#
        ),
    )
    .unwrap();
    let out = run(d, &["--config", config.to_str().unwrap(), "--check-config"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = stderr_of(&out);
    let prefix = format!("iap-relay: relay config {}: ", config.display());
    assert!(err.lines().all(|l| l.starts_with(&prefix)), "{err}");
    for says in [
        "bindings[0]: role \"roles/viewer\" grants no tunnels",
        "bindings[0]: member \"alice\" must start with user:",
        "bindings[1]:",
        "[tls]: reading certificate",
        "no-such-folder does not exist",
    ] {
        assert!(err.contains(says), "{says:?} missing from:\n{err}");
    }
    assert_eq!(err.lines().count(), 5, "{err}");
    assert!(!err.contains("jwks"), "offline check fetched: {err}");
    let out = run(
        d,
        &[
            "--config",
            config.to_str().unwrap(),
            "--check-config",
            "--online",
        ],
    );
    assert!(
        stderr_of(&out).contains("https://idp.example"),
        "{}",
        describe(&out)
    );

    // A good configuration: valid, and its audit log is not created by the check.
    let pki = test_pki();
    let good = RelaySpec::default().audit_log("audit.jsonl");
    let (cert, key) = (
        pki.cert_pem.to_str().unwrap(),
        pki.key_pem.to_str().unwrap(),
    );
    fs::write(&config, good.to_toml(Some((cert, key)))).unwrap();
    let out = run(d, &["--config", config.to_str().unwrap(), "--check-config"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        stdout(&out),
        format!("iap-relay: {} is valid\n", config.display())
    );
    assert!(
        !d.join("audit.jsonl").exists(),
        "--check-config created the audit log"
    );
}

#[test]
fn plaintext_beyond_loopback_without_trusted_proxies_is_warned() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("relay.toml");
    let check = |listen: &str, trusted_proxies: &[&str]| {
        let spec = RelaySpec {
            listen: listen.parse().unwrap(),
            trusted_proxies: trusted_proxies.iter().map(|p| (*p).to_owned()).collect(),
            ..RelaySpec::default()
        };
        fs::write(&config, spec.to_toml(None)).unwrap();
        let out = run(d, &["--config", config.to_str().unwrap(), "--check-config"]);
        assert!(out.status.success(), "{}", describe(&out));
        stderr_of(&out)
    };
    let warned = check("0.0.0.0:8080", &[]);
    assert_eq!(warned.lines().count(), 1, "{warned}");
    assert!(
        warned.contains("warning: serving plaintext ws:// on 0.0.0.0:8080"),
        "{warned}"
    );
    assert_eq!(check("127.0.0.1:8080", &[]), "");
    assert_eq!(check("0.0.0.0:8080", &["10.0.0.0/8"]), "");
}

/// Starts `iap-relay --config CONFIG`; returns it and its `wss://` URL.
fn start_relay(state: &Path, config: &Path) -> (ChildGuard, String, PathBuf) {
    let log = state.join("relay.stderr.log");
    let mut cmd = relay_cmd(state);
    cmd.arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log).unwrap());
    let mut child = ChildGuard::new(cmd.spawn().unwrap());
    let out = child.child_mut().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines.by_ref() {}
    });
    let line = rx
        .recv_timeout(READY_TIMEOUT)
        .unwrap_or_else(|_| panic!("relay not ready:\n{}", read_log(&log)));
    let url = line
        .strip_prefix("iap-relay listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    (child, url, log)
}

#[test]
fn init_writes_a_folder_that_runs_as_is_and_iap_ssh_tunnels_through_it() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("relay");
    let out = run(
        tmp.path(),
        &["init", dir.to_str().unwrap(), "--listen", "127.0.0.1:0"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    assert!(text.contains("start:   iap-relay --config "), "{text}");
    assert!(
        text.contains("connect: iap-ssh --endpoint wss://127.0.0.1:0 "),
        "{text}"
    );
    let token = fs::read_to_string(dir.join("token")).unwrap();
    assert!(
        !text.contains(token.trim()),
        "the token file's token was printed"
    );
    for private in ["ca-key.pem", "server-key.pem", "token"] {
        let mode = fs::metadata(dir.join(private))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{private}");
    }
    // A second init refuses, and changes nothing.
    let before = fs::read(dir.join("relay.toml")).unwrap();
    let again = run(tmp.path(), &["init", dir.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "{}", describe(&again));
    assert!(
        stderr_of(&again).contains("already exist"),
        "{}",
        describe(&again)
    );
    assert_eq!(fs::read(dir.join("relay.toml")).unwrap(), before);

    // The binding allows port 22; the test's backend listens elsewhere.
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = backend.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in backend.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = s;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    let config = dir.join("relay.toml");
    let toml = fs::read_to_string(&config).unwrap();
    assert!(toml.contains("ports = [22]"), "{toml}");
    fs::write(
        &config,
        toml.replace("ports = [22]", &format!("ports = [{port}]")),
    )
    .unwrap();

    let (_relay, url, log) = start_relay(tmp.path(), &config);
    assert!(url.starts_with("wss://127.0.0.1:"), "{url}");
    // The protocol has no half-close: stdin stays open until the whole echo is back, or the
    // tail of the echo could still be on its way when iap-ssh ends the session at EOF.
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut cmd = iap_ssh(tmp.path())
        .endpoint(&url)
        .ca_file(&dir.join("ca.pem"))
        .token_file(&dir.join("token"))
        .command();
    let stderr_path = tmp.path().join("iap-ssh.stderr");
    cmd.arg("vm-1.zone-a.my-project")
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_path).unwrap());
    let mut child = ChildGuard::new(cmd.spawn().unwrap());
    let mut stdin = child.child_mut().stdin.take().unwrap();
    let mut child_stdout = child.child_mut().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let len = data.len();
    std::thread::spawn(move || {
        let mut back = vec![0u8; len];
        let _ = tx.send(child_stdout.read_exact(&mut back).map(|()| back));
    });
    stdin.write_all(&data).unwrap();
    let back = rx
        .recv_timeout(TRANSFER_TIMEOUT)
        .unwrap_or_else(|_| {
            panic!(
                "no echo in time\n{}\n--- relay ---\n{}",
                read_log(&stderr_path),
                read_log(&log)
            )
        })
        .unwrap_or_else(|e| panic!("reading the echo: {e}\n{}", read_log(&stderr_path)));
    assert!(back == data, "echo differs");
    drop(stdin);
    let deadline = std::time::Instant::now() + QUICK;
    let status = loop {
        if let Some(status) = child.try_wait() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "iap-ssh did not exit after EOF"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}\n{}", read_log(&stderr_path));
    let audit = read_log(&dir.join("audit.jsonl"));
    assert!(
        audit.contains("\"principal\":\"user:admin@localhost\""),
        "{audit}"
    );
}

/// What `openssl req -x509` makes: a self-signed certificate with CA:TRUE.
fn openssl_self_signed(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    if !require_tool("openssl") {
        return None;
    }
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = run_with_timeout(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "30"])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        QUICK,
    );
    assert!(out.status.success(), "{}", describe(&out));
    Some((cert, key))
}

#[test]
fn a_ca_certificate_as_the_relays_own_is_refused_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((cert, key)) = openssl_self_signed(tmp.path()) else {
        return;
    };
    // The relay refuses it at load, and --check-config says the same.
    let config = tmp.path().join("relay.toml");
    fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
    )
    .unwrap();
    for extra in [&[][..], &["--check-config"][..]] {
        let mut args = vec!["--config", config.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = run(tmp.path(), &args);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let err = stderr_of(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("CaUsedAsEndEntity")
                && err.contains("use `iap-relay init` or a CA-signed leaf certificate"),
            "{err}"
        );
    }

    // A server that does use it (rustls serves it; only clients check), trusted by iap-ssh:
    // the client's one line says what to do.
    let chain: Vec<_> = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let key_der = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::PrivateKeyDer::from_pem_file(&key).unwrap()
    };
    let server = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::sync::Arc::new(server);
    std::thread::spawn(move || {
        for mut tcp in listener.incoming().flatten() {
            let Ok(mut conn) = rustls::ServerConnection::new(server.clone()) else {
                return;
            };
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = conn.complete_io(&mut tcp);
        }
    });
    let token = write_token_file(tmp.path(), "any-token");
    let out = run_with_timeout(
        iap_ssh(tmp.path())
            .endpoint(&format!("wss://127.0.0.1:{port}"))
            .ca_file(&cert)
            .token_file(&token)
            .args(["vm-1.zone-a.my-project", "22"]),
        QUICK,
    );
    assert!(!out.status.success(), "{}", describe(&out));
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("iap-ssh: ")
            && err.contains("use `iap-relay init` or a CA-signed leaf certificate"),
        "{err}"
    );
}
