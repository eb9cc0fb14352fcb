//! Every credential source, offline, through the real binary and the real libraries: each row
//! of the README's credentials matrix is checked by the token that reaches `iap-relay` (a
//! relay that knows only that one token). Also: a refused cached token replaced by a fresh
//! one, token traffic through a real proxy (tinyproxy), and the error messages.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;
mod google;

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use google::{FakeGoogle, IMPERSONATED, SUBJECT, USER_EMAIL, VM_EMAIL};
use serde_json::{Value, json};

const PRINCIPAL: &str = "user:matrix@example.com";
const WAIT: Duration = Duration::from_secs(90);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

fn run(cmd: &mut Command) -> Run {
    let started = Instant::now();
    let out = run_with_timeout(cmd, WAIT);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    }
}

/// `iap-ssh --check` against `relay` with a hermetic environment in `state` (its own HOME,
/// gcloud folder and cache) and token-info at `google`.
fn check(relay: &Relay, google: &FakeGoogle, state: &Path, backend: u16) -> Command {
    check_host(relay, google, state, backend, &common::dotted_host())
}

fn check_host(
    relay: &Relay,
    google: &FakeGoogle,
    state: &Path,
    backend: u16,
    host: &str,
) -> Command {
    let mut cmd = iap_ssh(state)
        .home()
        .tokeninfo_url(&google.tokeninfo_url())
        .relay(relay)
        .command();
    cmd.arg("--check").arg(host).arg(backend.to_string());
    cmd
}

fn write_json(path: &Path, value: &Value) -> PathBuf {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    path.to_owned()
}

fn authorized_user(g: &FakeGoogle) -> Value {
    json!({
        "type": "authorized_user",
        "client_id": "test-client.apps.googleusercontent.com",
        "client_secret": "test-secret",
        "refresh_token": "1//test-refresh-token",
        "token_uri": g.token_url(),
    })
}

fn impersonated(g: &FakeGoogle, source: Value) -> Value {
    json!({
        "type": "impersonated_service_account",
        "service_account_impersonation_url": g.impersonation_url(),
        "delegates": [],
        "source_credentials": source,
    })
}

fn external(g: &FakeGoogle, source: Value, impersonate: bool) -> Value {
    let mut v = json!({
        "type": "external_account",
        "audience": "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/ci-pool/providers/ci",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": g.sts_url(),
        "credential_source": source,
    });
    if impersonate {
        v["service_account_impersonation_url"] = g.impersonation_url().into();
    }
    v
}

/// A script that prints an executable-sourced subject token as the executable protocol says.
fn subject_executable(dir: &Path) -> PathBuf {
    let path = dir.join("subject-token.sh");
    fs::write(
        &path,
        format!(
            "#!/bin/sh\nprintf '{{\"version\":1,\"success\":true,\"token_type\":\"urn:ietf:params:oauth:token-type:jwt\",\"id_token\":\"{SUBJECT}\",\"expiration_time\":%s}}' \"$(( $(date +%s) + 3600 ))\"\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// How a row puts its credential in place: files under `state`, flags and variables.
type Prep = Box<dyn Fn(&FakeGoogle, &Path, &mut Command)>;

struct Row {
    name: &'static str,
    /// The kind of token the relay must receive (`oauth`, `sts`, `iam`, `mds`).
    token: &'static str,
    /// The principal `--check` must show, if the source can know it.
    who: Option<String>,
    /// Whether the STS exchange must have carried the subject token.
    subject: bool,
    prep: Prep,
}

fn row(name: &'static str, token: &'static str, who: Option<&str>, prep: Prep) -> Row {
    Row {
        name,
        token,
        who: who.map(str::to_owned),
        subject: token == "sts" || name.starts_with("external"),
        prep,
    }
}

fn external_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for imp in [false, true] {
        let (token, who) = if imp {
            ("iam", Some(IMPERSONATED))
        } else {
            ("sts", None)
        };
        let name = |plain: &'static str, with: &'static str| if imp { with } else { plain };
        rows.push(row(
            name(
                "external_account, file source, text",
                "external_account, file source, text, impersonated",
            ),
            token,
            who,
            Box::new(move |g, state, cmd| {
                let subject = state.join("subject.txt");
                fs::write(&subject, SUBJECT).unwrap();
                let f = write_json(
                    &state.join("wif.json"),
                    &external(g, json!({ "file": subject }), imp),
                );
                cmd.env("GOOGLE_APPLICATION_CREDENTIALS", f);
            }),
        ));
        rows.push(row(
            name(
                "external_account, file source, JSON (GitHub Actions)",
                "external_account, file source, JSON (GitHub Actions), impersonated",
            ),
            token,
            who,
            Box::new(move |g, state, cmd| {
                let subject = state.join("subject.json");
                fs::write(&subject, json!({ "value": SUBJECT }).to_string()).unwrap();
                let source = json!({
                    "file": subject,
                    "format": { "type": "json", "subject_token_field_name": "value" },
                });
                let f = write_json(&state.join("wif.json"), &external(g, source, imp));
                cmd.arg("--credentials").arg(f);
            }),
        ));
        rows.push(row(
            name(
                "external_account, URL source with headers",
                "external_account, URL source with headers, impersonated",
            ),
            token,
            who,
            Box::new(move |g, state, cmd| {
                let source = json!({
                    "url": format!("{}/subject", g.base),
                    "headers": { "X-Test": "yes" },
                    "format": { "type": "json", "subject_token_field_name": "value" },
                });
                let f = write_json(&state.join("wif.json"), &external(g, source, imp));
                cmd.env("GOOGLE_APPLICATION_CREDENTIALS", f);
            }),
        ));
        rows.push(row(
            name(
                "external_account, executable source",
                "external_account, executable source, impersonated",
            ),
            token,
            who,
            Box::new(move |g, state, cmd| {
                let exe = subject_executable(state);
                let source = json!({ "executable": { "command": exe, "timeout_millis": 10000 } });
                let f = write_json(&state.join("wif.json"), &external(g, source, imp));
                cmd.env("GOOGLE_APPLICATION_CREDENTIALS", f)
                    .env("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1");
            }),
        ));
    }
    rows
}

fn adc_rows(with_keys: bool) -> Vec<Row> {
    let mut rows = vec![
        row(
            "authorized_user at the well-known path",
            "oauth",
            Some(USER_EMAIL),
            Box::new(|g, state, cmd| {
                write_json(
                    &state.join("home/.config/gcloud/application_default_credentials.json"),
                    &authorized_user(g),
                );
                // The well-known path is used when CLOUDSDK_CONFIG names no ADC file.
                let _ = cmd;
            }),
        ),
        row(
            "authorized_user under CLOUDSDK_CONFIG",
            "oauth",
            Some(USER_EMAIL),
            Box::new(|g, state, _| {
                write_json(
                    &state.join("gcloud-config/application_default_credentials.json"),
                    &authorized_user(g),
                );
            }),
        ),
        row(
            "authorized_user through GOOGLE_APPLICATION_CREDENTIALS",
            "oauth",
            Some(USER_EMAIL),
            Box::new(|g, state, cmd| {
                let f = write_json(&state.join("adc.json"), &authorized_user(g));
                cmd.env("GOOGLE_APPLICATION_CREDENTIALS", f);
            }),
        ),
        row(
            "impersonated_service_account, authorized_user source",
            "iam",
            Some(IMPERSONATED),
            Box::new(|g, state, cmd| {
                let f = write_json(
                    &state.join("imp.json"),
                    &impersonated(g, authorized_user(g)),
                );
                cmd.env("GOOGLE_APPLICATION_CREDENTIALS", f);
            }),
        ),
        row(
            "metadata server through GCE_METADATA_HOST",
            "mds",
            Some(VM_EMAIL),
            Box::new(|g, _, cmd| {
                cmd.env("GCE_METADATA_HOST", g.authority());
            }),
        ),
    ];
    if with_keys {
        let email = common::service_account_email(PROJECT);
        let sa = |g: &FakeGoogle, state: &Path| {
            // One key per row: the second run must find the same file.
            let dir = state.join("keys");
            let key = dir.join("sa-key.json");
            if !key.exists() {
                fs::create_dir_all(&dir).unwrap();
                common::service_account_key(&dir, &g.token_url(), PROJECT);
            }
            key
        };
        rows.push(row(
            "service-account key through GOOGLE_APPLICATION_CREDENTIALS",
            "oauth",
            Some(&email),
            Box::new(move |g, state, cmd| {
                cmd.env("GOOGLE_APPLICATION_CREDENTIALS", sa(g, state));
            }),
        ));
        rows.push(row(
            "service-account key through --credentials-file",
            "oauth",
            Some(&email),
            Box::new(move |g, state, cmd| {
                cmd.arg("--credentials-file").arg(sa(g, state));
            }),
        ));
        rows.push(row(
            "impersonated_service_account, service-account source",
            "iam",
            Some(IMPERSONATED),
            Box::new(move |g, state, cmd| {
                let key: Value =
                    serde_json::from_str(&fs::read_to_string(sa(g, state)).unwrap()).unwrap();
                let f = write_json(&state.join("imp.json"), &impersonated(g, key));
                cmd.arg("--credentials").arg(f);
            }),
        ));
    }
    rows.extend(external_rows());
    rows
}

/// Runs one row: a relay that knows only the expected token, one `--check`.
fn run_row(r: &Row, backend: u16) -> Result<(), String> {
    let g = FakeGoogle::start();
    let expected = g.token(r.token);
    let relay = spawn_relay(&RelaySpec::standard(PRINCIPAL, &expected));
    let state = tempfile::tempdir().unwrap();
    let mut cmd = check(&relay, &g, state.path(), backend);
    (r.prep)(&g, state.path(), &mut cmd);
    let out = run(&mut cmd);
    let seen: Vec<String> = g.seen().iter().map(|s| s.line.clone()).collect();
    if out.code != 0 {
        return Err(format!(
            "exit {}: {}\nrequests: {seen:?}\nrelay: {}",
            out.code,
            out.stderr,
            relay.log()
        ));
    }
    if out.stderr.contains("ya29.") || out.stdout.contains("ya29.") {
        return Err("a token was printed".into());
    }
    if let Some(who) = &r.who
        && !out.stdout.contains(&format!("({who})"))
    {
        return Err(format!("principal {who} not shown:\n{}", out.stdout));
    }
    if r.subject
        && !g
            .seen()
            .iter()
            .any(|s| s.line.starts_with("POST /sts") && s.body.contains(SUBJECT))
    {
        return Err(format!("no STS exchange with the subject token: {seen:?}"));
    }
    // The real expiry reached the cache: a second run asks no endpoint.
    let before = g.seen().len();
    let mut again = check(&relay, &g, state.path(), backend);
    (r.prep)(&g, state.path(), &mut again);
    let out = run(&mut again);
    let after: Vec<String> = g
        .seen()
        .iter()
        .skip(before)
        .map(|s| s.line.clone())
        .collect();
    if out.code != 0 || !after.is_empty() {
        return Err(format!(
            "second run: exit {}, requests {after:?}: {}",
            out.code, out.stderr
        ));
    }
    Ok(())
}

#[test]
fn every_adc_shape_reaches_the_relay_with_its_own_token() {
    let keys = require_tool("openssl");
    let backend = echo_backend();
    let mut failures = Vec::new();
    for r in adc_rows(keys) {
        match run_row(&r, backend) {
            Ok(()) => eprintln!("pass: {}", r.name),
            Err(e) => failures.push(format!("FAIL: {}: {e}", r.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn access_token_files_from_the_flag_the_environment_and_gcloud() {
    let backend = echo_backend();
    let g = FakeGoogle::start();
    let token = "file-token-0123456789";
    let relay = spawn_relay(&RelaySpec::standard(PRINCIPAL, token));
    for how in [
        "--access-token-file",
        "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE",
        "gcloud property auth/access_token_file",
    ] {
        let state = tempfile::tempdir().unwrap();
        let file = common::write_token_file(state.path(), token);
        let mut cmd = check(&relay, &g, state.path(), backend);
        match how {
            "--access-token-file" => {
                cmd.arg("--access-token-file").arg(&file);
            }
            "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE" => {
                cmd.env("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", &file);
            }
            _ => {
                let cfg = state.path().join("gcloud-config/configurations");
                fs::create_dir_all(&cfg).unwrap();
                fs::write(
                    cfg.join("config_default"),
                    format!("[auth]\naccess_token_file = {}\n", file.display()),
                )
                .unwrap();
            }
        }
        let out = run(&mut cmd);
        assert_eq!(out.code, 0, "{how}: {}", out.stderr);
        assert!(
            out.stdout.contains(&format!("({how})")),
            "{how}: {}",
            out.stdout
        );
        assert!(!out.stderr.contains(token) && !out.stdout.contains(token));
    }
}

// ---------------------------------------------------------------------------------------------
// The gcloud account, through real gcloud
// ---------------------------------------------------------------------------------------------

/// Runs gcloud with `state`'s configuration folder.
fn gcloud(state: &Path, args: &[&str]) {
    let mut cmd = Command::new(tool_path("gcloud").unwrap());
    hermetic_env(&mut cmd, state);
    cmd.env("CLOUDSDK_CORE_DISABLE_USAGE_REPORTING", "true")
        .env("CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK", "true")
        .args(args);
    let out = run_with_timeout(&mut cmd, WAIT);
    assert!(
        out.status.success(),
        "gcloud {args:?}: {}",
        common::describe(&out)
    );
}

/// A gcloud whose every start is logged to `STATE/gcloud-runs`, first on PATH.
fn counting_gcloud(state: &Path) -> String {
    let bin = state.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let real = tool_path("gcloud").unwrap();
    let script = bin.join("gcloud");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\necho run >> '{}'\nexec '{}' \"$@\"\n",
            state.join("gcloud-runs").display(),
            real.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn gcloud_runs(state: &Path) -> usize {
    read_log(&state.join("gcloud-runs")).lines().count()
}

/// A gcloud configuration in `state` logged in as alice with a refresh token that the fake
/// Google's token endpoint honours (`auth/token_host`).
fn gcloud_login(state: &Path, g: &FakeGoogle, impersonate: bool) {
    gcloud(state, &["config", "set", "auth/token_host", &g.token_url()]);
    gcloud(
        state,
        &[
            "auth",
            "activate-refresh-token",
            USER_EMAIL,
            "1//fake-refresh-token",
        ],
    );
    // `gcloud config set core/project` checks the project online; write it as gcloud would.
    let config = state.join("gcloud-config/configurations/config_default");
    let text = fs::read_to_string(&config).unwrap();
    fs::write(
        &config,
        text.replacen("[core]\n", &format!("[core]\nproject = {PROJECT}\n"), 1),
    )
    .unwrap();
    assert!(
        fs::read_to_string(&config).unwrap().contains("project = "),
        "no [core] section"
    );
    if impersonate {
        let iam = format!("{}/", g.base);
        gcloud(
            state,
            &[
                "config",
                "set",
                "api_endpoint_overrides/iamcredentials",
                &iam,
            ],
        );
        gcloud(
            state,
            &[
                "config",
                "set",
                "auth/impersonate_service_account",
                IMPERSONATED,
            ],
        );
    }
}

#[test]
fn gcloud_account_plain_and_impersonating() {
    if !require_tool("gcloud") {
        return;
    }
    let backend = echo_backend();
    for (impersonate, kind, who) in [(false, "oauth", USER_EMAIL), (true, "iam", IMPERSONATED)] {
        let g = FakeGoogle::start();
        let relay = spawn_relay(&RelaySpec::standard(PRINCIPAL, &g.token(kind)));
        let state = tempfile::tempdir().unwrap();
        gcloud_login(state.path(), &g, impersonate);
        let path = counting_gcloud(state.path());
        // The project comes from gcloud's answer: HOST names only the instance and zone.
        let host = format!("{}.{}", common::INSTANCE, common::ZONE);
        let mut cmd = check_host(&relay, &g, state.path(), backend, &host);
        cmd.env("PATH", &path).arg("-v");
        let out = run(&mut cmd);
        assert_eq!(out.code, 0, "impersonate={impersonate}: {}", out.stderr);
        assert!(
            out.stdout.contains(&format!(
                "the gcloud account (gcloud config config-helper) ({who})"
            )),
            "{}",
            out.stdout
        );
        assert!(!out.stderr.contains("ya29.") && !out.stdout.contains("ya29."));
        assert!(
            out.stderr.contains("gcloud config config-helper"),
            "-v says so: {}",
            out.stderr
        );
        assert_eq!(gcloud_runs(state.path()), 1);

        // Repeat runs use the cache: no gcloud at all, and the project still comes from
        // gcloud's cached answer.
        for _ in 0..3 {
            let out = run(check_host(&relay, &g, state.path(), backend, &host).env("PATH", &path));
            assert_eq!(out.code, 0, "{}", out.stderr);
            assert!(out.stdout.contains(&format!("({who})")), "{}", out.stdout);
        }
        assert_eq!(gcloud_runs(state.path()), 1, "cached runs start no gcloud");
        if impersonate {
            continue;
        }

        // gcloud's core/custom_ca_certs_file is trusted for the relay, as --ca-file would be;
        // the changed configuration misses the cache and asks gcloud again.
        let ca = relay.ca_pem().display().to_string();
        gcloud(
            state.path(),
            &["config", "set", "core/custom_ca_certs_file", &ca],
        );
        let out = run(iap_ssh(state.path())
            .home()
            .tokeninfo_url(&g.tokeninfo_url())
            .env("PATH", &path)
            .args(["--check", "--endpoint", &relay.url, &host])
            .arg(backend.to_string()));
        assert_eq!(out.code, 0, "custom CA from gcloud: {}", out.stderr);
        assert_eq!(gcloud_runs(state.path()), 2);

        // --credentials adc passes over the active account; --credentials gcloud over
        // GOOGLE_APPLICATION_CREDENTIALS.
        let adc = write_json(&state.path().join("adc.json"), &authorized_user(&g));
        let out = run(check_host(&relay, &g, state.path(), backend, &host)
            .env("PATH", &path)
            .env("GOOGLE_APPLICATION_CREDENTIALS", &adc)
            .args(["--credentials", "adc"]));
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(
            out.stdout.contains("credentials: credentials file"),
            "{}",
            out.stdout
        );
        let out = run(check_host(&relay, &g, state.path(), backend, &host)
            .env("PATH", &path)
            .env("GOOGLE_APPLICATION_CREDENTIALS", &adc)
            .args(["--credentials", "gcloud"]));
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(
            out.stdout.contains("credentials: the gcloud account"),
            "{}",
            out.stdout
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A refused token is dropped and replaced
// ---------------------------------------------------------------------------------------------

#[test]
fn a_cached_token_the_relay_stops_accepting_is_replaced() {
    let backend = echo_backend();
    let g = FakeGoogle::start();
    let first = g.token("oauth");
    let spec = RelaySpec::standard(PRINCIPAL, &first);
    let relay = spawn_relay(&spec);
    let state = tempfile::tempdir().unwrap();
    let adc = write_json(&state.path().join("adc.json"), &authorized_user(&g));
    let cmd = || {
        let mut c = check(&relay, &g, state.path(), backend);
        c.env("GOOGLE_APPLICATION_CREDENTIALS", &adc);
        c
    };
    let out = run(&mut cmd());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(g.hits("POST /token"), 1);
    let out = run(&mut cmd());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(g.hits("POST /token"), 1, "the second run used the cache");

    // The relay stops accepting the cached token; the source would now give a new one.
    g.set_generation(2);
    let second = g.token("oauth");
    relay.reload(&RelaySpec::standard(PRINCIPAL, &second));
    let out = run(cmd().arg("-v"));
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, relay.log());
    assert_eq!(
        g.hits("POST /token"),
        2,
        "one fresh token after the refusal"
    );
    assert!(
        out.stderr
            .contains("refused the token; fetching a fresh one"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("ya29."));
    // -v names the source and the principal, never the token.
    assert!(
        out.stderr
            .contains("authorized_user, GOOGLE_APPLICATION_CREDENTIALS) as alice@example.com"),
        "{}",
        out.stderr
    );
    // And the cache now holds the new one.
    let out = run(&mut cmd());
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(g.hits("POST /token"), 2);

    // A relay that refuses every token: one retry, then a message naming the source.
    relay.reload(&RelaySpec::standard(PRINCIPAL, "nothing-we-have"));
    let out = run(&mut cmd());
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("refused the token from credentials file")
            && out.stderr.contains("authorized_user")
            && out.stderr.contains(USER_EMAIL),
        "{}",
        out.stderr
    );
    assert_eq!(g.hits("POST /token"), 3);
}

/// A scripted relay (plain ws:// on loopback) that answers its first connection with close
/// 4004 and moves the token source on to generation 2, then opens a session on the next.
/// Returns its URL and the `Authorization` headers it saw.
fn relay_asking_for_a_fresh_token(
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use futures_util::{SinkExt, StreamExt};
    use iap_ssh::frame::Frame;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let std_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let url = format!("ws://{}", std_listener.local_addr().unwrap());
    let record = seen.clone();
    thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            for n in 0..2 {
                let Ok(Ok((stream, _))) = tokio::time::timeout(WAIT, listener.accept()).await
                else {
                    return;
                };
                let record = record.clone();
                #[allow(clippy::result_large_err)] // tungstenite fixes the callback type
                let callback = move |req: &Request, mut resp: Response| {
                    let auth = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    record.lock().unwrap().push(auth);
                    resp.headers_mut().insert(
                        "Sec-WebSocket-Protocol",
                        HeaderValue::from_static("relay.tunnel.cloudproxy.app"),
                    );
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                let first = if n == 0 {
                    generation.store(2, std::sync::atomic::Ordering::SeqCst);
                    Message::Close(Some(CloseFrame {
                        code: 4004u16.into(),
                        reason: "reauthentication required".into(),
                    }))
                } else {
                    Message::Binary(Frame::ConnectSuccessSid(b"sid-1").to_bytes())
                };
                let _ = ws.send(first).await;
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
            }
        });
    });
    (url, seen)
}

#[test]
fn close_4004_at_connect_drops_the_token_from_the_library_too() {
    let g = FakeGoogle::start();
    let (url, seen) = relay_asking_for_a_fresh_token(g.generation_handle());
    let state = tempfile::tempdir().unwrap();
    let adc = write_json(&state.path().join("adc.json"), &authorized_user(&g));
    let out = run(iap_ssh(state.path())
        .home()
        .tokeninfo_url(&g.tokeninfo_url())
        .env("GOOGLE_APPLICATION_CREDENTIALS", &adc)
        .args(["--check", "--endpoint", &url, &common::dotted_host(), "22"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            "Bearer ya29.oauth-1".to_owned(),
            "Bearer ya29.oauth-2".to_owned()
        ],
        "the second handshake carried a fresh token"
    );
    assert_eq!(g.hits("POST /token"), 2);
    assert!(!out.stderr.contains("ya29.") && !out.stdout.contains("ya29."));
}

// ---------------------------------------------------------------------------------------------
// Token traffic through the tunnel's proxy
// ---------------------------------------------------------------------------------------------

/// How a proxy row names the proxy: a flag, a variable, or gcloud's configuration.
type SetProxy<'a> = Box<dyn Fn(&mut Command, &Path) + 'a>;

#[test]
fn token_traffic_goes_through_the_tunnels_proxy() {
    if !require_tool("tinyproxy") {
        return;
    }
    let backend = echo_backend();
    let proxy = spawn_tinyproxy("Info", "");
    let proxy_port = proxy.url.rsplit(':').next().unwrap().to_owned();
    let ways: [(&str, SetProxy); 3] = [
        (
            "--proxy",
            Box::new(|c: &mut Command, _: &Path| {
                c.args(["--proxy", &proxy.url]);
            }),
        ),
        (
            "HTTPS_PROXY",
            Box::new(|c: &mut Command, _: &Path| {
                c.env("HTTPS_PROXY", &proxy.url);
            }),
        ),
        (
            "gcloud proxy/*",
            Box::new(|_: &mut Command, state: &Path| {
                let cfg = state.join("gcloud-config/configurations");
                fs::create_dir_all(&cfg).unwrap();
                fs::write(
                    cfg.join("config_default"),
                    format!("[proxy]\ntype = http\naddress = 127.0.0.1\nport = {proxy_port}\n"),
                )
                .unwrap();
            }),
        ),
    ];
    for (how, set) in ways {
        let g = FakeGoogle::start();
        let relay = spawn_relay(&RelaySpec::standard(PRINCIPAL, &g.token("oauth")));
        let state = tempfile::tempdir().unwrap();
        let adc = write_json(&state.path().join("adc.json"), &authorized_user(&g));
        let mut cmd = check(&relay, &g, state.path(), backend);
        cmd.env("GOOGLE_APPLICATION_CREDENTIALS", &adc);
        set(&mut cmd, state.path());
        let out = run(&mut cmd);
        assert_eq!(out.code, 0, "{how}: {}", out.stderr);
        let log = read_log(&proxy.log);
        // tinyproxy logs each forwarded request with its absolute URL.
        for path in ["/token", "/tokeninfo"] {
            let url = format!("{}{path}", g.base);
            assert!(
                log.contains(&url),
                "{how}: {url} not in the proxy log:\n{log}"
            );
        }
        // The fake Google saw those requests arrive through the proxy (absolute URIs).
        assert!(
            g.hits("POST /token") == 1 && g.hits("POST /tokeninfo") == 1,
            "{how}"
        );
        assert!(
            log.contains(&format!("127.0.0.1:{}", relay.port())),
            "{how}: the tunnel used the proxy too:\n{log}"
        );
    }

    // The metadata server is never reached through a proxy; token-info (Google's, here a
    // second stand-in) is.
    let mds = FakeGoogle::start();
    let info = FakeGoogle::start();
    let relay = spawn_relay(&RelaySpec::standard(PRINCIPAL, &mds.token("mds")));
    let state = tempfile::tempdir().unwrap();
    let mut cmd = check(&relay, &info, state.path(), backend);
    cmd.env("GCE_METADATA_HOST", mds.authority())
        .args(["--proxy", &proxy.url]);
    let out = run(&mut cmd);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let log = read_log(&proxy.log);
    assert!(
        !log.contains(&mds.base),
        "metadata went through the proxy:\n{log}"
    );
    assert!(log.contains(&info.tokeninfo_url()), "{log}");
}

// ---------------------------------------------------------------------------------------------
// Errors name the real fault
// ---------------------------------------------------------------------------------------------

#[test]
fn errors_name_the_fault_and_never_the_token() {
    let backend = echo_backend();
    let g = FakeGoogle::start();
    let relay = spawn_relay(&RelaySpec::standard(PRINCIPAL, &g.token("oauth")));

    // A valid ADC file while the token endpoint is unreachable: network, the host, exit 1.
    let state = tempfile::tempdir().unwrap();
    let dead = common::free_port();
    let mut offline = authorized_user(&g);
    offline["token_uri"] = format!("http://127.0.0.1:{dead}/token").into();
    let adc = write_json(&state.path().join("adc.json"), &offline);
    let out =
        run(check(&relay, &g, state.path(), backend).env("GOOGLE_APPLICATION_CREDENTIALS", &adc));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("network error") && out.stderr.contains(&format!("127.0.0.1:{dead}")),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("no available authentication")
            && !out.stderr.contains("no Google credentials")
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);

    // Unusable files name the file and its type.
    let cases = [
        (
            json!({"type": "authorized_user", "client_id": "x"}),
            "authorized_user",
        ),
        (
            json!({"type": "gdch_service_account"}),
            "has type gdch_service_account",
        ),
        (json!({"no": "type"}), "has type no type"),
    ];
    for (content, part) in cases {
        let f = write_json(&state.path().join("bad.json"), &content);
        let out = run(check(&relay, &g, state.path(), backend)
            .arg("--credentials")
            .arg(&f));
        assert_eq!(out.code, 3, "{}", out.stderr);
        assert!(
            out.stderr.contains("bad.json") && out.stderr.contains(part),
            "{part}: {}",
            out.stderr
        );
    }
    let out =
        run(check(&relay, &g, state.path(), backend)
            .args(["--credentials", "/nonexistent/creds.json"]));
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("/nonexistent/creds.json"),
        "{}",
        out.stderr
    );

    // No credentials anywhere: says so at once, naming every place, with no probing.
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = check(&relay, &g, empty.path(), backend);
    cmd.env("PATH", "/usr/bin:/bin").arg("-v");
    let out = run(&mut cmd);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("no Google credentials found")
            && out.stderr.contains("GOOGLE_APPLICATION_CREDENTIALS")
            && out.stderr.contains("application_default_credentials.json")
            && out.stderr.contains("metadata server"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("looking for an ADC file"),
        "-v: {}",
        out.stderr
    );
    assert!(out.took < Duration::from_secs(2), "took {:?}", out.took);
    assert!(
        g.seen().is_empty(),
        "nothing was asked: {:?}",
        g.seen().len()
    );
}

#[test]
fn gcloud_network_failure_names_the_host() {
    if !require_tool("gcloud") {
        return;
    }
    let backend = echo_backend();
    let g = FakeGoogle::start();
    let relay = spawn_relay(&RelaySpec::standard(PRINCIPAL, &g.token("oauth")));
    let state = tempfile::tempdir().unwrap();
    gcloud_login(state.path(), &g, false);
    let dead = common::free_port();
    gcloud(
        state.path(),
        &[
            "config",
            "set",
            "auth/token_host",
            &format!("http://127.0.0.1:{dead}/token"),
        ],
    );
    // gcloud keeps its own token cache: force it to refresh by dropping it.
    let _ = fs::remove_file(state.path().join("gcloud-config/access_tokens.db"));
    let out = run(&mut check(&relay, &g, state.path(), backend));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("network error") && out.stderr.contains("127.0.0.1"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}
