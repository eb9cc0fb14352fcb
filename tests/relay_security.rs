//! iap-relay as a front door: the security matrix (every way a credential or a request can be
//! wrong, each refused with the right status or close code and an audit line), reload with
//! revocation under a live session, limits, 1,000 concurrent tunnels, and no token anywhere
//! in logs. The relay runs in this process, except for reload, which signals the binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;
mod idp;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use futures_util::{SinkExt, StreamExt};
use iap_ssh::client::auth::Token;
use iap_ssh::close::ExitKind;
use iap_ssh::frame::Frame;
use iap_ssh::wire::tls_config;
use idp::{
    AUDIENCE, ISSUER, Signer, b64, claims, jwt, now, signer, tokeninfo_endpoint, tokeninfo_section,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio_tungstenite::tungstenite::Message;

struct Setup<R> {
    relay: R,
    dir: tempfile::TempDir,
    signer: Signer,
    echo_port: u16,
    audit: PathBuf,
}

/// A relay with every method and a policy exercising every condition, with `limits`.
fn spec(limits: Limits) -> Setup<RelaySpec> {
    let dir = tempfile::tempdir().unwrap();
    let signer = signer("k1");
    std::fs::write(dir.path().join("jwks.json"), &signer.jwks).unwrap();
    let echo_port = echo_backend();
    let audit = dir.path().join("audit.jsonl");
    let tokeninfo = tokeninfo_endpoint("ti-good-token-123");
    let spec = RelaySpec {
        audit_log: Some(audit.clone()),
        limits,
        jwt: vec![
            JwtIssuer::with_file(ISSUER, AUDIENCE, dir.path().join("jwks.json"))
                .domains(&["example.com"]),
        ],
        tokeninfo: Some(tokeninfo_section(&tokeninfo)),
        groups: vec![(
            "group:ops".into(),
            vec![
                "user:jwt-user@example.com".into(),
                "user:tina@example.com".into(),
            ],
        )],
        dest_groups: vec![DestGroup {
            project: PROJECT.into(),
            region: "test-region".into(),
            name: "loopback".into(),
            cidrs: vec!["127.0.0.0/8".into()],
            fqdns: vec!["localhost".into(), "outside.invalid".into()],
        }],
        tokens: vec![
            ("user:alice@example.com".into(), "static-alice-token".into()),
            (
                "user:mallory@example.com".into(),
                "static-mallory-token".into(),
            ),
            ("user:old@example.com".into(), "static-old-token".into()),
        ],
        instances: vec![Instance::standard()],
        bindings: vec![
            Binding::new(
                &["user:alice@example.com", "group:ops"],
                &format!("projects/{PROJECT}"),
            )
            .ports(&[echo_port]),
            Binding::new(
                &["user:alice@example.com"],
                &format!("projects/{PROJECT}/iap_tunnel/locations/test-region/destGroups/loopback"),
            ),
            Binding::new(&["user:old@example.com"], &format!("projects/{PROJECT}"))
                .expires("2020-01-01T00:00:00Z"),
        ],
        ..RelaySpec::default()
    };
    Setup {
        relay: spec,
        dir,
        signer,
        echo_port,
        audit,
    }
}

/// [`spec`] served in this process.
fn setup(limits: Limits) -> Setup<RelayGuard> {
    let s = spec(limits);
    Setup {
        relay: spawn_relay_in_process(&s.relay),
        dir: s.dir,
        signer: s.signer,
        echo_port: s.echo_port,
        audit: s.audit,
    }
}

/// What happened to one tunnel request.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Refused at the upgrade with this exit kind (401 → Authentication).
    Http(ExitKind, String),
    /// Upgraded, then closed with this code before any session id.
    Closed(u16),
    /// A session id arrived.
    Open,
}

async fn attempt(relay: &RelayEndpoint, token: &str, query: &str) -> Outcome {
    let dialer = dialer(relay, "security-matrix");
    let token = match Token::new(token) {
        Ok(t) => t,
        Err(_) => return Outcome::Http(ExitKind::Authentication, "unsendable".into()),
    };
    let mut ws = match dialer.open("connect", query, &token).await {
        Ok(ws) => ws,
        Err(e) => return Outcome::Http(e.kind, e.message),
    };
    match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(f))))) => Outcome::Closed(u16::from(f.code)),
        Ok(Some(Ok(Message::Binary(b))))
            if matches!(Frame::decode(&b), Ok(Frame::ConnectSuccessSid(_))) =>
        {
            Outcome::Open
        }
        other => panic!("unexpected first message: {other:?}"),
    }
}

fn host_query(host: &str, port: u16, group: Option<&str>) -> String {
    let mut q = format!(
        "project={PROJECT}&port={port}&newWebsocket=True&region=test-region&network=default&host={host}"
    );
    if let Some(g) = group {
        q.push_str(&format!("&group={g}"));
    }
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_matrix() {
    let s = tokio::task::spawn_blocking(|| setup(Limits::default()))
        .await
        .unwrap();
    let p = s.echo_port;
    let sg = &s.signer;
    let t = now();
    let good = |email: &str| jwt(sg, "k1", claims(email, ISSUER, AUDIENCE, t + 600, t - 10));
    let other_signer = signer("k1");
    let tampered = {
        let token = good("jwt-user@example.com");
        let (rest, sig) = token.rsplit_once('.').unwrap();
        let mut sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .unwrap();
        sig[5] ^= 1;
        format!("{rest}.{}", b64(&sig))
    };
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(
            claims("jwt-user@example.com", ISSUER, AUDIENCE, t + 600, t - 10)
                .to_string()
                .as_bytes()
        )
    );
    // HS256 "signed" with the issuer's public key: the classic algorithm-confusion attack.
    let hs_confusion = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(
            &header,
            &claims("jwt-user@example.com", ISSUER, AUDIENCE, t + 600, t - 10),
            &EncodingKey::from_secret(sg.public_pem.as_bytes()),
        )
        .unwrap()
    };
    let unknown_kid = jwt(
        sg,
        "k9",
        claims("jwt-user@example.com", ISSUER, AUDIENCE, t + 600, t - 10),
    );
    let wrong_key = jwt(
        &other_signer,
        "k1",
        claims("jwt-user@example.com", ISSUER, AUDIENCE, t + 600, t - 10),
    );
    let auth = ExitKind::Authentication;
    // (name, token, query, outcome, audit reason)
    let rows: Vec<(&str, String, String, Outcome, &str)> = vec![
        (
            "static token",
            "static-alice-token".into(),
            connect_query(p),
            Outcome::Open,
            "",
        ),
        (
            "jwt via group",
            good("jwt-user@example.com"),
            connect_query(p),
            Outcome::Open,
            "",
        ),
        (
            "token-info via group",
            "ti-good-token-123".into(),
            connect_query(p),
            Outcome::Open,
            "",
        ),
        (
            "malformed token",
            "eyJ.not.a-jwt".into(),
            connect_query(p),
            Outcome::Http(auth, String::new()),
            "malformed",
        ),
        (
            "expired",
            jwt(
                sg,
                "k1",
                claims("jwt-user@example.com", ISSUER, AUDIENCE, t - 3600, t - 7200),
            ),
            connect_query(p),
            Outcome::Http(auth, String::new()),
            "expired",
        ),
        (
            "not yet valid",
            jwt(
                sg,
                "k1",
                claims("jwt-user@example.com", ISSUER, AUDIENCE, t + 7200, t + 3600),
            ),
            connect_query(p),
            Outcome::Http(auth, String::new()),
            "not_yet_valid",
        ),
        (
            "wrong issuer",
            jwt(
                sg,
                "k1",
                claims(
                    "jwt-user@example.com",
                    "https://evil.test",
                    AUDIENCE,
                    t + 600,
                    t - 10,
                ),
            ),
            connect_query(p),
            Outcome::Http(auth, String::new()),
            "wrong_issuer",
        ),
        (
            "wrong audience",
            jwt(
                sg,
                "k1",
                claims(
                    "jwt-user@example.com",
                    ISSUER,
                    "someone-else",
                    t + 600,
                    t - 10,
                ),
            ),
            connect_query(p),
            Outcome::Http(auth, String::new()),
            "wrong_audience",
        ),
        (
            "alg none",
            alg_none,
            connect_query(p),
            Outcome::Http(auth, String::new()),
            "malformed",
        ),
        (
            "HS256 with the public key",
            hs_confusion,
            connect_query(p),
            Outcome::Http(auth, String::new()),
            "bad_algorithm",
        ),
        (
            "unknown kid",
            unknown_kid,
            connect_query(p),
            Outcome::Http(auth, String::new()),
            "unknown_key",
        ),
        (
            "tampered signature",
            tampered,
            connect_query(p),
            Outcome::Http(auth, String::new()),
            "bad_signature",
        ),
        (
            "signed by another key",
            wrong_key,
            connect_query(p),
            Outcome::Http(auth, String::new()),
            "bad_signature",
        ),
        (
            "revoked (unknown) static token",
            "static-revoked-token".into(),
            connect_query(p),
            Outcome::Http(auth, String::new()),
            "unknown_token",
        ),
        (
            "token-info refuses",
            "ti-bad-token-456".into(),
            connect_query(p),
            Outcome::Http(auth, String::new()),
            "unknown_token",
        ),
        (
            "principal without binding",
            "static-mallory-token".into(),
            connect_query(p),
            Outcome::Closed(4033),
            "no binding",
        ),
        (
            "binding with wrong port",
            "static-alice-token".into(),
            connect_query(22),
            Outcome::Closed(4033),
            "does not allow port 22",
        ),
        (
            "expired binding",
            "static-old-token".into(),
            connect_query(p),
            Outcome::Closed(4033),
            "has expired",
        ),
        (
            "target outside inventory",
            "static-alice-token".into(),
            connect_query(p).replace(INSTANCE, "vm-404"),
            Outcome::Closed(4047),
            "not in inventory",
        ),
        (
            "host mode inside group",
            "static-alice-token".into(),
            host_query("127.0.0.1", p, Some("loopback")),
            Outcome::Open,
            "",
        ),
        (
            "host mode FQDN inside group",
            "static-alice-token".into(),
            host_query("localhost", p, None),
            Outcome::Open,
            "",
        ),
        (
            "host outside the group",
            "static-alice-token".into(),
            host_query("10.9.8.7", p, Some("loopback")),
            Outcome::Closed(4033),
            "outside every destination group",
        ),
        (
            "host in no group",
            "static-alice-token".into(),
            host_query("192.0.2.1", p, None),
            Outcome::Closed(4033),
            "outside every destination group",
        ),
        (
            "unknown destination group",
            "static-alice-token".into(),
            host_query("127.0.0.1", p, Some("nope")),
            Outcome::Closed(4047),
            "not in inventory",
        ),
        (
            "FQDN resolving outside",
            "static-alice-token".into(),
            host_query("outside.invalid", p, Some("loopback")),
            Outcome::Closed(4033),
            "does not resolve",
        ),
    ];
    let mut results = Vec::new();
    for (name, token, query, want, reason) in &rows {
        let before = audit_lines(&s.audit).len();
        let got = attempt(&s.relay, token, query).await;
        let got = match got {
            Outcome::Http(kind, message) => {
                assert!(
                    !message.contains(token.as_str()),
                    "{name}: token in the client's message"
                );
                Outcome::Http(kind, String::new())
            }
            other => other,
        };
        assert_eq!(&got, want, "{name}");
        if !reason.is_empty() {
            // The audit line may trail the close by a moment.
            let started = Instant::now();
            loop {
                let lines = audit_lines(&s.audit);
                if lines[before.min(lines.len())..]
                    .iter()
                    .any(|l| l["reason"].as_str().is_some_and(|r| r.contains(reason)))
                {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "{name}: no audit line with {reason:?}: {lines:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        results.push(format!("{name}: {got:?}"));
    }
    eprintln!("security matrix:\n  {}", results.join("\n  "));

    // No token, no header at all: 401 with WWW-Authenticate.
    let raw = tokio::task::spawn_blocking({
        let addr = s.relay.addr;
        let ca = s.relay.ca_pem().to_owned();
        move || raw_https_get(addr, &ca, "/v4/connect?project=p&port=22&zone=z&instance=i")
    })
    .await
    .unwrap();
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{raw}"
    );

    // Nothing secret in the relay's log or the audit file.
    let everything = format!(
        "{}\n{}",
        s.relay.log(),
        std::fs::read_to_string(&s.audit).unwrap()
    );
    for (name, token, ..) in &rows {
        assert!(
            !everything.contains(token.as_str()),
            "{name}: token in the logs"
        );
    }
    for secret in [
        "static-alice-token",
        "ti-good-token-123",
        "ti-bad-token-456",
    ] {
        assert!(!everything.contains(secret), "{secret} in the logs");
    }
    drop(s.dir);
}

/// A plain GET over TLS without the WebSocket headers, to see the raw refusal.
fn raw_https_get(addr: std::net::SocketAddr, ca: &Path, path: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tls = tls_config(Some(ca)).unwrap();
        let mut cfg = (*tls).clone();
        cfg.alpn_protocols.clear();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut stream = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    })
}

#[test]
fn limits_per_principal_and_handshake_timeout() {
    let s = setup(Limits {
        max_connections_per_principal: Some(2),
        handshake_timeout_secs: Some(1),
        ..Limits::default()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dialer = dialer(&s.relay, "security-matrix");
        let token = Token::new("static-alice-token").unwrap();
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut ws = dialer
                .open("connect", &connect_query(s.echo_port), &token)
                .await
                .expect("within the limit");
            assert!(matches!(ws.next().await, Some(Ok(Message::Binary(_)))));
            held.push(ws);
        }
        match dialer
            .open("connect", &connect_query(s.echo_port), &token)
            .await
        {
            Err(e) => assert!(e.message.contains("429"), "{}", e.message),
            Ok(_) => panic!("the third tunnel of one principal was accepted"),
        }
        // Another principal is not affected.
        let other = Token::new("ti-good-token-123").unwrap();
        assert!(
            dialer
                .open("connect", &connect_query(s.echo_port), &other)
                .await
                .is_ok()
        );
        // Closing one frees a place.
        let mut first = held.remove(0);
        let _ = first.close(None).await;
        drop(first);
        let started = Instant::now();
        loop {
            if let Ok(mut ws) = dialer
                .open("connect", &connect_query(s.echo_port), &token)
                .await
            {
                assert!(matches!(ws.next().await, Some(Ok(Message::Binary(_)))));
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the place was not freed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // A client that connects and says nothing is dropped after the handshake timeout.
    let mut silent = std::net::TcpStream::connect(s.relay.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the relay to close");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "dropped after {waited:?}"
    );
    s.relay.wait_for_log("handshake timed out", 1);
}

/// 1,000 tunnels at once through one relay, each echoing its own data.
#[test]
fn a_thousand_concurrent_tunnels() {
    // All from one address at once: above the default per-address handshake limit (256).
    let s = setup(Limits {
        max_handshakes_per_address: Some(1000),
        ..Limits::default()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let intact = rt.block_on(async {
        let dialer = Arc::new(dialer(&s.relay, "security-matrix"));
        let token = Token::new("static-alice-token").unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..1000u32 {
            let (dialer, token, query) =
                (dialer.clone(), token.clone(), connect_query(s.echo_port));
            tasks.spawn(async move {
                let mut ws = dialer
                    .open("connect", &query, &token)
                    .await
                    .map_err(|e| e.message)?;
                match ws.next().await {
                    Some(Ok(Message::Binary(_))) => {}
                    other => return Err(format!("no session id: {other:?}")),
                }
                let payload: Vec<u8> = (0..4096u32)
                    .map(|j| (i.wrapping_mul(31).wrapping_add(j)) as u8)
                    .collect();
                ws.send(Message::Binary(Frame::Data(&payload).to_bytes()))
                    .await
                    .map_err(|e| e.to_string())?;
                let mut back = Vec::new();
                while back.len() < payload.len() {
                    match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
                        Ok(Some(Ok(Message::Binary(b)))) => {
                            if let Ok(Frame::Data(d)) = Frame::decode(&b) {
                                back.extend_from_slice(d);
                            }
                        }
                        other => return Err(format!("tunnel {i}: {other:?}")),
                    }
                }
                let _ = ws.close(None).await;
                Ok(back == payload)
            });
        }
        let mut intact = 0;
        while let Some(done) = tasks.join_next().await {
            match done.unwrap() {
                Ok(true) => intact += 1,
                Ok(false) => panic!("echoed data differs"),
                Err(e) => panic!("{e}"),
            }
        }
        intact
    });
    assert_eq!(intact, 1000);
    eprintln!(
        "1000 concurrent tunnels echoed 4 KiB each in {:?}",
        started.elapsed()
    );
}

/// SIGHUP with a binding removed ends a live ssh session, and the audit log says why; a bad
/// configuration is refused and the old one kept.
#[test]
fn reload_revokes_a_live_ssh_session() {
    if !require_openssh() {
        return;
    }
    // Signals: the relay runs as its own process.
    let mut s = spec(Limits::default());
    let relay = spawn_relay(&s.relay);
    let sshd = spawn_sshd();
    let token_file = write_token_file(&sshd.subdir("secrets"), "static-alice-token");
    // The instance's port must be allowed: add sshd's port to the port condition.
    s.relay.bindings[0].ports = Some(vec![s.echo_port, sshd.port]);
    relay.reload(&s.relay);

    let mut cmd = ssh_command("ssh", &sshd);
    cmd.args(ssh_base_args(
        &sshd,
        &proxy_command(&relay, &token_file, ""),
    ))
    .arg(dotted_host())
    .arg("echo started; sleep 60; echo finished")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .stdin(std::process::Stdio::null());
    let mut child = ChildGuard::new(cmd.spawn().unwrap());
    let mut out = child.child_mut().stdout.take().unwrap();
    let mut first = [0u8; 8];
    out.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"started\n");

    // A broken configuration is refused; the session lives on.
    std::fs::write(&relay.config_path, "this is not toml").unwrap();
    relay.signal(rustix::process::Signal::HUP);
    relay.wait_for_log("reload failed", 1);
    assert!(
        child.try_wait().is_none(),
        "a failed reload ended the session"
    );

    // Remove alice from the project binding and reload: the session ends at once.
    s.relay.bindings[0].members = vec!["group:ops".into()];
    std::fs::write(
        &relay.config_path,
        s.relay.to_toml(Some(("relay-cert.pem", "relay-key.pem"))),
    )
    .unwrap();
    let started = Instant::now();
    relay.signal(rustix::process::Signal::HUP);
    while child.try_wait().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the revoked session is still running"
        );
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("revoked session ended {:?} after SIGHUP", started.elapsed());
    let lines = audit_lines(&s.audit);
    assert!(
        lines.iter().any(|l| l["event"] == "close"
            && l["code"] == 4033
            && l["reason"].as_str().is_some_and(|r| r.contains("revoked"))),
        "{lines:?}"
    );
}

/// A JWKS served at a URL: fetched at start-up, refetched once when a token names an unknown
/// `kid` (key rotation), and not refetched again for every garbage `kid` that follows.
#[test]
fn jwks_url_rotation() {
    let first = signer("k1");
    let second = signer("k2");
    let third = signer("k3");
    let keys_of = |s: &idp::Signer| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&s.jwks).unwrap()["keys"][0].clone()
    };
    let served = Arc::new(std::sync::Mutex::new(
        serde_json::json!({"keys": [keys_of(&first)]}).to_string(),
    ));
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    {
        let (served, fetches) = (served.clone(), fetches.clone());
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut conn = conn;
                let mut buf = [0u8; 2048];
                let _ = conn.read(&mut buf);
                fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = served.lock().unwrap().clone();
                let _ = std::io::Write::write_all(
                    &mut conn,
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes(),
                );
            }
        });
    }
    let spec = RelaySpec {
        instances: vec![Instance::standard()],
        bindings: vec![Binding::new(
            &["user:dev@example.com"],
            &format!("projects/{PROJECT}"),
        )],
        jwt: vec![JwtIssuer::with_url(ISSUER, AUDIENCE, &url)],
        ..RelaySpec::default()
    };
    let relay = spawn_relay_in_process(&spec);
    assert_eq!(
        fetches.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "fetched at start-up"
    );
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    thread::spawn(move || for _s in echo.incoming() {});
    let t = now();
    let token = |s: &idp::Signer, kid: &str| {
        jwt(
            s,
            kid,
            claims("dev@example.com", ISSUER, AUDIENCE, t + 600, t - 10),
        )
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(
            attempt(&relay, &token(&first, "k1"), &connect_query(port)).await,
            Outcome::Open
        );
        // The issuer rotates to k2: the first k2 token triggers one refetch and is accepted.
        *served.lock().unwrap() =
            serde_json::json!({"keys": [keys_of(&first), keys_of(&second)]}).to_string();
        assert_eq!(
            attempt(&relay, &token(&second, "k2"), &connect_query(port)).await,
            Outcome::Open
        );
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 2);
        // Unknown kids right after are refused without hammering the issuer.
        for _ in 0..5 {
            assert!(matches!(
                attempt(&relay, &token(&third, "k3"), &connect_query(port)).await,
                Outcome::Http(ExitKind::Authentication, _)
            ));
        }
        assert_eq!(
            fetches.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "refetches are rate-limited"
        );
    });
}
