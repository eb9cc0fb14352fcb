//! Identity checks of iap-relay against a hostile user, through real sockets (the relay served
//! in this process; `--check-config` runs the binary): token-info tokens issued to other OAuth apps or without the scope, lookup
//! amplification with random tokens, unverified JWT emails, one issuer asserting another's
//! users, fractional `exp`, and a slow JWKS URL that must not hold up logins with known keys.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;
mod idp;

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use iap_ssh::client::auth::Token;
use iap_ssh::client::dial::{Dialer, Endpoint};
use iap_ssh::frame::Frame;
use iap_ssh::wire::{SUBPROTOCOL, tls_config};
use idp::{
    AUDIENCE, CLIENT_ID, CLOUD_PLATFORM, ISSUER, Signer, claims, jwt, now, signer,
    tokeninfo_answer, tokeninfo_section, tokeninfo_server,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn query() -> String {
    format!(
        "project={PROJECT}&port=22&newWebsocket=True&zone={ZONE}&instance={INSTANCE}&interface=nic0"
    )
}

/// A plain `ws://` relay served in this process with an audit log, the test instance granted
/// to `members`, and the identity sources and limits of `spec`.
fn relay_with(spec: RelaySpec, members: &[&str]) -> (RelayGuard, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let spec = RelaySpec {
        instances: vec![Instance::standard()],
        bindings: vec![Binding::new(members, &format!("projects/{PROJECT}"))],
        audit_log: Some(audit.clone()),
        ..spec.plaintext()
    };
    (spawn_relay_in_process(&spec), audit, dir)
}

/// A spec with only `jwt`.
fn jwt_spec(jwt: Vec<JwtIssuer>) -> RelaySpec {
    RelaySpec {
        jwt,
        ..RelaySpec::default()
    }
}

/// A spec with only `[tokeninfo]`.
fn tokeninfo_spec(tokeninfo: TokenInfo) -> RelaySpec {
    RelaySpec {
        tokeninfo: Some(tokeninfo),
        ..RelaySpec::default()
    }
}

/// The HTTP status of a WebSocket upgrade to `/v4/connect` with `token`, sent from `from`:
/// 101 means the token was accepted (the policy is checked after the upgrade).
async fn upgrade_status(relay: SocketAddr, from: IpAddr, token: &str) -> u16 {
    upgrade_answer(relay, from, token)
        .await
        .unwrap_or_else(|| panic!("the relay closed without an answer"))
}

/// As [`upgrade_status`], `None` when the relay closes the connection without an answer.
async fn upgrade_answer(relay: SocketAddr, from: IpAddr, token: &str) -> Option<u16> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(relay).await.unwrap();
    let request = format!(
        "GET /v4/connect?{} HTTP/1.1\r\nHost: {relay}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\nAuthorization: Bearer {token}\r\n\r\n",
        query()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        while !head.windows(2).any(|w| w == b"\r\n") {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to the upgrade");
    if head.is_empty() {
        return None;
    }
    let line = String::from_utf8_lossy(&head).to_string();
    Some(
        line.split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {line:?}")),
    )
}

fn localhost() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

fn audit_reasons(path: &Path) -> Vec<String> {
    audit_lines(path)
        .into_iter()
        .filter_map(|l| l["reason"].as_str().map(str::to_owned))
        .collect()
}

/// Waits (bounded) for an audit line whose reason contains `want`.
fn wait_for_reason(path: &Path, want: &str) {
    let started = Instant::now();
    while !audit_reasons(path).iter().any(|r| r.contains(want)) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no audit reason {want:?} in {:?}",
            audit_reasons(path)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `iap-relay --check-config` on `toml`: the one-line error when it refuses.
fn check_config(toml: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), signer("k1").jwks).unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, toml).unwrap();
    let mut cmd = std::process::Command::new(iap_relay_bin());
    hermetic_env(&mut cmd, dir.path());
    let out = run_with_timeout(
        cmd.arg("--config").arg(&path).arg("--check-config"),
        Duration::from_secs(30),
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// An access token a user gave some other app ("Sign in with Google": `openid email`), or
/// one for this relay's client but without the cloud-platform scope, does not name the user
/// here. Without `allowed_client_ids` or `required_scopes` the relay does not start.
#[test]
fn tokeninfo_accepts_only_allowed_clients_with_the_required_scope() {
    let good_scope = format!("openid {CLOUD_PLATFORM} email");
    let mut aud_only = tokeninfo_answer("tina@example.com", CLIENT_ID, &good_scope);
    aud_only.as_object_mut().unwrap().remove("azp");
    let mut unverified = tokeninfo_answer("tina@example.com", CLIENT_ID, &good_scope);
    unverified["email_verified"] = "false".into();
    let other_app = "555-other.apps.googleusercontent.com";
    let mut other_azp = tokeninfo_answer("tina@example.com", CLIENT_ID, &good_scope);
    other_azp["azp"] = other_app.into();
    let endpoint = tokeninfo_server(vec![
        (
            "ti-good".into(),
            tokeninfo_answer("tina@example.com", CLIENT_ID, &good_scope),
        ),
        ("ti-aud-only".into(), aud_only),
        (
            "ti-sign-in-app".into(),
            tokeninfo_answer("tina@example.com", other_app, "openid email"),
        ),
        (
            "ti-other-app-cloud".into(),
            tokeninfo_answer("tina@example.com", other_app, CLOUD_PLATFORM),
        ),
        ("ti-other-azp".into(), other_azp),
        (
            "ti-no-scope".into(),
            tokeninfo_answer("tina@example.com", CLIENT_ID, "openid email"),
        ),
        ("ti-unverified".into(), unverified),
    ]);
    let (relay, audit, _dir) = relay_with(
        tokeninfo_spec(tokeninfo_section(&endpoint.url)),
        &["user:tina@example.com"],
    );
    let rows = [
        ("ti-good", 101, ""),
        ("ti-aud-only", 101, ""),
        ("ti-sign-in-app", 401, "wrong_client"),
        ("ti-other-app-cloud", 401, "wrong_client"),
        ("ti-other-azp", 401, "wrong_client"),
        ("ti-no-scope", 401, "missing_scope"),
        ("ti-unverified", 401, "no_identity"),
    ];
    runtime().block_on(async {
        for (token, want, reason) in rows {
            let got = upgrade_status(relay.addr, localhost(), token).await;
            assert_eq!(got, want, "{token}");
            if !reason.is_empty() {
                wait_for_reason(&audit, reason);
            }
        }
    });
    assert!(!relay.log().contains("ti-"), "a token in the log");

    let url = Some(endpoint.url.clone());
    for (table, setting) in [
        (
            TokenInfo {
                url: url.clone(),
                required_scopes: vec![CLOUD_PLATFORM.into()],
                ..TokenInfo::default()
            },
            "allowed_client_ids",
        ),
        (
            TokenInfo {
                url: url.clone(),
                allowed_client_ids: vec![CLIENT_ID.into()],
                ..TokenInfo::default()
            },
            "required_scopes",
        ),
    ] {
        let err = check_config(&tokeninfo_spec(table).to_toml(None)).unwrap_err();
        assert!(
            err.contains(&format!("[tokeninfo]: {setting} must list")),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// Random tokens from one address cost at most the per-address burst of token-info lookups
/// (plus the refill while they run); a refused token asked again costs nothing; an honest
/// token from another address still works.
#[test]
fn tokeninfo_lookups_are_bounded_per_address() {
    let endpoint = tokeninfo_server(vec![(
        "ti-honest".into(),
        tokeninfo_answer(
            "tina@example.com",
            CLIENT_ID,
            &format!("openid {CLOUD_PLATFORM}"),
        ),
    )]);
    let (relay, audit, _dir) = relay_with(
        tokeninfo_spec(tokeninfo_section(&endpoint.url)),
        &["user:tina@example.com"],
    );
    let attacker = localhost();
    let honest = IpAddr::from([127, 0, 0, 2]);
    let random = 300;
    let rt = runtime();
    let started = Instant::now();
    let statuses: Vec<u16> = rt.block_on(async {
        let mut all = Vec::new();
        for batch in 0..random / 20 {
            let tasks: Vec<_> = (0..20)
                .map(|i| {
                    let token = format!("ti-random-{batch}-{i}-{}", random_hex(16));
                    let addr = relay.addr;
                    tokio::spawn(async move { upgrade_status(addr, attacker, &token).await })
                })
                .collect();
            for t in tasks {
                all.push(t.await.unwrap());
            }
        }
        all
    });
    let took = started.elapsed();
    let lookups = endpoint.lookups.load(Ordering::SeqCst);
    eprintln!("{random} random tokens in {took:?}: {lookups} token-info lookups");
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    // 20 at once, then one every 2 s.
    let bound = 20 + (took.as_secs_f64() / 2.0).ceil() as usize;
    assert!(lookups <= bound, "{lookups} lookups (bound {bound})");
    wait_for_reason(&audit, "throttled");

    rt.block_on(async {
        let before = endpoint.lookups.load(Ordering::SeqCst);
        assert_eq!(upgrade_status(relay.addr, honest, "ti-honest").await, 101);
        assert_eq!(endpoint.lookups.load(Ordering::SeqCst), before + 1);
        // A refused token is remembered: asking again costs no lookup.
        let third = IpAddr::from([127, 0, 0, 3]);
        for _ in 0..5 {
            assert_eq!(upgrade_status(relay.addr, third, "ti-wrong").await, 401);
        }
        assert_eq!(endpoint.lookups.load(Ordering::SeqCst), before + 2);
    });
}

/// A JWT whose `email` the issuer has not verified does not name that user.
#[test]
fn jwt_email_must_be_verified() {
    let dir = tempfile::tempdir().unwrap();
    let s = signer("k1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, &s.jwks).unwrap();
    let (relay, audit, _d) = relay_with(
        jwt_spec(vec![JwtIssuer::with_file(ISSUER, AUDIENCE, &jwks)]),
        &["user:dev@example.com"],
    );
    let t = now();
    let token = |verified: Option<serde_json::Value>| {
        let mut c = claims("dev@example.com", ISSUER, AUDIENCE, t + 600, t - 10);
        match verified {
            Some(v) => c["email_verified"] = v,
            None => {
                c.as_object_mut().unwrap().remove("email_verified");
            }
        }
        jwt(&s, "k1", c)
    };
    runtime().block_on(async {
        for (verified, want) in [
            (Some(true.into()), 101),
            (Some("true".into()), 101),
            (Some(false.into()), 401),
            (Some("false".into()), 401),
            (None, 401),
        ] {
            let got = upgrade_status(relay.addr, localhost(), &token(verified.clone())).await;
            assert_eq!(got, want, "email_verified {verified:?}");
        }
    });
    wait_for_reason(&audit, "email_not_verified");
}

/// With two issuers, the CI issuer cannot sign in as a corporate user (nor get their
/// `domain:` bindings); each asserts only its own domains. Two issuers with no limit do not
/// start.
#[test]
fn an_issuer_asserts_only_its_own_domains() {
    let dir = tempfile::tempdir().unwrap();
    let (corp, ci) = (signer("corp-1"), signer("ci-1"));
    let (corp_jwks, ci_jwks) = (dir.path().join("corp.json"), dir.path().join("ci.json"));
    std::fs::write(&corp_jwks, &corp.jwks).unwrap();
    std::fs::write(&ci_jwks, &ci.jwks).unwrap();
    let ci_issuer = "https://ci.test";
    let extra = jwt_spec(vec![
        JwtIssuer::with_file(ISSUER, AUDIENCE, &corp_jwks).domains(&["example.com"]),
        JwtIssuer::with_file(ci_issuer, AUDIENCE, &ci_jwks).domains(&["ci.example.com"]),
    ]);
    let (relay, audit, _d) = relay_with(
        extra,
        &["domain:example.com", "user:builder@ci.example.com"],
    );
    let t = now();
    let token = |s: &Signer, kid: &str, iss: &str, email: &str| {
        jwt(s, kid, claims(email, iss, AUDIENCE, t + 600, t - 10))
    };
    runtime().block_on(async {
        for (what, token, want) in [
            (
                "corp user",
                token(&corp, "corp-1", ISSUER, "alice@example.com"),
                101,
            ),
            (
                "corp user, other case",
                token(&corp, "corp-1", ISSUER, "Bob@EXAMPLE.com"),
                101,
            ),
            (
                "ci builder",
                token(&ci, "ci-1", ci_issuer, "builder@ci.example.com"),
                101,
            ),
            (
                "ci as a corp user",
                token(&ci, "ci-1", ci_issuer, "alice@example.com"),
                401,
            ),
            (
                "ci as another domain",
                token(&ci, "ci-1", ci_issuer, "x@evil.test"),
                401,
            ),
            (
                "ci, domain as suffix",
                token(&ci, "ci-1", ci_issuer, "x@evilci.example.com.evil"),
                401,
            ),
            (
                "corp as a ci name",
                token(&corp, "corp-1", ISSUER, "builder@ci.example.com"),
                401,
            ),
        ] {
            assert_eq!(
                upgrade_status(relay.addr, localhost(), &token).await,
                want,
                "{what}"
            );
        }
    });
    wait_for_reason(&audit, "identity_outside_issuer");

    let unconfined = jwt_spec(vec![
        JwtIssuer::with_file(ISSUER, AUDIENCE, "jwks.json"),
        JwtIssuer::with_file(ci_issuer, AUDIENCE, "jwks.json"),
    ]);
    let err = check_config(&unconfined.to_toml(None)).unwrap_err();
    assert!(err.contains("set allowed_domains"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// A token whose `exp` is fractional still ends its session with 4004 when it expires, and
/// a NumericDate that is not a non-negative number is refused.
#[test]
fn fractional_exp_ends_the_session_with_4004() {
    let dir = tempfile::tempdir().unwrap();
    let s = signer("k1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, &s.jwks).unwrap();
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    thread::spawn(move || {
        for c in echo.incoming().flatten() {
            thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 1024];
                while c.read(&mut buf).is_ok_and(|n| n > 0) {}
            });
        }
    });
    let (relay, _audit, _d) = relay_with(
        jwt_spec(vec![JwtIssuer::with_file(ISSUER, AUDIENCE, &jwks)]),
        &["user:dev@example.com"],
    );
    let t = now();
    let with = |name: &str, value: serde_json::Value| {
        let mut c = claims("dev@example.com", ISSUER, AUDIENCE, t + 600, t - 10);
        c[name] = value;
        jwt(&s, "k1", c)
    };
    runtime().block_on(async {
        for (name, value) in [
            ("exp", serde_json::json!(-5.0)),
            ("exp", serde_json::json!(format!("{}", t + 600))),
            ("nbf", serde_json::json!(format!("{}", t + 3600))),
            ("nbf", serde_json::json!(-1)),
        ] {
            let got = upgrade_status(relay.addr, localhost(), &with(name, value.clone())).await;
            assert_eq!(got, 401, "{name} = {value}");
        }

        let dialer = Dialer {
            endpoint: Endpoint::parse(&relay.url).unwrap(),
            tls: tls_config(None).unwrap(),
            user_agent: "identity-tests".into(),
        };
        let token = with("exp", serde_json::json!(now() as f64 + 2.5));
        let query = format!(
            "project={PROJECT}&port={port}&newWebsocket=True&zone={ZONE}&instance={INSTANCE}&interface=nic0"
        );
        let started = Instant::now();
        let mut ws = dialer
            .open("connect", &query, &Token::new(&token).unwrap())
            .await
            .unwrap();
        let first = ws.next().await;
        assert!(
            matches!(&first, Some(Ok(Message::Binary(b))) if matches!(Frame::decode(b), Ok(Frame::ConnectSuccessSid(_)))),
            "{first:?}"
        );
        let code = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Close(Some(frame)) = message {
                    return Some(u16::from(frame.code));
                }
            }
            None
        })
        .await;
        let waited = started.elapsed();
        eprintln!("close {code:?} after {waited:?}");
        assert_eq!(code, Ok(Some(4004)), "no 4004 within 10 s of a 2.5 s token");
        assert!(waited >= Duration::from_millis(1500), "closed after {waited:?}");
    });
}

/// A JWKS URL answering `first` at once (the relay's start-up fetch), then `later` after
/// `delay`; with its fetch count.
fn slow_jwks(first: String, later: String, delay: Duration) -> (String, Arc<AtomicUsize>) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let count = fetches.clone();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let n = count.fetch_add(1, Ordering::SeqCst);
            let body = if n == 0 { first.clone() } else { later.clone() };
            thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 2048];
                let _ = conn.read(&mut buf);
                if n > 0 {
                    thread::sleep(delay);
                }
                let _ = std::io::Write::write_all(
                    &mut conn,
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes(),
                );
            });
        }
    });
    (url, fetches)
}

/// A JWKS URL that answers slowly: tokens with random `kid`s make the relay refetch it, and
/// meanwhile a token with a known `kid` is verified at once. One refetch runs at a time.
#[test]
fn a_slow_jwks_refetch_does_not_hold_up_known_keys() {
    let s = signer("k1");
    let (url, fetches) = slow_jwks(s.jwks.clone(), s.jwks.clone(), Duration::from_secs(8));
    let (relay, _audit, _d) = relay_with(
        jwt_spec(vec![JwtIssuer::with_url(ISSUER, AUDIENCE, &url)]),
        &["user:dev@example.com"],
    );
    let t = now();
    let token = |kid: &str| {
        jwt(
            &s,
            kid,
            claims("dev@example.com", ISSUER, AUDIENCE, t + 600, t - 10),
        )
    };
    runtime().block_on(async {
        let garbage: Vec<_> = (0..5)
            .map(|_| {
                let token = token(&format!("random-{}", random_hex(8)));
                let addr = relay.addr;
                tokio::spawn(async move { upgrade_status(addr, localhost(), &token).await })
            })
            .collect();
        // Let the refetch start.
        let started = Instant::now();
        while fetches.load(Ordering::SeqCst) < 2 {
            assert!(started.elapsed() < Duration::from_secs(5), "no refetch");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let status = upgrade_status(relay.addr, localhost(), &token("k1")).await;
        let took = started.elapsed();
        eprintln!("known-kid login during a slow refetch: HTTP {status} in {took:?}");
        assert_eq!(status, 101);
        assert!(
            took < Duration::from_secs(1),
            "known-kid login took {took:?}"
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "one refetch at a time");
        for g in garbage {
            assert_eq!(
                tokio::time::timeout(Duration::from_secs(15), g)
                    .await
                    .unwrap()
                    .unwrap(),
                401
            );
        }
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            2,
            "refetches stay rate-limited"
        );
    });
}

/// A refetch slower than the handshake timeout still completes: the login that started it
/// is dropped, but the rotated key is in place for the next one.
#[test]
fn a_refetch_outlives_the_handshake_that_started_it() {
    let (first, second) = (signer("k1"), signer("k2"));
    let key =
        |s: &Signer| serde_json::from_str::<serde_json::Value>(&s.jwks).unwrap()["keys"][0].clone();
    let rotated = serde_json::json!({"keys": [key(&first), key(&second)]}).to_string();
    let (url, fetches) = slow_jwks(first.jwks.clone(), rotated, Duration::from_secs(3));
    let extra = jwt_spec(vec![JwtIssuer::with_url(ISSUER, AUDIENCE, &url)])
        .limits(|l| l.handshake_timeout_secs = Some(1));
    let (relay, _audit, _d) = relay_with(extra, &["user:dev@example.com"]);
    let t = now();
    let token = jwt(
        &second,
        "k2",
        claims("dev@example.com", ISSUER, AUDIENCE, t + 600, t - 10),
    );
    runtime().block_on(async {
        let started = Instant::now();
        let answer = upgrade_answer(relay.addr, localhost(), &token).await;
        assert_eq!(
            answer, None,
            "the first k2 login outlasts the handshake timeout"
        );
        // The refetch (3 s) finishes after that login was dropped (1 s).
        tokio::time::sleep(Duration::from_secs(4).saturating_sub(started.elapsed())).await;
        assert_eq!(upgrade_status(relay.addr, localhost(), &token).await, 101);
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    });
}
