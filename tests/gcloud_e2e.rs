//! Interop with Google's own client and credentials, offline:
//!
//! * unmodified `gcloud compute start-iap-tunnel --listen-on-stdin` as ssh's ProxyCommand against
//!   `iap-relay` (gcloud is pointed at it with `--iap-tunnel-url-override` and trusts the test CA);
//! * `iap-ssh --credentials-file` with a service-account key whose `token_uri` is a local OAuth
//!   token endpoint, which exercises the real gcp_auth JWT-bearer flow.
//!
//! Skips when gcloud, OpenSSH or openssl is missing, except under CI=true.
//!
//! gcloud 528 can deadlock by itself during a download (its send thread blocks putting an ACK
//! into its own full queue; see README "Compatibility"). The relay reports such a session with
//! a `stall` audit line; a bulk step that stalls that way is noted and run once more, and a
//! second stall fails the test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const ALICE: &str = "user:alice@example.com";
const MALLORY: &str = "user:mallory@example.com";

/// ssh whose ProxyCommand is gcloud's IAP tunnel to `relay`, with gcloud's environment: its own
/// empty configuration folder, `token_file` as the access token and the test CA trusted.
fn gcloud_ssh(sshd: &Sshd, relay: &Relay, token_file: &Path) -> Command {
    let gcloud = tool_path("gcloud").expect("gcloud installed");
    let pc = format!(
        "{} compute start-iap-tunnel {INSTANCE} %p --zone {ZONE} --project {PROJECT} \
         --listen-on-stdin --iap-tunnel-url-override={} --verbosity=warning",
        proxy_quote_path(&gcloud),
        proxy_quote(&relay.url),
    );
    // hermetic_env points CLOUDSDK_CONFIG at a fresh folder; ssh hands its whole environment to
    // the ProxyCommand, so these reach gcloud.
    let mut cmd = ssh_command("ssh", sshd);
    cmd.env("CLOUDSDK_CORE_PROJECT", PROJECT)
        .env("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", token_file)
        .env("CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE", relay.ca_pem())
        .env("CLOUDSDK_CORE_DISABLE_USAGE_REPORTING", "true")
        .env("CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK", "true")
        .args(ssh_base_args(sshd, &pc))
        // The host name only matters to ssh (known_hosts); gcloud gets the instance by argument.
        .arg(INSTANCE);
    cmd
}

struct GcloudSetup {
    relay: Relay,
    sshd: Sshd,
    token_file: PathBuf,
    unbound_token_file: PathBuf,
}

fn gcloud_setup() -> Option<GcloudSetup> {
    if !require_openssh() || !require_tool("gcloud") {
        return None;
    }
    let (alice, mallory) = (random_hex(24), random_hex(24));
    let spec = RelaySpec::standard(ALICE, &alice)
        .with_token(MALLORY, &mallory)
        .audit_log("audit.jsonl");
    let relay = spawn_relay(&spec);
    let sshd = spawn_sshd();
    let secrets = sshd.subdir("secrets");
    let token_file = write_token_file(&secrets, &alice);
    let unbound_token_file = write_token_file(&secrets, &mallory);
    Some(GcloudSetup {
        relay,
        sshd,
        token_file,
        unbound_token_file,
    })
}

impl GcloudSetup {
    /// The relay's audit log (JSON lines).
    fn audit(&self) -> String {
        let dir = self.relay.config_path.parent().expect("config folder");
        read_log(&dir.join("audit.jsonl"))
    }

    fn logs(&self) -> String {
        format!(
            "--- iap-relay log ---\n{}\n--- sshd log ---\n{}",
            self.relay.log(),
            self.sshd.log()
        )
    }
}

#[test]
fn gcloud_tunnel_ssh_runs_command() {
    let Some(s) = gcloud_setup() else { return };
    let mut cmd = gcloud_ssh(&s.sshd, &s.relay, &s.token_file);
    cmd.arg("echo hello");
    let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT);
    assert!(out.status.success(), "{}\n{}", describe(&out), s.logs());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    // gcloud leaves without a WebSocket close; the idle session is complete, not parked.
    let started = Instant::now();
    while !s.audit().contains("\"event\":\"close\"") {
        assert!(started.elapsed() < Duration::from_secs(10), "{}", s.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let audit = s.audit();
    assert!(
        audit.contains("\"reason\":\"complete; client left without a close\""),
        "{audit}\n{}",
        s.logs()
    );
    assert!(!s.relay.log().contains("parked for resume"), "{}", s.logs());
}

/// How a bulk step through gcloud ended.
enum Step {
    Done(Output),
    /// The relay reported a `stall` (gcloud stopped acknowledging at the relay's bound).
    Stalled,
}

/// Runs `cmd` like [`run_with_io`], but watches the relay's audit log: when a new `stall`
/// line appears, ssh is stopped with SIGTERM (so it ends its ProxyCommand, gcloud) and the
/// step reports [`Step::Stalled`].
fn run_watching_stalls(
    s: &GcloudSetup,
    cmd: &mut Command,
    stdin: Stdio,
    stdout_to: Option<File>,
) -> Step {
    let stalls_before = s.audit().matches("\"event\":\"stall\"").count();
    let mut err_file = tempfile::tempfile().unwrap();
    let stdout = match stdout_to {
        Some(f) => Stdio::from(f),
        None => Stdio::null(),
    };
    cmd.stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::from(err_file.try_clone().unwrap()));
    let mut child = ChildGuard::new(cmd.spawn().unwrap());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait() {
            use std::io::{Read, Seek};
            let mut stderr = Vec::new();
            let _ = err_file.rewind();
            let _ = err_file.read_to_end(&mut stderr);
            return Step::Done(Output {
                status,
                stdout: Vec::new(),
                stderr,
            });
        }
        if s.audit().matches("\"event\":\"stall\"").count() > stalls_before {
            let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let stopping = Instant::now();
            while child.try_wait().is_none() && stopping.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return Step::Stalled;
        }
        assert!(
            started.elapsed() < TRANSFER_TIMEOUT,
            "timed out after {TRANSFER_TIMEOUT:?}: {cmd:?}\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a bulk step (`make` builds a fresh command each time) and accepts one gcloud stall: the
/// step is noted and run again. A second stall fails.
fn bulk_step(s: &GcloudSetup, what: &str, make: &dyn Fn() -> (Command, Stdio, Option<File>)) {
    for attempt in 1..=2 {
        let (mut cmd, stdin, stdout_to) = make();
        match run_watching_stalls(s, &mut cmd, stdin, stdout_to) {
            Step::Done(out) => {
                assert!(
                    out.status.success(),
                    "{what}: {}\n{}",
                    describe(&out),
                    s.logs()
                );
                return;
            }
            Step::Stalled if attempt == 1 => eprintln!(
                "note: {what} stalled (gcloud stopped acknowledging; its own send-queue deadlock, \
                 see README \"Compatibility\"); running it once more"
            ),
            Step::Stalled => panic!("{what} stalled twice through gcloud\n{}", s.logs()),
        }
    }
}

#[test]
fn gcloud_tunnel_16mib_upload_and_download() {
    let Some(s) = gcloud_setup() else { return };
    let local = s.sshd.subdir("local");
    let remote = s.sshd.subdir("remote");
    let src = random_file(&local, "up.bin", 16 << 20);
    let want = sha256_file(&src);
    let remote_file = remote.join("up.bin");

    bulk_step(&s, "16 MiB upload through gcloud", &|| {
        let mut cmd = gcloud_ssh(&s.sshd, &s.relay, &s.token_file);
        cmd.arg(format!(
            "cat > {}",
            sh_quote(&remote_file.display().to_string())
        ));
        (cmd, Stdio::from(File::open(&src).unwrap()), None)
    });
    assert_eq!(sha256_file(&remote_file), want, "upload corrupted");

    let back = local.join("down.bin");
    bulk_step(&s, "16 MiB download through gcloud", &|| {
        let mut cmd = gcloud_ssh(&s.sshd, &s.relay, &s.token_file);
        cmd.arg(format!(
            "cat {}",
            sh_quote(&remote_file.display().to_string())
        ));
        (cmd, Stdio::null(), Some(File::create(&back).unwrap()))
    });
    assert_eq!(sha256_file(&back), want, "download corrupted");
}

/// gcloud 528 reports a 4033 close on stderr but exits 0 (see design.md §5), so the check is
/// its message, relayed by ssh, and that ssh got no session.
#[test]
fn gcloud_unauthorized_principal_reports_4033() {
    let Some(s) = gcloud_setup() else { return };
    let mut cmd = gcloud_ssh(&s.sshd, &s.relay, &s.unbound_token_file);
    cmd.arg("echo should-not-run");
    let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT);
    assert!(
        !out.status.success(),
        "ssh succeeded without a binding\n{}",
        describe(&out)
    );
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("4033") && err.contains("not authorized"),
        "gcloud's stderr lacks the 4033 'not authorized' error\n{}\n{}",
        describe(&out),
        s.logs()
    );
}

// ---------------------------------------------------------------------------------------------
// Service-account credentials through gcp_auth
// ---------------------------------------------------------------------------------------------

/// Decodes unpadded base64url (JWT segments).
fn base64url_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {c:?}"),
        }
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|&c| c != b'=') {
        acc = (acc << 6) | val(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Decodes a `application/x-www-form-urlencoded` value (enough for a JWT grant body).
fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| {
            let v = v.replace('+', " ");
            let mut out = Vec::new();
            let mut bytes = v.bytes();
            while let Some(b) = bytes.next() {
                if b == b'%' {
                    let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                    out.push(u8::from_str_radix(&hex, 16).expect("percent escape"));
                } else {
                    out.push(b);
                }
            }
            String::from_utf8(out).expect("UTF-8 form value")
        })
    })
}

/// Checks the JWT that gcp_auth posted: RS256-signed by the key's private key (verified with
/// the public key that openssl extracts), issued by the key's client_email for its token_uri.
fn check_jwt_grant(body: &str, key_dir: &Path, token_uri: &str, project: &str) {
    assert_eq!(
        form_value(body, "grant_type").as_deref(),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer"),
        "token request body: {body}"
    );
    let jwt = form_value(body, "assertion").expect("assertion in token request");
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "JWT has three parts");
    let header: serde_json::Value = serde_json::from_slice(&base64url_decode(parts[0])).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&base64url_decode(parts[1])).unwrap();
    assert_eq!(header["alg"], "RS256", "JWT header {header}");
    assert_eq!(
        claims["iss"],
        service_account_email(project),
        "claims {claims}"
    );
    assert_eq!(claims["aud"], token_uri, "claims {claims}");

    let pub_der = key_dir.join("sa-public-key.der");
    let out = run_with_timeout(
        Command::new(tool_path("openssl").unwrap())
            .args(["rsa", "-RSAPublicKey_out", "-outform", "DER", "-in"])
            .arg(key_dir.join("sa-private-key.pem"))
            .arg("-out")
            .arg(&pub_der),
        COMMAND_TIMEOUT,
    );
    assert!(out.status.success(), "openssl rsa\n{}", describe(&out));
    let public_key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        fs::read(&pub_der).unwrap(),
    );
    let signed = format!("{}.{}", parts[0], parts[1]);
    public_key
        .verify(signed.as_bytes(), &base64url_decode(parts[2]))
        .expect("JWT signature verifies with the service account's public key");
}

/// A relay that accepts the token a local OAuth endpoint hands out for a service-account key,
/// and the ProxyCommand `iap-ssh --credentials-file KEY`.
struct SaSetup {
    access_token: String,
    endpoint: TokenEndpoint,
    relay: Relay,
    sshd: Sshd,
    key_dir: PathBuf,
    pc: String,
}

fn sa_setup() -> Option<SaSetup> {
    if !require_openssh() || !require_tool("openssl") {
        return None;
    }
    let access_token = format!("ya29.test-{}", random_hex(24));
    let endpoint = spawn_token_endpoint(&access_token);
    let principal = format!("serviceAccount:{}", service_account_email(PROJECT));
    let relay = spawn_relay(&RelaySpec::standard(&principal, &access_token));
    let sshd = spawn_sshd();
    let key_dir = sshd.subdir("sa");
    let key = service_account_key(&key_dir, &endpoint.url, PROJECT);
    let pc = format!(
        "{} --endpoint {} --ca-file {} --credentials-file {} %h %p",
        proxy_quote_path(&iap_ssh_bin()),
        proxy_quote(&relay.url),
        proxy_quote_path(relay.ca_pem()),
        proxy_quote_path(&key),
    );
    Some(SaSetup {
        access_token,
        endpoint,
        relay,
        sshd,
        key_dir,
        pc,
    })
}

impl SaSetup {
    fn ssh_echo(&self, word: &str) {
        let out = ssh_run(
            &self.sshd,
            &self.pc,
            &dotted_host(),
            &format!("echo {word}"),
            COMMAND_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "{}\ntoken endpoint requests: {}\n--- iap-relay log ---\n{}",
            describe(&out),
            self.endpoint.requests(),
            self.relay.log()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{word}\n"));
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains(&self.access_token),
            "the access token leaked into stderr"
        );
    }
}

#[test]
fn iap_ssh_service_account_key_via_local_token_endpoint() {
    let Some(s) = sa_setup() else { return };
    s.ssh_echo("via-sa");
    assert!(
        s.endpoint.requests() >= 1,
        "the local token endpoint was never asked for a token"
    );
    check_jwt_grant(
        &s.endpoint.bodies()[0],
        &s.key_dir,
        &s.endpoint.url,
        PROJECT,
    );
}

/// design.md §2: tokens are cached on disk (user cache dir, keyed by credential and scope), so
/// that many ssh connections cost one token fetch. Every ssh here shares one XDG_CACHE_HOME.
#[test]
fn service_account_token_is_cached_across_connections() {
    let Some(s) = sa_setup() else { return };
    for i in 0..3 {
        s.ssh_echo(&format!("run-{i}"));
    }
    assert_eq!(
        s.endpoint.requests(),
        1,
        "three ssh connections should cost one token fetch"
    );
}

/// The harness itself: the token endpoint answers a POST the way gcp_auth expects, and the
/// service-account key is well formed.
#[test]
fn harness_token_endpoint_and_service_account_key() {
    use std::io::{Read, Write};
    if !require_tool("openssl") {
        return;
    }
    let endpoint = spawn_token_endpoint("tok-123");
    let mut conn = std::net::TcpStream::connect(endpoint.addr).unwrap();
    conn.set_read_timeout(Some(COMMAND_TIMEOUT)).unwrap();
    let body = "grant_type=x&assertion=y";
    write!(
        conn,
        "POST /token HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n{body}",
        endpoint.addr,
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    let json: serde_json::Value =
        serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["access_token"], "tok-123");
    assert_eq!(json["expires_in"], 3600);
    assert_eq!(endpoint.requests(), 1);
    assert_eq!(endpoint.bodies(), vec![body.to_owned()]);

    let dir = tempfile::TempDir::new().unwrap();
    let key = service_account_key(dir.path(), &endpoint.url, PROJECT);
    let json: serde_json::Value = serde_json::from_slice(&fs::read(key).unwrap()).unwrap();
    assert_eq!(json["type"], "service_account");
    assert_eq!(json["token_uri"], endpoint.url);
    assert_eq!(json["project_id"], PROJECT);
    assert!(
        json["private_key"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
}

/// Application Default Credentials: no credential flag, the key named by
/// GOOGLE_APPLICATION_CREDENTIALS (gcp_auth's first ADC source), as on a developer machine.
#[test]
fn application_default_credentials_from_the_environment() {
    let Some(s) = sa_setup() else { return };
    let key = s.key_dir.join(
        std::fs::read_dir(&s.key_dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .find(|n| n.to_string_lossy().ends_with(".json"))
            .expect("the key file"),
    );
    let pc = format!(
        "{} --endpoint {} --ca-file {} %h %p",
        proxy_quote_path(&iap_ssh_bin()),
        proxy_quote(&s.relay.url),
        proxy_quote_path(s.relay.ca_pem()),
    );
    let mut cmd = ssh_command("ssh", &s.sshd);
    cmd.env("GOOGLE_APPLICATION_CREDENTIALS", &key)
        .args(ssh_base_args(&s.sshd, &pc))
        .arg(dotted_host())
        .arg("echo via-adc");
    let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT);
    assert!(
        out.status.success(),
        "{}\n{}",
        describe(&out),
        s.relay.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-adc\n");
    assert!(s.endpoint.requests() >= 1);
}
