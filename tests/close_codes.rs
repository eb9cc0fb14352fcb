//! Every close code a relay can send reaches the user as its message and exit status. A
//! scripted relay (plain `ws://` on loopback, which iap-ssh allows only there) closes with a
//! chosen code before or after the session id; the real `iap-ssh` binary runs against it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use iap_ssh::frame::Frame;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// What the scripted relay does after the upgrade.
#[derive(Clone)]
enum Script {
    /// Close at once with this code and reason.
    Close(u16, &'static str),
    /// Send a session id, then close with this code.
    SidThenClose(u16),
    /// Send these raw messages first.
    Raw(Vec<Message>),
}

/// Serves one connection with `script`; returns the ws:// URL.
async fn scripted_relay(script: Script) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        #[allow(clippy::result_large_err)] // tungstenite fixes the callback type
        let echo_subprotocol = |_: &Request, mut resp: Response| {
            resp.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("relay.tunnel.cloudproxy.app"),
            );
            Ok(resp)
        };
        let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, echo_subprotocol).await else {
            return;
        };
        let close = |code: u16, reason: &str| {
            Message::Close(Some(CloseFrame {
                code: code.into(),
                reason: reason.to_owned().into(),
            }))
        };
        let messages = match script {
            Script::Close(code, reason) => vec![close(code, reason)],
            Script::SidThenClose(code) => vec![
                Message::Binary(Frame::ConnectSuccessSid(b"sid-1").to_bytes()),
                close(code, ""),
            ],
            Script::Raw(messages) => messages,
        };
        for m in messages {
            if ws.send(m).await.is_err() {
                return;
            }
        }
        // Let the client finish its side of the close handshake.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    });
    url
}

fn run_against(url: &str) -> (i32, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let token = common::write_token_file(dir.path(), "scripted-token");
    let mut cmd = common::iap_ssh(dir.path())
        .endpoint(url)
        .token_file(&token)
        .command();
    cmd.args(["vm-1.zone-a.proj", "22"]).stdin(Stdio::piped());
    // stdin stays open (a pipe nobody writes) so only the relay can end the tunnel.
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stdin = child.stdin.take();
    let started = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "iap-ssh hung");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.stdout,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes_map_to_messages_and_exit_statuses() {
    // (script, exit status, words the one-line message must contain)
    let cases: Vec<(Script, i32, &[&str])> = vec![
        (
            Script::Close(4033, "not authorized"),
            4,
            &["not authorized", "4033", "roles/iap.tunnelResourceAccessor"],
        ),
        (
            Script::Close(4047, "Failed to lookup instance"),
            5,
            &["4047", "not found", "name, zone and project"],
        ),
        (Script::Close(4051, ""), 5, &["4051"]),
        (
            Script::Close(4003, "failed to connect to backend"),
            6,
            &["4003", "35.235.240.0/20", "port 22"],
        ),
        (Script::Close(4001, ""), 1, &["4001"]),
        (Script::Close(4002, ""), 1, &["4002"]),
        (Script::Close(4074, ""), 1, &["4074"]),
        (Script::Close(4004, ""), 3, &["4004"]),
        (Script::Close(4000, "mystery"), 1, &["4000"]),
        (
            Script::Close(4999, "odd\u{7}reason"),
            1,
            &["4999", "odd reason"],
        ),
        (Script::SidThenClose(4033), 4, &["4033"]),
        (Script::SidThenClose(1000), 0, &[]),
        (Script::SidThenClose(4009), 0, &[]),
        (Script::SidThenClose(4010), 0, &[]),
        (
            Script::Raw(vec![Message::Binary(Frame::Data(b"early").to_bytes())]),
            1,
            &["broke the protocol", "not a session id"],
        ),
        (
            Script::Raw(vec![Message::Binary(vec![0u8, 4, 0, 0, 0xff, 0xff].into())]),
            1,
            &["broke the protocol"],
        ),
        (
            Script::Raw(vec![Message::Text("hello".into())]),
            1,
            &["broke the protocol", "text"],
        ),
        (
            Script::Raw(vec![
                Message::Binary(Frame::ConnectSuccessSid(b"s").to_bytes()),
                Message::Binary(Frame::Ack(5).to_bytes()),
            ]),
            1,
            &[
                "broke the protocol",
                "acknowledged 5 bytes but only 0 were sent",
            ],
        ),
    ];
    for (script, status, words) in cases {
        let url = scripted_relay(script).await;
        let (got, stderr, stdout) = tokio::task::spawn_blocking(move || run_against(&url))
            .await
            .unwrap();
        assert_eq!(got, status, "stderr: {stderr}");
        assert!(stdout.is_empty(), "stdout is for tunnel bytes only");
        if status == 0 {
            assert!(stderr.is_empty(), "quiet on success: {stderr}");
            continue;
        }
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(!stderr.contains("scripted-token"), "token leaked: {stderr}");
        for w in words {
            assert!(stderr.contains(w), "expected {w:?} in {stderr}");
        }
    }
}

/// Data sent before the close still reaches stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_before_close_is_delivered() {
    let url = scripted_relay(Script::Raw(vec![
        Message::Binary(Frame::ConnectSuccessSid(b"s").to_bytes()),
        Message::Binary(Frame::Data(b"banner\n").to_bytes()),
        Message::Binary(Frame::Unknown(0x99).to_bytes()),
        Message::Binary(Frame::Data(b"bye\n").to_bytes()),
        Message::Close(Some(CloseFrame {
            code: 4010u16.into(),
            reason: "destination read failed".into(),
        })),
    ]))
    .await;
    let (status, stderr, stdout) = tokio::task::spawn_blocking(move || run_against(&url))
        .await
        .unwrap();
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(stdout, b"banner\nbye\n");
}
