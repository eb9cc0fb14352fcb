//! A hostile client against the relay (plain `ws://` on loopback): protocol violations get
//! their close codes, oversized and endless input is cut off, thousands of idle connections
//! are dropped in bounded time, and through all of it the relay keeps serving an honest client
//! with bounded memory. The relay runs in this process, except where its RSS is read from
//! /proc: there it is the `iap-relay` binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use iap_ssh::frame::{Frame, MAX_ARRAY_LEN};
use iap_ssh::target::Target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const TOKEN: &str = "hostile-client-token";
const PRINCIPAL: &str = "user:mallory@example.com";
/// The relay's handshake limit in these tests (the default is 10 s).
const HANDSHAKE_SECS: u64 = 3;
/// How long any single step may take before the test fails.
const STEP: Duration = Duration::from_secs(15);

type Ws = WebSocketStream<TcpStream>;

fn spec() -> common::RelaySpec {
    common::RelaySpec::standard(PRINCIPAL, TOKEN)
        .plaintext()
        .limits(|l| l.handshake_timeout_secs = Some(HANDSHAKE_SECS))
}

/// The relay served in this process.
fn relay() -> common::RelayGuard {
    common::spawn_relay_in_process(&spec())
}

/// The relay as its own process, for tests that read its memory from /proc.
fn relay_process() -> common::Relay {
    common::spawn_relay(&spec())
}

/// A backend that accepts and never reads, so everything a client sends piles up upstream.
async fn deaf_backend() -> u16 {
    // A small receive buffer, so the kernel cannot hide the pile-up.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    let _ = socket.set_recv_buffer_size(4096);
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind deaf");
    let listener = socket.listen(16).expect("listen deaf");
    let port = listener.local_addr().expect("deaf addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    port
}

fn target() -> Target {
    Target::Instance {
        project: common::PROJECT.into(),
        zone: common::ZONE.into(),
        instance: common::INSTANCE.into(),
        interface: "nic0".into(),
    }
}

/// Opens `/v4/connect` to `port` on the test instance; returns the socket (SID not yet read).
async fn open(addr: SocketAddr, port: u16) -> Ws {
    let url = format!("ws://{addr}/v4/connect?{}", target().connect_query(port));
    let mut req = url.into_client_request().expect("request");
    let h = req.headers_mut();
    h.insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {TOKEN}")).expect("header"),
    );
    h.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("relay.tunnel.cloudproxy.app"),
    );
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the relay");
    let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("upgrade in time")
        .expect("upgrade accepted");
    ws
}

/// Reads the CONNECT_SUCCESS_SID.
async fn expect_sid(ws: &mut Ws) {
    let first = tokio::time::timeout(STEP, ws.next())
        .await
        .expect("SID in time");
    match first {
        Some(Ok(Message::Binary(b))) => assert!(
            matches!(Frame::decode(&b), Ok(Frame::ConnectSuccessSid(_))),
            "first message {:?}",
            Frame::decode(&b)
        ),
        other => panic!("expected the session id, got {other:?}"),
    }
}

/// How a connection ended from the client's side.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Close(u16),
    Dropped,
}

/// Reads until the relay closes (its code) or drops the connection; returns DATA received too.
async fn read_to_end(ws: &mut Ws) -> (End, Vec<u8>) {
    let mut data = Vec::new();
    let deadline = Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .expect("the relay ends a violating connection in bounded time");
        match msg {
            Some(Ok(Message::Close(f))) => {
                return (End::Close(f.map_or(1005, |f| u16::from(f.code))), data);
            }
            Some(Ok(Message::Binary(b))) => {
                if let Ok(Frame::Data(p)) = Frame::decode(&b) {
                    data.extend_from_slice(p);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (End::Dropped, data),
        }
    }
}

/// Opens a session, sends `messages`, and reports how the relay ended it.
async fn violate(addr: SocketAddr, port: u16, messages: Vec<Message>) -> End {
    let mut ws = open(addr, port).await;
    expect_sid(&mut ws).await;
    for m in messages {
        if ws.send(m).await.is_err() {
            break;
        }
    }
    read_to_end(&mut ws).await.0
}

/// One honest round trip through the relay; panics if it does not work within `limit`.
async fn honest_round_trip(addr: SocketAddr, port: u16, limit: Duration) {
    tokio::time::timeout(limit, async {
        let mut ws = open(addr, port).await;
        expect_sid(&mut ws).await;
        ws.send(Message::Binary(Frame::Data(b"ping?").to_bytes()))
            .await
            .expect("send");
        let mut got = Vec::new();
        while got.len() < 5 {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    if let Ok(Frame::Data(p)) = Frame::decode(&b) {
                        got.extend_from_slice(p);
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("honest client cut off: {other:?}"),
            }
        }
        assert_eq!(got, b"ping?");
        let _ = ws.close(None).await;
    })
    .await
    .expect("the relay keeps serving an honest client");
}

fn data_msg(len: usize) -> Message {
    let mut m = vec![0u8, 4];
    m.extend_from_slice(&(len as u32).to_be_bytes());
    m.resize(6 + len, b'x');
    Message::Binary(m.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_get_their_close_codes() {
    let relay = relay();
    let port = common::echo_backend_async().await;
    let bin = |b: &[u8]| Message::Binary(b.to_vec().into());
    // (what, messages, expected end)
    let cases: Vec<(&str, Vec<Message>, End)> = vec![
        (
            "text message",
            vec![Message::Text("hi".into())],
            End::Close(4007),
        ),
        (
            "unknown tag",
            vec![bin(&[0x00, 0x99, 1, 2])],
            End::Close(4008),
        ),
        (
            "deprecated tag 3",
            vec![bin(&[0x00, 0x03])],
            End::Close(4008),
        ),
        (
            "CONNECT_SUCCESS_SID from a client",
            vec![Message::Binary(Frame::ConnectSuccessSid(b"x").to_bytes())],
            End::Close(4008),
        ),
        (
            "RECONNECT_SUCCESS_ACK from a client",
            vec![Message::Binary(Frame::ReconnectSuccessAck(0).to_bytes())],
            End::Close(4008),
        ),
        ("one byte", vec![bin(&[0x00])], End::Close(4013)),
        ("empty binary", vec![bin(&[])], End::Close(4013)),
        (
            "truncated DATA",
            vec![bin(&[0, 4, 0, 0, 0, 9, 1])],
            End::Close(4013),
        ),
        (
            "truncated ACK",
            vec![bin(&[0, 7, 0, 0, 0])],
            End::Close(4013),
        ),
        (
            "DATA with trailing bytes",
            vec![bin(&[0, 4, 0, 0, 0, 1, 7, 8])],
            End::Close(4013),
        ),
        (
            "DATA length u32::MAX",
            vec![bin(&[0, 4, 0xff, 0xff, 0xff, 0xff])],
            End::Close(4013),
        ),
        (
            "zero-length DATA",
            vec![bin(&[0, 4, 0, 0, 0, 0])],
            End::Close(4013),
        ),
        (
            "DATA of 16385 bytes",
            vec![data_msg(MAX_ARRAY_LEN + 1)],
            End::Close(4013),
        ),
        (
            "ACK for bytes never sent",
            vec![Message::Binary(Frame::Ack(1).to_bytes())],
            End::Close(4006),
        ),
        (
            "ACK u64::MAX",
            vec![Message::Binary(Frame::Ack(u64::MAX).to_bytes())],
            End::Close(4006),
        ),
    ];
    for (what, messages, want) in cases {
        let got = violate(relay.addr, port, messages).await;
        assert_eq!(got, want, "{what}\n--- relay log ---\n{}", relay.log());
    }
    // A DATA message far above the WebSocket message limit: closed or dropped, never buffered.
    let got = violate(relay.addr, port, vec![data_msg(4 << 20)]).await;
    assert!(
        matches!(got, End::Close(4013 | 1009) | End::Dropped),
        "4 MiB DATA: {got:?}"
    );
    honest_round_trip(relay.addr, port, STEP).await;
    assert!(!relay.log().contains("panicked"), "{}", relay.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_beyond_or_backwards_are_refused() {
    let relay = relay();
    let port = common::echo_backend_async().await;
    for (acks, want) in [
        (&[5u64, 6][..], 4006u16),
        (&[5, 3], 4005),
        (&[4, 5, 5, 0], 4005),
    ] {
        let mut ws = open(relay.addr, port).await;
        expect_sid(&mut ws).await;
        ws.send(Message::Binary(Frame::Data(b"hello").to_bytes()))
            .await
            .expect("send");
        // Wait for the echo, so the relay has sent exactly 5 bytes.
        let mut got = Vec::new();
        while got.len() < 5 {
            match tokio::time::timeout(STEP, ws.next()).await.expect("echo") {
                Some(Ok(Message::Binary(b))) => {
                    if let Ok(Frame::Data(p)) = Frame::decode(&b) {
                        got.extend_from_slice(p);
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("echo: {other:?}"),
            }
        }
        for &a in acks {
            ws.send(Message::Binary(Frame::Ack(a).to_bytes()))
                .await
                .expect("send ack");
        }
        let (end, _) = read_to_end(&mut ws).await;
        assert_eq!(end, End::Close(want), "acks {acks:?}");
    }
}

/// DATA sent right after the upgrade, before the session id has been read, still arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_data_is_delivered_in_order() {
    let relay = relay();
    let port = common::echo_backend_async().await;
    let mut ws = open(relay.addr, port).await;
    let sent: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    for chunk in sent.chunks(7_000) {
        ws.send(Message::Binary(Frame::Data(chunk).to_bytes()))
            .await
            .expect("send");
    }
    expect_sid(&mut ws).await;
    let mut got = Vec::new();
    let deadline = Instant::now() + STEP;
    while got.len() < sent.len() && Instant::now() < deadline {
        match tokio::time::timeout(STEP, ws.next()).await.expect("echo") {
            Some(Ok(Message::Binary(b))) => {
                if let Ok(Frame::Data(p)) = Frame::decode(&b) {
                    got.extend_from_slice(p);
                }
            }
            Some(Ok(_)) => {}
            other => panic!("echo: {other:?}"),
        }
    }
    assert!(
        got == sent,
        "early data corrupted ({} of {} bytes)",
        got.len(),
        sent.len()
    );
}

/// Hundreds of thousands of 1-byte DATA messages towards a backend that never reads: the relay
/// stops reading in bounded memory, serves another client meanwhile, and ends cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_tiny_frames_stays_bounded() {
    let relay = relay_process();
    let pid = relay.pid();
    let (echo, deaf) = (common::echo_backend_async().await, deaf_backend().await);
    honest_round_trip(relay.addr, echo, STEP).await;
    let (before, _) = common::rss_kib(pid);
    let mut ws = open(relay.addr, deaf).await;
    expect_sid(&mut ws).await;
    let one = Message::Binary(Frame::Data(b"x").to_bytes());
    let started = Instant::now();
    let mut sent = 0u64;
    // Feed until the relay stops taking more (back-pressure) or 3,000,000 frames, at most 20 s.
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while sent < 3_000_000 {
            if ws.feed(one.clone()).await.is_err() {
                break;
            }
            sent += 1;
            if sent.is_multiple_of(1024) && ws.flush().await.is_err() {
                break;
            }
        }
        let _ = ws.flush().await;
    })
    .await;
    let (during, peak) = common::rss_kib(pid);
    eprintln!(
        "flood: {sent} one-byte DATA frames in {:?}; relay RSS before {before} KiB, after {during} KiB, peak {peak} KiB",
        started.elapsed()
    );
    honest_round_trip(relay.addr, echo, STEP).await;
    assert!(
        during.saturating_sub(before) < 128 * 1024,
        "relay RSS grew by {} KiB under a flood of tiny frames",
        during.saturating_sub(before)
    );
    drop(ws);
}

/// A request head that never ends (one header growing without bound) is cut off early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_http_headers_are_refused() {
    let relay = relay_process();
    let pid = relay.pid();
    let (before, _) = common::rss_kib(pid);
    let mut s = TcpStream::connect(relay.addr).await.expect("connect");
    let head = format!(
        "GET /v4/connect?{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nX-Big: ",
        target().connect_query(22)
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let chunk = vec![b'a'; 64 * 1024];
    let mut written = 0usize;
    let limit = 256 << 20;
    let outcome = tokio::time::timeout(Duration::from_secs(HANDSHAKE_SECS + 10), async {
        while written < limit {
            match s.write_all(&chunk).await {
                Ok(()) => written += chunk.len(),
                Err(_) => break,
            }
        }
    })
    .await;
    let (after, peak) = common::rss_kib(pid);
    eprintln!(
        "huge header: relay took {} KiB before cutting off ({outcome:?}); RSS before {before} KiB, after {after} KiB, peak {peak} KiB",
        written / 1024
    );
    assert!(
        outcome.is_ok() && written < limit,
        "relay kept reading a {} MiB header",
        written >> 20
    );
    assert!(
        peak.saturating_sub(before) < 64 * 1024,
        "relay RSS peaked {} KiB above its start on one header",
        peak.saturating_sub(before)
    );
    // Many headers rather than one long one.
    let mut s = TcpStream::connect(relay.addr).await.expect("connect");
    let mut many = String::from("GET /v4/connect HTTP/1.1\r\nHost: x\r\n");
    for i in 0..10_000 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    let _ = s.write_all(many.as_bytes()).await;
    let mut buf = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(HANDSHAKE_SECS + 5), s.read(&mut buf))
        .await
        .expect("relay answers or drops 10,000 headers in bounded time");
    if let Ok(n) = read {
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || text.starts_with("HTTP/1.1 4"), "{text}");
    }
    honest_round_trip(relay.addr, common::echo_backend_async().await, STEP).await;
}

/// Connections that never finish their upgrade (silent, a partial request line, or a request
/// trickling one byte at a time) are dropped once the handshake limit passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_upgrades_are_dropped() {
    let relay = relay();
    let head = format!(
        "GET /v4/connect?{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n",
        target().connect_query(22)
    );
    let silent = TcpStream::connect(relay.addr).await.expect("connect");
    let mut partial = TcpStream::connect(relay.addr).await.expect("connect");
    partial.write_all(b"GET /v4/conn").await.expect("write");
    let mut trickle = TcpStream::connect(relay.addr).await.expect("connect");
    let started = Instant::now();
    let trickler = tokio::spawn(async move {
        for b in head.bytes().cycle().take(10_000) {
            if trickle.write_all(&[b]).await.is_err() {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    });
    for (what, mut s) in [("silent", silent), ("partial request line", partial)] {
        let mut buf = [0u8; 512];
        let ended = tokio::time::timeout(Duration::from_secs(HANDSHAKE_SECS + 5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "{what} connection still open after {:?}",
            started.elapsed()
        );
    }
    let cut = tokio::time::timeout(Duration::from_secs(HANDSHAKE_SECS + 10), trickler)
        .await
        .expect("trickler ends")
        .expect("trickler task");
    assert!(
        cut.is_some_and(|t| t < Duration::from_secs(HANDSHAKE_SECS + 5)),
        "a one-byte-at-a-time request was not cut off: {cut:?}"
    );
    honest_round_trip(relay.addr, common::echo_backend_async().await, STEP).await;
}

/// Up to 10,000 connections opened at once from one address (127.0.0.3), each sending half an
/// upgrade: the relay keeps serving an honest client from another address, drops every one of
/// them (beyond the per-address limit at once, the rest once the handshake limit passes), and
/// its memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_at_once() {
    let nofile = common::raise_nofile();
    // This process holds one end of each and the relay the other; keep room for everything else.
    let n = 10_000usize.min(nofile.saturating_sub(512) as usize);
    if n < 10_000 {
        eprintln!("RLIMIT_NOFILE is {nofile}: opening {n} connections instead of 10,000");
    }
    let relay = relay_process();
    let pid = relay.pid();
    let echo = common::echo_backend_async().await;
    let (before, _) = common::rss_kib(pid);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let addr = relay.addr;
        tasks.spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.bind("127.0.0.3:0".parse().ok()?).ok()?;
            let mut s = socket.connect(addr).await.ok()?;
            // Half a request: a silent connection that overflowed the listen backlog may never
            // reach the relay at all (SYN cookies), which the relay cannot be blamed for.
            s.write_all(b"GET /v4/connect?project=p HTTP/1.1\r\nHost: x\r\n")
                .await
                .ok()?;
            let opened = Instant::now();
            let mut buf = [0u8; 256];
            // Wait (bounded) for the relay to drop us.
            let dropped = tokio::time::timeout(Duration::from_secs(HANDSHAKE_SECS + 30), async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await
            .is_ok();
            Some((dropped, opened.elapsed()))
        });
        if i % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    // While they are all open, an honest client still gets through; slots free up as the
    // handshake limit passes, so allow that much plus some.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (during, _) = common::rss_kib(pid);
    honest_round_trip(
        relay.addr,
        echo,
        Duration::from_secs(HANDSHAKE_SECS * 2 + 15),
    )
    .await;
    let served_after = started.elapsed();
    let mut opened = 0usize;
    let mut dropped = 0usize;
    let mut slowest = Duration::ZERO;
    while let Some(r) = tasks.join_next().await {
        if let Ok(Some((d, t))) = r {
            opened += 1;
            dropped += usize::from(d);
            slowest = slowest.max(t);
        }
    }
    let (after, peak) = common::rss_kib(pid);
    eprintln!(
        "{n} connections: {opened} opened, {dropped} dropped by the relay (slowest {slowest:?}); honest client served after {served_after:?}; relay RSS before {before} KiB, with all open {during} KiB, after {after} KiB, peak {peak} KiB"
    );
    assert!(
        opened >= n * 99 / 100,
        "only {opened} of {n} connections opened"
    );
    let log = relay.log();
    let timed_out = log.matches("handshake timed out").count();
    let failed = log.matches("handshake failed").count();
    eprintln!("relay log: {timed_out} handshake timeouts, {failed} handshake failures");
    assert_eq!(dropped, opened, "connections the relay never dropped");
    assert!(
        peak.saturating_sub(before) < 512 * 1024,
        "relay RSS peaked {} KiB above its start",
        peak.saturating_sub(before)
    );
    honest_round_trip(relay.addr, echo, STEP).await;
    assert!(!relay.log().contains("panicked"));
}
