//! Running iap-relay in production: the admin endpoint (health and Prometheus metrics), a
//! SIGTERM drain with a live tunnel, and plain `ws://` behind a TLS-terminating proxy where
//! `X-Forwarded-For` is believed only from configured proxy addresses. Signals go to the
//! `iap-relay` binary; the other tests serve the relay in this process.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use iap_ssh::client::auth::Token;
use iap_ssh::client::dial::{Dialer, Endpoint};
use iap_ssh::frame::Frame;
use iap_ssh::wire::tls_config;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const TOKEN: &str = "ops-test-token-0123456789";

async fn echo_once(ws: &mut iap_ssh::client::dial::RelaySocket, text: &[u8]) {
    ws.send(Message::Binary(Frame::Data(text).to_bytes()))
        .await
        .unwrap();
    let mut back = Vec::new();
    while back.len() < text.len() {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => {
                if let Ok(Frame::Data(d)) = Frame::decode(&b) {
                    back.extend_from_slice(d);
                }
            }
            other => panic!("no echo: {other:?}"),
        }
    }
    assert_eq!(back, text);
}

#[test]
fn admin_endpoint_health_metrics_and_sigterm_drain() {
    let admin_port = free_port();
    let mut spec = RelaySpec::standard("user:alice@example.com", TOKEN);
    spec.admin_listen = Some(([127, 0, 0, 1], admin_port).into());
    spec.limits.drain_secs = Some(30);
    let mut relay = spawn_relay(&spec);
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let backend = echo_backend();
    let health = http_get(admin, "/healthz");
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    assert!(http_get(admin, "/nope").starts_with("HTTP/1.1 404"));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let d = dialer(&relay, "ops-test");
        // One refused credential, one live tunnel.
        assert!(
            d.open(
                "connect",
                &connect_query(backend),
                &Token::new("wrong-token").unwrap()
            )
            .await
            .is_err()
        );
        let mut ws = d
            .open(
                "connect",
                &connect_query(backend),
                &Token::new(TOKEN).unwrap(),
            )
            .await
            .unwrap();
        assert!(matches!(ws.next().await, Some(Ok(Message::Binary(_)))));
        echo_once(&mut ws, b"before the drain").await;
        let metrics = tokio::task::spawn_blocking(move || http_get(admin, "/metrics"))
            .await
            .unwrap();
        for want in [
            "iap_relay_sessions_open 1",
            "iap_relay_auth_failures_total{reason=\"unknown_token\"} 1",
            "iap_relay_handshake_seconds_count 1",
            "# TYPE iap_relay_handshake_seconds histogram",
        ] {
            assert!(metrics.contains(want), "{want:?} missing:\n{metrics}");
        }

        // SIGTERM: health turns 503, new sessions are refused, the live one carries on.
        relay.signal(rustix::process::Signal::TERM);
        let started = Instant::now();
        loop {
            let h = tokio::task::spawn_blocking(move || http_get(admin, "/healthz"))
                .await
                .unwrap();
            if h.starts_with("HTTP/1.1 503") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "{h}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match d
            .open(
                "connect",
                &connect_query(backend),
                &Token::new(TOKEN).unwrap(),
            )
            .await
        {
            Err(e) => assert!(e.message.contains("503"), "{}", e.message),
            Ok(_) => panic!("a draining relay took a new session"),
        }
        echo_once(&mut ws, b"during the drain").await;
        let _ = ws.close(None).await;
    });
    // With its last session gone, the relay exits on its own, long before drain_secs.
    let started = Instant::now();
    while relay.is_running() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "relay still running:\n{}",
            relay.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(relay.log().contains("draining"), "{}", relay.log());
}

/// Opens a ws:// tunnel to `relay` claiming `forwarded` in X-Forwarded-For.
async fn open_forwarded(relay: &RelayEndpoint, backend: u16, forwarded: &str) {
    let url = format!("{}/v4/connect?{}", relay.url, connect_query(backend));
    let mut req = url.as_str().into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert("Authorization", format!("Bearer {TOKEN}").parse().unwrap());
    h.insert(
        "Sec-WebSocket-Protocol",
        "relay.tunnel.cloudproxy.app".parse().unwrap(),
    );
    h.insert("X-Forwarded-For", forwarded.parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Binary(_)))));
    let _ = ws.close(None).await;
}

fn audit_clients(path: &std::path::Path) -> Vec<String> {
    audit_lines(path)
        .into_iter()
        .filter(|v| v["event"] == "connect")
        .map(|v| v["client"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let backend = echo_backend();
    let dir = tempfile::tempdir().unwrap();
    for (trusted, expected) in [(&["127.0.0.1"][..], "203.0.113.7"), (&[], "127.0.0.1")] {
        let audit = dir.path().join(format!("audit-{}.jsonl", expected));
        let mut spec = RelaySpec::standard("user:alice@example.com", TOKEN)
            .plaintext()
            .audit_log(&audit);
        spec.trusted_proxies = trusted.iter().map(|t| (*t).to_owned()).collect();
        let relay = spawn_relay_in_process(&spec);
        assert!(relay.url.starts_with("ws://"), "{}", relay.url);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // A spoofed hop before the proxy's own entry is ignored: the proxy appends the real one.
        rt.block_on(open_forwarded(&relay, backend, "198.51.100.1, 203.0.113.7"));
        let started = Instant::now();
        while audit_clients(&audit).is_empty() {
            assert!(started.elapsed() < Duration::from_secs(5));
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            audit_clients(&audit),
            vec![expected.to_owned()],
            "trusted_proxies = {trusted:?}"
        );
    }
}

/// `idle_timeout_secs` closes a tunnel that carries nothing with 1008, and
/// `max_session_secs` ends even a busy one; iap-ssh reports each in one line.
#[test]
fn idle_timeout_and_maximum_session_length() {
    let backend = echo_backend();
    for (limits, want) in [
        ("idle_timeout_secs = 1", "idle timeout"),
        ("max_session_secs = 2", "1008"),
    ] {
        let spec = RelaySpec::standard("user:alice@example.com", TOKEN).limits(|l| {
            if limits.starts_with("idle") {
                l.idle_timeout_secs = Some(1);
            } else {
                l.max_session_secs = Some(2);
            }
        });
        let relay = spawn_relay_in_process(&spec);
        let dir = tempfile::tempdir().unwrap();
        let token_file = write_token_file(dir.path(), TOKEN);
        let mut child = iap_ssh(dir.path())
            .relay(&relay)
            .token_file(&token_file)
            .args([dotted_host(), backend.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // For the session-length case keep the tunnel busy so only the limit can end it.
        let busy = limits.starts_with("max");
        // stdin stays open (as ssh keeps it) until the tunnel has ended.
        let (ended, wait_end) = std::sync::mpsc::channel::<()>();
        let writer = thread::spawn(move || {
            for _ in 0..100 {
                if !busy || stdin.write_all(b"keepalive\n").is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            let _ = wait_end.recv_timeout(Duration::from_secs(20));
            drop(stdin);
        });
        let started = Instant::now();
        let out = loop {
            if child.try_wait().unwrap().is_some() {
                break child.wait_with_output().unwrap();
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{limits}: the tunnel was not ended"
            );
            thread::sleep(Duration::from_millis(50));
        };
        drop(ended);
        let _ = writer.join();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{limits}: {stderr}");
        assert!(stderr.contains(want), "{limits}: {stderr}");
        let log = relay.log();
        let reason = if busy {
            "maximum session length"
        } else {
            "idle timeout"
        };
        assert!(log.contains(reason), "{limits}: {log}");
    }
}

/// SIGHUP also reloads the certificate: new connections get the new one.
#[test]
fn sighup_reloads_the_certificate() {
    let relay = spawn_relay(&RelaySpec::standard("user:alice@example.com", TOKEN));
    let backend = echo_backend();
    let old_ca = relay.ca_pem().to_owned();
    let fresh = test_pki();
    let dir = relay.config_path.parent().unwrap();
    std::fs::copy(&fresh.cert_pem, dir.join("relay-cert.pem")).unwrap();
    std::fs::copy(&fresh.key_pem, dir.join("relay-key.pem")).unwrap();
    relay.signal(rustix::process::Signal::HUP);
    relay.wait_for_log("configuration reloaded", 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dial = |ca: std::path::PathBuf| Dialer {
            endpoint: Endpoint::parse(&relay.url).unwrap(),
            tls: tls_config(Some(&ca)).unwrap(),
            user_agent: "ops-test".into(),
        };
        let token = Token::new(TOKEN).unwrap();
        let mut ws = dial(fresh.ca_pem.clone())
            .open("connect", &connect_query(backend), &token)
            .await
            .expect("the new certificate is served");
        assert!(matches!(ws.next().await, Some(Ok(Message::Binary(_)))));
        // The test machine's own roots do not include either test CA, so only the old CA is trusted here.
        match dial(old_ca)
            .open("connect", &connect_query(backend), &token)
            .await
        {
            Err(e) => assert!(e.message.contains("TLS handshake"), "{}", e.message),
            Ok(_) => panic!("the old certificate is still served"),
        }
    });
}
