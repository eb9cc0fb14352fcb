//! iap-relay against a hostile user, through real sockets against the real binary: a ping
//! flood that never reads, idle sockets from one address, the relay-wide memory budget,
//! revocation that keeps up with time and reloads (binding expiry, a removed static token, a
//! reload during a handshake), parked sessions at shutdown, and forged log lines. A hostile
//! relay's ping flood against iap-ssh is here too. Relay memory is read from /proc.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;
mod idp;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use futures_util::{SinkExt, StreamExt};
use iap_ssh::frame::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const TOKEN: &str = "hardening-token-alice";
const PRINCIPAL: &str = "user:alice@example.com";
const STEP: Duration = Duration::from_secs(15);

type Ws = WebSocketStream<TcpStream>;

/// A plain `ws://` relay for [`PRINCIPAL`].
fn spec() -> RelaySpec {
    RelaySpec::standard(PRINCIPAL, TOKEN).plaintext()
}

/// [`spec`] changed by `f`, running.
fn relay(f: impl FnOnce(&mut RelaySpec)) -> Relay {
    let mut spec = spec();
    f(&mut spec);
    spawn_relay(&spec)
}

fn query(port: u16) -> String {
    format!("project={PROJECT}&port={port}&newWebsocket=True&zone={ZONE}&instance={INSTANCE}")
}

/// Opens `/v4/connect` from `socket` with `token`; the upgrade's outcome as it came.
async fn upgrade_from(
    socket: TcpSocket,
    addr: SocketAddr,
    port: u16,
    token: &str,
) -> Result<Ws, String> {
    let url = format!("ws://{addr}/v4/connect?{}", query(port));
    let mut req = url.into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("relay.tunnel.cloudproxy.app"),
    );
    let tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(STEP, tokio_tungstenite::client_async(req, tcp)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("upgrade timed out".into()),
    }
}

async fn open(addr: SocketAddr, port: u16, token: &str) -> Result<Ws, String> {
    upgrade_from(TcpSocket::new_v4().unwrap(), addr, port, token).await
}

/// Reads the CONNECT_SUCCESS_SID and returns the session id.
async fn expect_sid(ws: &mut Ws) -> String {
    match tokio::time::timeout(STEP, ws.next())
        .await
        .expect("SID in time")
    {
        Some(Ok(Message::Binary(b))) => match Frame::decode(&b) {
            Ok(Frame::ConnectSuccessSid(sid)) => String::from_utf8_lossy(sid).into_owned(),
            other => panic!("first message {other:?}"),
        },
        other => panic!("expected the session id, got {other:?}"),
    }
}

/// Sends `text` as DATA and reads it back.
async fn echo(ws: &mut Ws, text: &[u8]) {
    ws.send(Message::Binary(Frame::Data(text).to_bytes()))
        .await
        .unwrap();
    let mut back = Vec::new();
    while back.len() < text.len() {
        match tokio::time::timeout(STEP, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => {
                if let Ok(Frame::Data(d)) = Frame::decode(&b) {
                    back.extend_from_slice(d);
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no echo: {other:?}"),
        }
    }
    assert_eq!(back, text);
}

/// Waits (at most `limit`) for the relay to close; returns the close code, or `None` when the
/// connection merely dropped.
async fn close_code(ws: &mut Ws, limit: Duration) -> Option<u16> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => return Some(f.map_or(1005, |f| u16::from(f.code))),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return None,
            Err(_) => panic!("the relay did not end the session within {limit:?}"),
        }
    }
}

/// A client that sends WebSocket pings and never reads: every ping makes the relay queue a
/// pong it cannot send. The relay's memory stays bounded and it keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_without_reading_stays_bounded() {
    let relay = relay(|_| {});
    let echo_port = echo_backend();
    let mut honest = open(relay.addr, echo_port, TOKEN).await.unwrap();
    expect_sid(&mut honest).await;
    echo(&mut honest, b"before").await;
    let (before, _) = rss_kib(relay.pid());

    // A small receive buffer, so the pongs back up in the relay at once.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut flood = upgrade_from(socket, relay.addr, echo_port, TOKEN)
        .await
        .unwrap();
    expect_sid(&mut flood).await;
    // Masked pings with the largest payload a control frame may carry (125 bytes), written
    // straight to the socket: every one asks for a 127-byte pong.
    let mut ping = vec![0x89u8, 0x80 | 125, 1, 2, 3, 4];
    ping.extend_from_slice(&[b'p'; 125]);
    let pings: Vec<u8> = ping.repeat(20_000);
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(8) {
        match tokio::time::timeout(Duration::from_secs(2), flood.get_mut().write_all(&pings)).await
        {
            Ok(Ok(())) => sent += 20_000,
            // The relay stopped taking more (it may also have dropped us): both are fine.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let (during, peak) = rss_kib(relay.pid());
    eprintln!(
        "ping flood: {sent} pings in {:?}; relay RSS before {before} KiB, after {during} KiB, peak {peak} KiB",
        started.elapsed()
    );
    echo(&mut honest, b"after").await;
    // Each ping asks for 127 bytes the client never reads: without a bound the relay would
    // grow by as much as the flood sends (tens of MB here).
    assert!(
        peak.saturating_sub(before) < 16 * 1024,
        "relay RSS grew by {} KiB under a ping flood",
        peak.saturating_sub(before)
    );
    assert!(!relay.log().contains("panicked"));
}

/// The same from a hostile relay: it floods iap-ssh with pings and never reads.
#[test]
fn ping_flood_from_a_relay_stays_bounded_in_iap_ssh() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(async {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket.listen(4).unwrap()
    });
    let addr = listener.local_addr().unwrap();
    let flooded = rt.spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        #[allow(clippy::result_large_err)]
        let echo_protocol =
            |_: &tokio_tungstenite::tungstenite::handshake::server::Request,
             mut resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                resp.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    HeaderValue::from_static("relay.tunnel.cloudproxy.app"),
                );
                Ok(resp)
            };
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, echo_protocol)
            .await
            .unwrap();
        ws.send(Message::Binary(
            Frame::ConnectSuccessSid(b"flood-sid").to_bytes(),
        ))
        .await
        .unwrap();
        // Unmasked pings with a 125-byte payload, each asking for a 131-byte masked pong.
        let mut ping = vec![0x89u8, 125];
        ping.extend_from_slice(&[b'p'; 125]);
        let pings: Vec<u8> = ping.repeat(20_000);
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_secs(8) {
            match tokio::time::timeout(Duration::from_secs(2), ws.get_mut().write_all(&pings)).await
            {
                Ok(Ok(())) => sent += 20_000,
                Ok(Err(_)) | Err(_) => break,
            }
        }
        sent
    });

    let dir = tempfile::tempdir().unwrap();
    let token = write_token_file(dir.path(), "flood-token");
    let mut cmd = iap_ssh(dir.path())
        .endpoint(&format!("ws://{addr}"))
        .token_file(&token)
        .command();
    cmd.args(["--no-token-cache", "vm-1.zone-a.proj", "22"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = ChildGuard::new(cmd.spawn().unwrap());
    let pid = child.id();
    let sent = rt.block_on(flooded).unwrap();
    let (rss, peak) = rss_kib(pid);
    let exited = child.try_wait();
    eprintln!(
        "relay ping flood: {sent} pings; iap-ssh RSS {rss} KiB, peak {peak} KiB, exited {exited:?}"
    );
    assert!(
        peak < 24 * 1024,
        "iap-ssh peaked at {peak} KiB under a relay's ping flood"
    );
}

/// Idle sockets from one address (slowloris): beyond the per-address limit they are closed at
/// once, the rest after the first-byte deadline, and a client from another address gets
/// through at once although the relay's connection slots are fewer than the idle sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_from_one_address_do_not_lock_others_out() {
    let nofile = raise_nofile();
    let n = 1200usize.min(nofile.saturating_sub(300) as usize / 2);
    // The defaults: 256 unfinished handshakes per address, 3 s to the first byte.
    let relay = relay(|s| {
        s.limits.max_connections = Some(600);
        s.limits.handshake_timeout_secs = Some(10);
    });
    let echo_port = echo_backend();
    let (before, _) = rss_kib(relay.pid());
    let mut idle = Vec::new();
    for _ in 0..n {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(s) = socket.connect(relay.addr).await {
            idle.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let mut ws = open(relay.addr, echo_port, TOKEN)
        .await
        .expect("an honest client from another address");
    expect_sid(&mut ws).await;
    echo(&mut ws, b"still here").await;
    let honest_took = started.elapsed();
    // Every idle socket is closed by the relay within the first-byte deadline and a margin.
    let mut closed = 0usize;
    let mut slowest = Duration::ZERO;
    let opened = Instant::now();
    for s in &mut idle {
        let mut buf = [0u8; 16];
        let left = Duration::from_secs(6).saturating_sub(opened.elapsed());
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(left, s.read(&mut buf)).await {
            closed += 1;
        }
    }
    slowest = slowest.max(opened.elapsed());
    let (after, peak) = rss_kib(relay.pid());
    eprintln!(
        "{} idle sockets from 127.0.0.2: honest client served in {honest_took:?}; {closed} closed by the relay (all within {slowest:?}); relay RSS before {before} KiB, after {after} KiB, peak {peak} KiB",
        idle.len()
    );
    assert!(
        honest_took < Duration::from_secs(2),
        "honest client waited {honest_took:?}"
    );
    assert_eq!(closed, idle.len(), "idle sockets the relay kept open");
}

/// The memory budget: sessions reserve their worst case; when the next one does not fit it
/// is refused with HTTP 503 and an audit line, and a parked session keeps its share until its
/// resume window ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_budget_refuses_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    // 1 MiB of unacknowledged data and 768 KiB of other buffers: two sessions fit in 4 MiB.
    let relay = relay(|s| {
        s.audit_log = Some(audit.clone());
        s.limits.memory_budget_mib = Some(4);
        s.limits.resume_window_secs = Some(2);
    });
    let echo_port = echo_backend();
    let mut a = open(relay.addr, echo_port, TOKEN).await.unwrap();
    expect_sid(&mut a).await;
    let mut b = open(relay.addr, echo_port, TOKEN).await.unwrap();
    expect_sid(&mut b).await;
    let refused = open(relay.addr, echo_port, TOKEN)
        .await
        .expect_err("a third session is over the budget");
    assert!(refused.contains("503"), "{refused}");
    let denied = audit_lines(&audit)
        .into_iter()
        .filter(|l| l["event"] == "deny" && l["reason"] == "relay memory budget reached")
        .count();
    assert_eq!(denied, 1, "audit: {:?}", audit_lines(&audit));
    // A clean close gives the share back.
    a.close(None).await.unwrap();
    let _ = close_code(&mut a, STEP).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = open(relay.addr, echo_port, TOKEN)
        .await
        .expect("room again after a close");
    expect_sid(&mut c).await;
    echo(&mut c, b"fits").await;
    // A lost connection parks its session, which keeps its share until the window ends.
    drop(b);
    relay.wait_for_log("session parked for resume", 1);
    assert!(open(relay.addr, echo_port, TOKEN).await.is_err());
    relay.wait_for_log("resume window ended", 1);
    let mut d = open(relay.addr, echo_port, TOKEN)
        .await
        .expect("room again after the resume window");
    expect_sid(&mut d).await;
}

/// Clients that never read, as many as the budget allows: the relay's memory stays within
/// the budget, and the rest are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_cost_at_most_the_budget() {
    let relay = relay(|s| s.limits.memory_budget_mib = Some(48));
    let echo_port = echo_backend();
    let (before, _) = rss_kib(relay.pid());
    let chunk = Frame::Data(&[7u8; 16 * 1024]).to_bytes();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        match upgrade_from(socket, relay.addr, echo_port, TOKEN).await {
            Ok(mut ws) => {
                expect_sid(&mut ws).await;
                // 2 MiB each, echoed back into a client that never reads: the relay holds
                // what its bounds allow and then stops reading.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    for _ in 0..128 {
                        if ws.send(Message::Binary(chunk.clone())).await.is_err() {
                            break;
                        }
                    }
                })
                .await;
                held.push(ws);
            }
            Err(e) => {
                assert!(e.contains("503"), "{e}");
                refused += 1;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (after, peak) = rss_kib(relay.pid());
    eprintln!(
        "{} sessions admitted, {refused} refused; relay RSS before {before} KiB, after {after} KiB, peak {peak} KiB",
        held.len()
    );
    assert!(refused > 0, "the budget refused nothing");
    assert!(
        peak.saturating_sub(before) < 48 * 1024 + 16 * 1024,
        "relay RSS grew by {} KiB with a 48 MiB budget",
        peak.saturating_sub(before)
    );
}

/// A binding that expires ends its sessions at that instant with 4033, audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_that_expires_ends_its_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let relay = relay(|s| {
        s.audit_log = Some(audit.clone());
        s.bindings = vec![
            Binding::new(&[PRINCIPAL], &format!("projects/{PROJECT}"))
                .expires_at(SystemTime::now() + Duration::from_secs(3)),
        ];
    });
    let echo_port = echo_backend();
    let mut ws = open(relay.addr, echo_port, TOKEN).await.unwrap();
    let sid = expect_sid(&mut ws).await;
    echo(&mut ws, b"while the binding holds").await;
    let started = Instant::now();
    let code = close_code(&mut ws, Duration::from_secs(10)).await;
    assert_eq!(code, Some(4033), "closed after {:?}", started.elapsed());
    // The close line is written once the close handshake is over.
    let deadline = Instant::now() + STEP;
    let closes = loop {
        let closes: Vec<_> = audit_lines(&audit)
            .into_iter()
            .filter(|l| l["event"] == "close" && l["sid"] == sid.as_str())
            .collect();
        if !closes.is_empty() || Instant::now() > deadline {
            break closes;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert_eq!(closes[0]["code"], 4033);
    let reason = closes[0]["reason"].as_str().unwrap();
    assert!(reason.contains("expired"), "{reason}");
}

/// SIGHUP with a static token removed (its binding kept) ends the token's live sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_static_token_ends_its_sessions() {
    let relay = relay(|_| {});
    let echo_port = echo_backend();
    let mut ws = open(relay.addr, echo_port, TOKEN).await.unwrap();
    expect_sid(&mut ws).await;
    echo(&mut ws, b"before the reload").await;
    let mut without_token = spec();
    without_token.tokens.clear();
    relay.reload(&without_token);
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(4033)
    );
    assert!(open(relay.addr, echo_port, TOKEN).await.is_err());
}

/// A handshake left pending across a SIGHUP that removes the caller's token and binding is
/// decided against the new configuration: no working session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_pending_across_a_reload_is_decided_by_the_new_configuration() {
    let relay = relay(|_| {});
    let echo_port = echo_backend();
    let mut tcp = TcpStream::connect(relay.addr).await.unwrap();
    let head = format!(
        "GET /v4/connect?{} HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: relay.tunnel.cloudproxy.app\r\nAuthorization: Bearer {TOKEN}\r\n",
        query(echo_port)
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // Revoke everything for this caller while its request head is unfinished.
    let revoked = RelaySpec {
        tokens: vec![],
        instances: vec![],
        bindings: vec![],
        ..spec()
    };
    relay.reload(&revoked);
    tcp.write_all(b"\r\n").await.unwrap();
    // Whatever comes back (a refusal, or an upgrade followed by a close), no session id
    // may arrive.
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    let after_head = text.find("\r\n\r\n").map_or(&got[..], |i| &got[i + 4..]);
    // A WebSocket binary message carrying CONNECT_SUCCESS_SID starts 0x82, len, 0x00 0x01.
    let has_sid = after_head
        .windows(4)
        .any(|w| w[0] == 0x82 && w[2] == 0 && w[3] == 1);
    assert!(!has_sid, "a revoked caller got a session: {text:?}");
    assert!(
        text.starts_with("HTTP/1.1 401") || after_head.windows(2).any(|w| w == [0x0f, 0xc1]),
        "neither a 401 nor a 4033 close: {text:?}"
    );
}

/// At shutdown, parked sessions are closed and audited, not forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_sessions_are_closed_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let mut relay = relay(|s| {
        s.audit_log = Some(audit.clone());
        s.limits.resume_window_secs = Some(600);
        s.limits.drain_secs = Some(1);
    });
    let echo_port = echo_backend();
    let mut ws = open(relay.addr, echo_port, TOKEN).await.unwrap();
    let sid = expect_sid(&mut ws).await;
    echo(&mut ws, b"then the client vanishes").await;
    drop(ws);
    relay.wait_for_log("session parked for resume", 1);
    relay.signal(rustix::process::Signal::TERM);
    let deadline = Instant::now() + STEP;
    while relay.is_running() {
        assert!(Instant::now() < deadline, "relay still running");
        thread::sleep(Duration::from_millis(50));
    }
    let closes: Vec<_> = audit_lines(&audit)
        .into_iter()
        .filter(|l| l["event"] == "close" && l["sid"] == sid.as_str())
        .collect();
    assert_eq!(closes.len(), 1, "audit: {:?}", audit_lines(&audit));
    assert_eq!(closes[0]["reason"], "relay shut down");
}

/// Newlines and invisible marks from clients cannot forge or hide log lines: a bidi override
/// in a query value is refused, and a JWT whose email carries a newline is no identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_strings_cannot_forge_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let signer = idp::signer("k1");
    std::fs::write(dir.path().join("jwks.json"), &signer.jwks).unwrap();
    let relay = relay(|s| {
        s.jwt = vec![JwtIssuer::with_file(
            idp::ISSUER,
            idp::AUDIENCE,
            dir.path().join("jwks.json"),
        )];
    });
    let echo_port = echo_backend();

    // A bidi override in the network name of a host-mode request.
    let mut tcp = TcpStream::connect(relay.addr).await.unwrap();
    let head = format!(
        "GET /v4/connect?project={PROJECT}&port=22&region=r&network=de%E2%80%AEfault&host=10.0.0.1 HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(STEP, tcp.read_to_end(&mut got)).await;
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");

    // A JWT whose email claim carries a forged log line.
    let forged = "2026-01-01T00:00:00.000000Z  INFO connect principal=user:root@example.com";
    let mut claims = idp::claims(
        &format!("eve@example.com\n{forged}"),
        idp::ISSUER,
        idp::AUDIENCE,
        idp::now() + 600,
        idp::now() - 10,
    );
    claims["email_verified"] = serde_json::json!(true);
    let token = idp::jwt(&signer, "k1", claims);
    let refused = open(relay.addr, echo_port, &token)
        .await
        .expect_err("an email with a newline is no identity");
    assert!(refused.contains("401"), "{refused}");
    thread::sleep(Duration::from_millis(300));
    let log = relay.log();
    assert!(
        !log.lines().any(|l| l.starts_with(forged)),
        "a forged line reached the log:\n{log}"
    );
    assert!(!log.contains('\u{202e}'), "a bidi override reached the log");
    // What the relay logs of a client's text is escaped, one event per line.
    let lines = BufReader::new(std::fs::File::open(&relay.stderr_log).unwrap()).lines();
    for line in lines {
        let line = line.unwrap();
        assert!(
            line.is_empty() || line.starts_with("20") || line.starts_with("iap-relay"),
            "a log line that is not an event: {line:?}"
        );
    }
}
