//! How the relay ends sessions whose client leaves without a WebSocket close, and how it
//! reports a client that stops acknowledging:
//!
//! * a gcloud client (known by its `User-Agent`) leaving an idle session: complete at once,
//!   audited as such, nothing parked;
//! * a gcloud client lost in the middle of a download: parked, and resumable from its ACK;
//! * any other client leaving an idle session: parked as before (iap-ssh resumes);
//! * a client that stops acknowledging with more than 32 KiB unacknowledged: one `stall`
//!   audit line, a warning and a metric, while the session stays open.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use iap_ssh::client::auth::Token;
use iap_ssh::client::dial::{Dialer, RelaySocket};
use iap_ssh::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "session-end-test-token-0123";
const PRINCIPAL: &str = "user:alice@example.com";
const GCLOUD_UA: &str = "gcloud/528.0.0 command/gcloud.compute.start-iap-tunnel invocation-id/0";
const COMPLETE: &str = "complete; client left without a close";

/// The byte at stream offset `i` of [`streaming_backend`].
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8
}

/// A backend that sends `len` pattern bytes to one client as fast as it can take them.
fn streaming_backend(len: u64) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let mut sent = 0u64;
        while sent < len {
            let n = (len - sent).min(16 * 1024);
            let chunk: Vec<u8> = (sent..sent + n).map(pattern).collect();
            if s.write_all(&chunk).is_err() {
                return;
            }
            sent += n;
        }
        // Hold the connection open until the relay closes it.
        let _ = s.read(&mut [0u8; 1]);
    });
    port
}

struct Rig {
    relay: Relay,
    audit: PathBuf,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

fn rig(limits: Limits) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let admin_port = free_port();
    let spec = RelaySpec {
        audit_log: Some(audit.clone()),
        admin_listen: Some(([127, 0, 0, 1], admin_port).into()),
        limits,
        ..RelaySpec::standard(PRINCIPAL, TOKEN)
    };
    Rig {
        relay: spawn_relay(&spec),
        audit,
        admin: ([127, 0, 0, 1], admin_port).into(),
        _dir: dir,
    }
}

async fn open(d: &Dialer, port: u16) -> (RelaySocket, String) {
    let mut ws = d
        .open("connect", &connect_query(port), &Token::new(TOKEN).unwrap())
        .await
        .unwrap();
    match ws.next().await {
        Some(Ok(Message::Binary(b))) => match Frame::decode(&b) {
            Ok(Frame::ConnectSuccessSid(sid)) => {
                let sid = String::from_utf8(sid.to_vec()).unwrap();
                (ws, sid)
            }
            other => panic!("expected a session id, got {other:?}"),
        },
        other => panic!("expected a session id, got {other:?}"),
    }
}

/// Reads DATA until `want` bytes have arrived (ACKing none); returns them.
async fn read_data(ws: &mut RelaySocket, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < want {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => {
                if let Ok(Frame::Data(d)) = Frame::decode(&b) {
                    got.extend_from_slice(d);
                }
            }
            other => panic!("expected DATA, got {other:?}"),
        }
    }
    got
}

/// Ends the WebSocket the way gcloud does when ssh ends it: the socket closes, no close frame.
fn drop_without_close(ws: RelaySocket) {
    drop(ws);
}

/// Waits (bounded) for an audit line of `event` for `sid`.
fn wait_for_event(rig: &Rig, event: &str, sid: &str, within: Duration) -> serde_json::Value {
    let started = Instant::now();
    loop {
        if let Some(line) = audit_lines(&rig.audit)
            .into_iter()
            .find(|l| l["event"] == event && l["sid"] == sid)
        {
            return line;
        }
        assert!(
            started.elapsed() < within,
            "no {event} line for {sid} within {within:?}\n--- audit ---\n{}\n--- relay ---\n{}",
            std::fs::read_to_string(&rig.audit).unwrap_or_default(),
            rig.relay.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn gcloud_leaving_an_idle_session_completes_it_without_parking() {
    let rig = rig(Limits::default());
    let backend = echo_backend();
    let sid = runtime().block_on(async {
        let (mut ws, sid) = open(&dialer(&rig.relay, GCLOUD_UA), backend).await;
        ws.send(Message::Binary(Frame::Data(b"exit\n").to_bytes()))
            .await
            .unwrap();
        assert_eq!(read_data(&mut ws, 5).await, b"exit\n");
        // Like gcloud, leave the last bytes unacknowledged (below its ACK threshold).
        drop_without_close(ws);
        sid
    });
    let close = wait_for_event(&rig, "close", &sid, Duration::from_secs(10));
    assert_eq!(close["reason"], COMPLETE, "{close}");
    assert_eq!(close["code"], 1000, "{close}");
    let log = rig.relay.log();
    assert!(!log.contains("parked for resume"), "{log}");
    let m = metrics(rig.admin);
    assert!(m.contains("iap_relay_sessions_open 0"), "{m}");
    assert!(
        m.contains("iap_relay_sessions_total{result=\"complete\"} 1"),
        "{m}"
    );
}

#[test]
fn another_client_leaving_an_idle_session_is_parked_for_resume() {
    let rig = rig(Limits {
        resume_window_secs: Some(2),
        ..Limits::default()
    });
    let backend = echo_backend();
    let sid = runtime().block_on(async {
        let (mut ws, sid) = open(&dialer(&rig.relay, "iap-ssh/test"), backend).await;
        ws.send(Message::Binary(Frame::Data(b"hello").to_bytes()))
            .await
            .unwrap();
        assert_eq!(read_data(&mut ws, 5).await, b"hello");
        drop_without_close(ws);
        sid
    });
    let close = wait_for_event(&rig, "close", &sid, Duration::from_secs(15));
    assert_eq!(close["reason"], "resume window ended", "{close}");
    assert!(rig.relay.log().contains("parked for resume"));
}

#[test]
fn gcloud_lost_in_the_middle_of_a_download_is_parked_and_resumes() {
    const LEN: u64 = 8 << 20;
    let rig = rig(Limits::default());
    let backend = streaming_backend(LEN);
    runtime().block_on(async {
        let d = dialer(&rig.relay, GCLOUD_UA);
        let (mut ws, sid) = open(&d, backend).await;
        let first = read_data(&mut ws, 256 * 1024).await;
        let ack = first.len() as u64;
        drop_without_close(ws);
        // The backend keeps sending: the session must wait for its client.
        let started = Instant::now();
        while !rig.relay.log().contains("parked for resume") {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{}",
                rig.relay.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let query = format!("sid={sid}&ack={ack}&newWebsocket=True&zone={ZONE}");
        let mut ws = d
            .open("reconnect", &query, &Token::new(TOKEN).unwrap())
            .await
            .unwrap();
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                assert!(
                    matches!(Frame::decode(&b), Ok(Frame::ReconnectSuccessAck(_))),
                    "{b:?}"
                );
            }
            other => panic!("expected RECONNECT_SUCCESS_ACK, got {other:?}"),
        }
        // The rest of the stream, acknowledged as it comes, must continue exactly at `ack`.
        let mut position = ack;
        while position < LEN {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => {
                    if let Ok(Frame::Data(data)) = Frame::decode(&b) {
                        for (i, byte) in data.iter().enumerate() {
                            assert_eq!(
                                *byte,
                                pattern(position + i as u64),
                                "at {}",
                                position + i as u64
                            );
                        }
                        position += data.len() as u64;
                        ws.send(Message::Binary(Frame::Ack(position).to_bytes()))
                            .await
                            .unwrap();
                    }
                }
                other => panic!("stream ended at {position}: {other:?}"),
            }
        }
        let _ = ws.close(None).await;
    });
    assert!(
        rig.relay.log().contains(" reconnect "),
        "{}",
        rig.relay.log()
    );
}

#[test]
fn a_client_that_stops_acknowledging_is_reported() {
    let rig = rig(Limits {
        max_unacked_bytes: Some(262_144),
        ..Limits::default()
    });
    let backend = streaming_backend(4 << 20);
    runtime().block_on(async {
        let (mut ws, sid) = open(&dialer(&rig.relay, "iap-ssh/test"), backend).await;
        // Take everything the relay may send, and acknowledge none of it.
        let _ = read_data(&mut ws, 256 * 1024).await;
        let line = tokio::task::spawn_blocking({
            let sid = sid.clone();
            let (audit, relay_url) = (rig.audit.clone(), rig.relay.url.clone());
            move || {
                let started = Instant::now();
                loop {
                    if let Some(line) = audit_lines(&audit)
                        .into_iter()
                        .find(|l| l["event"] == "stall" && l["sid"] == sid)
                    {
                        return line;
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(20),
                        "no stall line from {relay_url}"
                    );
                    thread::sleep(Duration::from_millis(100));
                }
            }
        })
        .await
        .unwrap();
        assert!(
            line["reason"]
                .as_str()
                .unwrap()
                .contains("bytes unacknowledged"),
            "{line}"
        );
        let m = tokio::task::spawn_blocking({
            let admin = rig.admin;
            move || metrics(admin)
        })
        .await
        .unwrap();
        assert!(m.contains("iap_relay_stalls_total 1"), "{m}");
        // Still open: an ACK lets it go on.
        ws.send(Message::Binary(Frame::Ack(256 * 1024).to_bytes()))
            .await
            .unwrap();
        let more = read_data(&mut ws, 16 * 1024).await;
        assert!(!more.is_empty());
        let _ = ws.close(None).await;
    });
    let log = rig.relay.log();
    assert!(log.contains("client stopped acknowledging"), "{log}");
}
