//! Daily-use parity with gcloud through the real binaries: `--check` and its exit statuses,
//! project and zone from a fake gcloud configuration folder, the on-disk token cache against a
//! local OAuth token endpoint, a real HTTP proxy (Debian's tinyproxy), mutual TLS with
//! `iap-relay`, and `--print-ssh-config`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const PRINCIPAL: &str = "user:parity@example.com";
const TOKEN: &str = "parity-test-token-0123456789";
/// Bound on one iap-ssh run.
const WAIT: Duration = Duration::from_secs(60);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Run {
    let out: Output = run_with_timeout(cmd, WAIT);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// --check
// ---------------------------------------------------------------------------------------------

#[test]
fn check_reports_the_tunnel_and_exits_with_the_failure_status() {
    let backend = echo_backend();
    let mut spec = RelaySpec::standard(PRINCIPAL, TOKEN);
    spec.bindings
        .push(Binding::new(&[PRINCIPAL], "projects/other-proj"));
    let relay = spawn_relay(&spec);
    let state = tempfile::tempdir().unwrap();
    let token = write_token_file(state.path(), TOKEN);

    let ok = run(iap_ssh(state.path())
        .relay(&relay)
        .arg("--check")
        .arg("--access-token-file")
        .arg(&token)
        .arg(dotted_host())
        .arg(backend.to_string()));
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(
        ok.stdout.contains(&format!("endpoint:    {}", relay.addr)),
        "{}",
        ok.stdout
    );
    assert!(
        ok.stdout.contains("credentials: access token file"),
        "{}",
        ok.stdout
    );
    let target = format!("target:      {INSTANCE} port {backend} in {PROJECT}/{ZONE}");
    assert!(ok.stdout.contains(&target), "{}", ok.stdout);
    assert!(
        ok.stdout.contains("result:      ok, tunnel opened in "),
        "{}",
        ok.stdout
    );
    assert!(!ok.stdout.contains(TOKEN) && !ok.stderr.contains(TOKEN));

    let closed = common::free_port();
    let cases = [
        (format!("{INSTANCE}.{ZONE}.denied"), backend, 4, "(4033)"),
        (format!("vm-2.{ZONE}.other-proj"), backend, 5, "4047"),
        (dotted_host(), closed, 6, "4003"),
    ];
    for (host, port, code, part) in cases {
        let r = run(iap_ssh(state.path())
            .relay(&relay)
            .arg("--check")
            .arg("--access-token-file")
            .arg(&token)
            .arg(&host)
            .arg(port.to_string()));
        assert_eq!(r.code, code, "{host}\n{}", r.stderr);
        assert!(
            r.stdout.contains("result:      failed: ") && r.stdout.contains(part),
            "{}",
            r.stdout
        );
        assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
        assert!(
            r.stderr.starts_with("iap-ssh: ") && r.stderr.contains(part),
            "{}",
            r.stderr
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Project and zone resolution
// ---------------------------------------------------------------------------------------------

#[test]
fn project_and_zone_precedence_with_a_fake_gcloud_configuration() {
    let backend = echo_backend();
    let relay = spawn_relay(&RelaySpec::standard(PRINCIPAL, TOKEN));
    let good = format!("[core]\nproject = {PROJECT}\n[compute]\nzone = {ZONE}\n");
    let bad = "[core]\nproject = wrong-proj\n[compute]\nzone = wrong-zone\n".to_owned();
    struct Case {
        host: String,
        args: Vec<String>,
        env: Vec<(&'static str, String)>,
        /// (configuration name, file text); the first is written to `active_config` unless
        /// `env` names one.
        configs: Vec<(&'static str, String)>,
        code: i32,
        part: &'static str,
    }
    let s = |v: &str| v.to_owned();
    let cases = vec![
        Case {
            host: s(INSTANCE),
            args: vec![],
            env: vec![],
            configs: vec![("default", good.clone())],
            code: 0,
            part: "",
        },
        Case {
            host: s(INSTANCE),
            args: vec![],
            env: vec![],
            configs: vec![("work", good.clone()), ("default", bad.clone())],
            code: 0,
            part: "",
        },
        Case {
            host: s(INSTANCE),
            args: vec![],
            env: vec![("CLOUDSDK_ACTIVE_CONFIG_NAME", s("default"))],
            configs: vec![("work", good.clone()), ("default", bad.clone())],
            code: 4,
            part: "(4033)",
        },
        Case {
            host: s(INSTANCE),
            args: vec![],
            env: vec![("CLOUDSDK_CORE_PROJECT", s("env-proj"))],
            configs: vec![("default", good.clone())],
            code: 4,
            part: "env-proj",
        },
        Case {
            host: s(INSTANCE),
            args: vec![s("--project"), s(PROJECT), s("--zone"), s(ZONE)],
            env: vec![("CLOUDSDK_CORE_PROJECT", s("env-proj"))],
            configs: vec![("default", bad.clone())],
            code: 0,
            part: "",
        },
        Case {
            host: format!("{INSTANCE}.{ZONE}"),
            args: vec![],
            env: vec![],
            configs: vec![(
                "default",
                format!("[core]\nproject = {PROJECT}\n[compute]\nzone = wrong-zone\n"),
            )],
            code: 0,
            part: "",
        },
        Case {
            host: format!("{INSTANCE}.{ZONE}.{PROJECT}"),
            args: vec![],
            env: vec![("CLOUDSDK_COMPUTE_ZONE", s("env-zone"))],
            configs: vec![("default", bad.clone())],
            code: 0,
            part: "",
        },
        Case {
            host: s(INSTANCE),
            args: vec![],
            env: vec![],
            configs: vec![],
            code: 2,
            part: "looked at: HOST, --zone, CLOUDSDK_COMPUTE_ZONE, gcloud configuration ",
        },
        Case {
            host: s(INSTANCE),
            args: vec![],
            env: vec![],
            configs: vec![("default", format!("[compute]\nzone = {ZONE}\n"))],
            code: 2,
            part: "no project for vm-1",
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let state = tempfile::tempdir().unwrap();
        let token = write_token_file(state.path(), TOKEN);
        let mut cmd = iap_ssh(state.path()).relay(&relay).command();
        // hermetic_env points CLOUDSDK_CONFIG at STATE/gcloud-config.
        let gcloud = state.path().join("gcloud-config");
        fs::create_dir_all(gcloud.join("configurations")).unwrap();
        for (name, text) in &case.configs {
            fs::write(
                gcloud.join("configurations").join(format!("config_{name}")),
                text,
            )
            .unwrap();
        }
        if let Some((first, _)) = case.configs.first() {
            fs::write(gcloud.join("active_config"), first).unwrap();
        }
        for (k, v) in &case.env {
            cmd.env(k, v);
        }
        cmd.arg("--check")
            .arg("--access-token-file")
            .arg(&token)
            .args(&case.args)
            .arg(&case.host)
            .arg(backend.to_string());
        let r = run(&mut cmd);
        assert_eq!(r.code, case.code, "case {i}: {}", r.stderr);
        assert!(
            r.stderr.contains(case.part),
            "case {i}: {:?} in {}",
            case.part,
            r.stderr
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Token cache
// ---------------------------------------------------------------------------------------------

struct CacheRig {
    relay: Relay,
    endpoint: common::TokenEndpoint,
    key: PathBuf,
    backend: u16,
    _keys: tempfile::TempDir,
}

const SA_TOKEN: &str = "ya29.parity-cache-token-abcdefghijklmnop";

fn cache_rig() -> Option<CacheRig> {
    if !require_tool("openssl") {
        return None;
    }
    let endpoint = common::spawn_token_endpoint(SA_TOKEN);
    let principal = format!("serviceAccount:{}", common::service_account_email(PROJECT));
    let relay = spawn_relay(&RelaySpec::standard(&principal, SA_TOKEN));
    let keys = tempfile::tempdir().unwrap();
    let key = common::service_account_key(keys.path(), &endpoint.url, PROJECT);
    Some(CacheRig {
        relay,
        endpoint,
        key,
        backend: echo_backend(),
        _keys: keys,
    })
}

/// `iap-ssh --check` with the service-account key; the project comes from its `project_id`.
fn sa_check(rig: &CacheRig, state: &Path) -> Command {
    let mut cmd = iap_ssh(state).relay(&rig.relay).command();
    cmd.env("CLOUDSDK_COMPUTE_ZONE", ZONE)
        .env("IAP_SSH_TOKENINFO_URL", rig.endpoint.tokeninfo_url())
        .arg("--check")
        .arg("--credentials-file")
        .arg(&rig.key)
        .arg(INSTANCE)
        .arg(rig.backend.to_string());
    cmd
}

fn cache_files(state: &Path) -> Vec<PathBuf> {
    let dir = state.join("xdg-cache").join("iap-ssh");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn twenty_sequential_runs_fetch_one_token() {
    let Some(rig) = cache_rig() else { return };
    let state = tempfile::tempdir().unwrap();
    for i in 0..20 {
        let r = run(&mut sa_check(&rig, state.path()));
        assert_eq!(r.code, 0, "run {i}: {}", r.stderr);
        assert!(!r.stdout.contains(SA_TOKEN) && !r.stderr.contains(SA_TOKEN));
        if i == 0 {
            let email = common::service_account_email(PROJECT);
            assert!(r.stdout.contains(&format!("({email})")), "{}", r.stdout);
        }
    }
    assert_eq!(rig.endpoint.requests(), 1, "token requests for 20 runs");
    eprintln!(
        "20 sequential runs: {} token request(s)",
        rig.endpoint.requests()
    );

    let dir = state.path().join("xdg-cache").join("iap-ssh");
    assert_eq!(mode(&dir), 0o700);
    let files = cache_files(state.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(mode(&files[0]), 0o600);

    // --no-token-cache fetches every time and leaves the cache alone.
    let r = run(sa_check(&rig, state.path()).arg("--no-token-cache"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(rig.endpoint.requests(), 2);

    // A file others may read is not trusted: a warning, a fresh token, and a safe file again.
    fs::set_permissions(&files[0], fs::Permissions::from_mode(0o644)).unwrap();
    let r = run(&mut sa_check(&rig, state.path()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("token cache file") && r.stderr.contains("mode is 644"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(SA_TOKEN));
    assert_eq!(rig.endpoint.requests(), 3);
    assert_eq!(mode(&files[0]), 0o600);

    // A cache folder that is not a folder: a warning, and the tunnel still works.
    let state2 = tempfile::tempdir().unwrap();
    fs::create_dir_all(state2.path().join("xdg-cache")).unwrap();
    fs::write(
        state2.path().join("xdg-cache").join("iap-ssh"),
        "not a folder",
    )
    .unwrap();
    let r = run(&mut sa_check(&rig, state2.path()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("token cache") && r.stderr.contains("--no-token-cache"),
        "{}",
        r.stderr
    );
}

#[test]
fn ten_concurrent_first_uses_leave_a_valid_cache() {
    let Some(rig) = cache_rig() else { return };
    let state = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..10)
        .map(|_| {
            let mut cmd = sa_check(&rig, state.path());
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            ChildGuard::new(cmd.spawn().expect("spawning iap-ssh"))
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    for mut child in children {
        let status = loop {
            if let Some(s) = child.try_wait() {
                break s;
            }
            assert!(Instant::now() < deadline, "iap-ssh did not finish");
            thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = child.child_mut().stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        assert!(status.success(), "{status}: {err}");
    }
    let first_round = rig.endpoint.requests();
    assert!((1..=10).contains(&first_round), "{first_round}");
    let files = cache_files(state.path());
    assert_eq!(
        files.len(),
        1,
        "one file, no temporary leftovers: {files:?}"
    );
    let entry: serde_json::Value = serde_json::from_str(&fs::read_to_string(&files[0]).unwrap())
        .expect("the cache file is valid JSON");
    assert_eq!(entry["access_token"], SA_TOKEN);
    assert!(entry["expires_at"].as_u64().is_some());
    // The next run uses it.
    let r = run(&mut sa_check(&rig, state.path()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(rig.endpoint.requests(), first_round);
}

// ---------------------------------------------------------------------------------------------
// HTTP proxy (tinyproxy)
// ---------------------------------------------------------------------------------------------

#[test]
fn proxy_carries_check_and_stdio_tunnels() {
    if !require_tool("tinyproxy") {
        return;
    }
    let proxy = spawn_tinyproxy("Connect", "");
    let backend = echo_backend();
    let relay = spawn_relay(&RelaySpec::standard(PRINCIPAL, TOKEN));
    let state = tempfile::tempdir().unwrap();
    let token = write_token_file(state.path(), TOKEN);
    let url = format!("http://127.0.0.1:{}", proxy.port);

    let r = run(iap_ssh(state.path())
        .relay(&relay)
        .args(["--check", "--proxy", &url, "--access-token-file"])
        .arg(&token)
        .arg(dotted_host())
        .arg(backend.to_string()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let log = read_log(&proxy.log);
    assert!(
        log.contains(&format!("127.0.0.1:{}", relay.port())),
        "proxy log: {log}"
    );

    // stdio mode, proxy from HTTPS_PROXY: 1 MiB echoed through proxy, relay and backend. The
    // protocol has no half-close, so stdin stays open until the whole echo is back.
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 + i / 251) as u8).collect();
    let stderr_path = state.path().join("stdio.stderr");
    let mut cmd = iap_ssh(state.path()).relay(&relay).command();
    cmd.env("HTTPS_PROXY", &url)
        .arg("--access-token-file")
        .arg(&token)
        .arg(dotted_host())
        .arg(backend.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&stderr_path).unwrap());
    let mut child = ChildGuard::new(cmd.spawn().expect("spawning iap-ssh"));
    let mut stdin = child.child_mut().stdin.take().unwrap();
    let mut stdout = child.child_mut().stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let len = data.len();
    thread::spawn(move || {
        let mut back = vec![0u8; len];
        let _ = tx.send(stdout.read_exact(&mut back).map(|()| back));
    });
    stdin.write_all(&data).expect("writing to iap-ssh");
    let back = rx
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("no echo in time\n{}", read_log(&stderr_path)))
        .unwrap_or_else(|e| panic!("reading the echo: {e}\n{}", read_log(&stderr_path)));
    assert!(back == data, "echo through the proxy differs");
    drop(stdin);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "iap-ssh did not exit after EOF");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}\n{}", read_log(&stderr_path));

    // NO_PROXY sends the relay around a dead proxy; without it the dead proxy is an error.
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let direct = run(iap_ssh(state.path())
        .relay(&relay)
        .env("HTTPS_PROXY", &dead)
        .env("NO_PROXY", "localhost,127.0.0.1")
        .args(["--check", "--access-token-file"])
        .arg(&token)
        .arg(dotted_host())
        .arg(backend.to_string()));
    assert_eq!(direct.code, 0, "{}", direct.stderr);
    let refused = run(iap_ssh(state.path())
        .relay(&relay)
        .env("https_proxy", &dead)
        .args(["--check", "--access-token-file"])
        .arg(&token)
        .arg(dotted_host())
        .arg(backend.to_string()));
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("connecting to the proxy at 127.0.0.1:"),
        "{}",
        refused.stderr
    );
}

#[test]
fn proxy_refusals_and_credentials() {
    if !require_tool("tinyproxy") {
        return;
    }
    let backend = echo_backend();
    let relay = spawn_relay(&RelaySpec::standard(PRINCIPAL, TOKEN));
    let state = tempfile::tempdir().unwrap();
    let token = write_token_file(state.path(), TOKEN);
    let check = |proxy_url: &str| {
        run(iap_ssh(state.path())
            .relay(&relay)
            .args(["--check", "--proxy", proxy_url, "--access-token-file"])
            .arg(&token)
            .arg(dotted_host())
            .arg(backend.to_string()))
    };

    let authed = spawn_tinyproxy("Connect", "BasicAuth proxyuser s3cret-pass");
    let base = format!("127.0.0.1:{}", authed.port);
    let r = check(&format!("http://{base}"));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("requires authentication (HTTP 40"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("http://USER:PASSWORD@HOST:PORT"),
        "{}",
        r.stderr
    );
    let r = check(&format!("http://proxyuser:wrong-pass@{base}"));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("rejected the user and password"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("wrong-pass") && !r.stdout.contains("wrong-pass"));
    let r = check(&format!("http://proxyuser:s3cret-pass@{base}"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("s3cret") && !r.stdout.contains("s3cret"));

    // A proxy that allows CONNECT only to port 443 refuses the relay's port with 403.
    let strict = spawn_tinyproxy("Connect", "ConnectPort 443");
    let r = check(&format!("http://127.0.0.1:{}", strict.port));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("refused to connect to the relay") && r.stderr.contains("HTTP 403"),
        "{}",
        r.stderr
    );

    // Unsupported schemes are usage errors, before any network use.
    for (url, part) in [
        ("socks5://127.0.0.1:1080", "SOCKS proxies are not supported"),
        (
            "https://127.0.0.1:3128",
            "over TLS (https://) are not supported",
        ),
    ] {
        let r = check(url);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains(part), "{}", r.stderr);
    }
}

// ---------------------------------------------------------------------------------------------
// Mutual TLS
// ---------------------------------------------------------------------------------------------

/// A client CA and a client certificate signed by it, as PEM files in `dir`.
fn client_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "iap-ssh test device CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "device-1");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (ca_pem, cert_pem, key_pem) = (
        dir.join("client-ca.pem"),
        dir.join("client-cert.pem"),
        dir.join("client-key.pem"),
    );
    fs::write(&ca_pem, ca_cert.pem()).unwrap();
    fs::write(&cert_pem, cert.pem()).unwrap();
    fs::write(&key_pem, key.serialize_pem()).unwrap();
    (ca_pem, cert_pem, key_pem)
}

/// A relay whose `[tls]` has a client CA (`client_auth = mode`), granting [`PRINCIPAL`] the
/// project on the condition of a client certificate when `require_cert`.
fn spawn_mtls_relay(client_ca: &Path, mode: &str, require_cert: bool) -> Relay {
    let mut binding = Binding::new(&[PRINCIPAL], &format!("projects/{PROJECT}"));
    binding.require_client_cert = require_cert;
    let spec = RelaySpec {
        bindings: vec![binding],
        client_ca: Some((client_ca.to_owned(), Some(mode.to_owned()))),
        ..RelaySpec::standard(PRINCIPAL, TOKEN)
    };
    spawn_relay(&spec)
}

fn mtls_check(relay: &Relay, state: &Path, backend: u16, cert: Option<(&Path, &Path)>) -> Run {
    let token = write_token_file(state, TOKEN);
    let mut cmd = iap_ssh(state).relay(relay).token_file(&token).command();
    cmd.arg("--check");
    if let Some((c, k)) = cert {
        cmd.arg("--client-cert").arg(c).arg("--client-key").arg(k);
    }
    cmd.arg(dotted_host()).arg(backend.to_string());
    run(&mut cmd)
}

#[test]
fn relay_requiring_a_client_certificate_rejects_clients_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = client_pki(dir.path());
    let backend = echo_backend();
    let relay = spawn_mtls_relay(&ca, "required", false);
    let r = mtls_check(&relay, dir.path(), backend, None);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("requires a client certificate: pass --client-cert and --client-key"),
        "{}\n--- relay ---\n{}",
        r.stderr,
        relay.log()
    );
    let r = mtls_check(&relay, dir.path(), backend, Some((&cert, &key)));
    assert_eq!(r.code, 0, "{}\n--- relay ---\n{}", r.stderr, relay.log());

    // A certificate from another CA is refused at the handshake, with a clear message.
    let other = tempfile::tempdir().unwrap();
    let (_, other_cert, other_key) = client_pki(other.path());
    let r = mtls_check(&relay, dir.path(), backend, Some((&other_cert, &other_key)));
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("did not accept the client certificate"),
        "{}",
        r.stderr
    );
}

#[test]
fn binding_condition_admits_only_clients_with_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = client_pki(dir.path());
    let backend = echo_backend();
    let relay = spawn_mtls_relay(&ca, "optional", true);
    let r = mtls_check(&relay, dir.path(), backend, None);
    assert_eq!(r.code, 4, "{}\n--- relay ---\n{}", r.stderr, relay.log());
    assert!(r.stderr.contains("(4033)"), "{}", r.stderr);
    let r = mtls_check(&relay, dir.path(), backend, Some((&cert, &key)));
    assert_eq!(r.code, 0, "{}\n--- relay ---\n{}", r.stderr, relay.log());
}

#[test]
fn client_certificate_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = client_pki(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (_, _, other_key) = client_pki(other.path());
    let missing = dir.path().join("missing.pem");
    let cases: Vec<(Vec<&Path>, &str)> = vec![
        (vec![&cert], "--client-cert and --client-key go together"),
        (vec![&missing, &key], "reading client certificate"),
        (vec![&cert, &missing], "reading client key"),
        (vec![&cert, &other_key], "do not form a usable pair"),
    ];
    for (files, part) in cases {
        let mut cmd = iap_ssh(dir.path())
            .token_file(Path::new("/dev/null"))
            .command();
        cmd.arg("--check");
        cmd.arg("--client-cert").arg(files[0]);
        if let Some(k) = files.get(1) {
            cmd.arg("--client-key").arg(k);
        }
        cmd.args([&dotted_host(), "22"]);
        let r = run(&mut cmd);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains(part), "{part:?} in {}", r.stderr);
    }
}

// ---------------------------------------------------------------------------------------------
// --print-ssh-config
// ---------------------------------------------------------------------------------------------

#[test]
fn print_ssh_config_prints_a_ready_host_block() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = iap_ssh(dir.path()).command();
    cmd.args([
        "--print-ssh-config",
        "--project",
        "my-proj",
        "--zone",
        "us-central1-a",
    ]);
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("\nHost *.iap\n"), "{}", r.stdout);
    let bin = iap_ssh_bin().display().to_string();
    let line = format!("    ProxyCommand {bin} --project my-proj --zone us-central1-a %h %p\n");
    assert!(r.stdout.contains(&line), "{line:?} in\n{}", r.stdout);
    // Every line is a comment, the Host line, or an indented option.
    for l in r.stdout.lines() {
        assert!(
            l.starts_with('#') || l.starts_with("Host ") || l.starts_with("    "),
            "{l}"
        );
    }
    // Usable as is: ssh -G parses it and reports the ProxyCommand for a .iap host.
    if let Some(ssh) = common::tool_path("ssh") {
        let config = dir.path().join("ssh_config");
        fs::write(&config, &r.stdout).unwrap();
        let out = run_with_timeout(
            Command::new(ssh)
                .arg("-G")
                .arg("-F")
                .arg(&config)
                .arg("vm-1.iap"),
            WAIT,
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", common::describe(&out));
        assert!(
            text.contains("proxycommand ") && text.contains("--zone us-central1-a"),
            "{text}"
        );
    }
    let _ = std::io::stdout().flush();
}
