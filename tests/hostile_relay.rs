//! A hostile relay against the real `iap-ssh` binary: garbage and oversized first messages,
//! DATA and ACKs out of place, stalls, ping floods and every close code. Each case must end
//! with one clear line on stderr and the right exit status, in bounded time, without a panic,
//! and with nothing on stdout but the tunnel bytes the relay sent.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use iap_ssh::close::{self, Disposition};
use iap_ssh::frame::{Frame, MAX_ARRAY_LEN};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// What the scripted relay does on each connection.
#[derive(Clone)]
struct Script {
    /// Messages sent right after the upgrade.
    send: Vec<Message>,
    /// Then: read (and so answer pings) for this long, or hold the socket without reading.
    after: After,
}

#[derive(Clone, Copy)]
enum After {
    /// Read until the client closes (at most 10 s).
    Read,
    /// Hold the connection open without reading or writing, up to this long.
    Stall(Duration),
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason.to_owned().into(),
    }))
}

fn sid() -> Message {
    Message::Binary(Frame::ConnectSuccessSid(b"hostile-sid").to_bytes())
}

fn bin(bytes: &[u8]) -> Message {
    Message::Binary(bytes.to_vec().into())
}

fn script(send: Vec<Message>) -> Script {
    Script {
        send,
        after: After::Read,
    }
}

/// Finishes the upgrade, agreeing to the relay subprotocol as a relay does.
async fn accept(
    stream: tokio::net::TcpStream,
) -> Option<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    #[allow(clippy::result_large_err)] // tungstenite fixes the callback type
    let echo_subprotocol = |_: &Request, mut resp: Response| {
        resp.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("relay.tunnel.cloudproxy.app"),
        );
        Ok(resp)
    };
    tokio_tungstenite::accept_hdr_async(stream, echo_subprotocol)
        .await
        .ok()
}

/// Serves the first connection with `script`, then stops listening (so a resume finds nothing).
async fn scripted_relay(script: Script) -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind scripted relay");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let Ok(Ok((stream, _))) =
            tokio::time::timeout(Duration::from_secs(30), listener.accept()).await
        else {
            return;
        };
        drop(listener);
        let Some(mut ws) = accept(stream).await else {
            return;
        };
        for m in script.send {
            if ws.feed(m).await.is_err() {
                return;
            }
        }
        let _ = ws.flush().await;
        match script.after {
            After::Read => {
                let _ = tokio::time::timeout(Duration::from_secs(10), async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
            }
            After::Stall(d) => {
                tokio::time::sleep(d).await;
                drop(ws);
            }
        }
    });
    url
}

/// What one iap-ssh run did.
struct Run {
    status: i32,
    stderr: String,
    stdout: Vec<u8>,
    took: Duration,
}

/// Runs iap-ssh against `url` with `stdin_bytes` written to its stdin (kept open afterwards)
/// and `extra` arguments; kills it and fails after `limit`.
fn run_iap_ssh(url: &str, stdin_bytes: &[u8], extra: &[&str], limit: Duration) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = common::write_token_file(dir.path(), "hostile-relay-token");
    let mut cmd = Command::new(common::iap_ssh_bin());
    common::hermetic_env(&mut cmd, dir.path());
    cmd.args(["--endpoint", url, "--access-token-file"])
        .arg(&token)
        .args(["--no-token-cache"])
        .args(extra)
        .args(["vm-1.zone-a.proj", "22"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = common::ChildGuard::new(cmd.spawn().expect("spawn iap-ssh"));
    let mut stdin = child.child_mut().stdin.take().expect("stdin");
    if !stdin_bytes.is_empty() {
        let _ = stdin.write_all(stdin_bytes);
        let _ = stdin.flush();
    }
    // Pipes are drained on threads so a chatty child cannot block on a full pipe.
    let mut out = child.child_mut().stdout.take().expect("stdout");
    let mut err = child.child_mut().stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait() {
            break s;
        }
        assert!(
            started.elapsed() < limit,
            "iap-ssh still running after {limit:?} against {url}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    drop(stdin);
    Run {
        status: status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned(),
        stdout: out_t.join().unwrap_or_default(),
        took,
    }
}

/// Checks a failed run: status, one clear line naming `words`, no panic, no stray stdout.
fn assert_failure(what: &str, run: &Run, status: i32, words: &[&str], stdout: &[u8]) {
    let ctx = format!(
        "{what}: status {} after {:?}\n--- stderr ---\n{}",
        run.status, run.took, run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{ctx}");
    assert_eq!(run.status, status, "{ctx}");
    assert!(
        run.stdout == stdout,
        "{what}: stdout {:?}",
        String::from_utf8_lossy(&run.stdout)
    );
    if status == 0 {
        assert!(run.stderr.is_empty(), "{ctx}");
        return;
    }
    assert_eq!(run.stderr.lines().count(), 1, "one line: {ctx}");
    assert!(run.stderr.starts_with("iap-ssh: "), "{ctx}");
    assert!(
        !run.stderr.contains("hostile-relay-token"),
        "token leaked: {ctx}"
    );
    for w in words {
        assert!(run.stderr.contains(w), "expected {w:?}: {ctx}");
    }
}

async fn case(script: Script, stdin: &'static [u8], extra: &'static [&'static str]) -> Run {
    let url = scripted_relay(script).await;
    tokio::task::spawn_blocking(move || run_iap_ssh(&url, stdin, extra, Duration::from_secs(45)))
        .await
        .expect("runner thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_misplaced_first_messages() {
    let mut long_sid = vec![0u8, 1];
    long_sid.extend_from_slice(&((MAX_ARRAY_LEN + 1) as u32).to_be_bytes());
    long_sid.resize(6 + MAX_ARRAY_LEN + 1, b's');
    let mut huge_sid = vec![0u8, 1];
    huge_sid.extend_from_slice(&(1_000_000u32).to_be_bytes());
    huge_sid.resize(6 + 1_000_000, b's');
    let cases: Vec<(&str, Vec<Message>, &[&str])> = vec![
        (
            "random bytes",
            vec![bin(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3])],
            &["broke the protocol"],
        ),
        ("empty binary", vec![bin(&[])], &["broke the protocol"]),
        ("one byte", vec![bin(&[0])], &["broke the protocol"]),
        (
            "text",
            vec![Message::Text("{\"hello\":1}".into())],
            &["broke the protocol", "text"],
        ),
        (
            "SID length u32::MAX",
            vec![bin(&[0, 1, 0xff, 0xff, 0xff, 0xff])],
            &["broke the protocol"],
        ),
        (
            "SID of 16385 bytes",
            vec![Message::Binary(long_sid.into())],
            &["broke the protocol", "16385"],
        ),
        (
            "SID of 1 MB",
            vec![Message::Binary(huge_sid.into())],
            &["relay"],
        ),
        (
            "empty SID",
            vec![bin(&[0, 1, 0, 0, 0, 0])],
            &["broke the protocol"],
        ),
        (
            "DATA before the SID",
            vec![Message::Binary(Frame::Data(b"x").to_bytes())],
            &["broke the protocol", "not a session id"],
        ),
        (
            "ACK before the SID",
            vec![Message::Binary(Frame::Ack(0).to_bytes())],
            &["broke the protocol"],
        ),
        (
            "resume answer to a connect",
            vec![Message::Binary(Frame::ReconnectSuccessAck(0).to_bytes())],
            &["broke the protocol"],
        ),
        (
            "LONG_CLOSE first",
            vec![Message::Binary(
                Frame::LongClose {
                    code: 4033,
                    reason: b"no",
                }
                .to_bytes(),
            )],
            &["broke the protocol"],
        ),
    ];
    for (what, send, words) in cases {
        let run = case(script(send), b"", &[]).await;
        assert_failure(what, &run, 1, words, b"");
        assert!(
            run.took < Duration::from_secs(10),
            "{what}: took {:?}",
            run.took
        );
    }
}

/// ACKs for bytes never sent, and ACKs going backwards, end the tunnel as protocol errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_acks_from_the_relay() {
    let ack = |n| Message::Binary(Frame::Ack(n).to_bytes());
    type Case = (
        &'static str,
        Vec<Message>,
        &'static [u8],
        &'static [&'static str],
    );
    let cases: Vec<Case> = vec![
        (
            "ACK with nothing sent",
            vec![sid(), ack(1)],
            b"",
            &["acknowledged 1 bytes but only 0 were sent"],
        ),
        (
            "ACK u64::MAX",
            vec![sid(), ack(u64::MAX)],
            b"hello",
            &["broke the protocol"],
        ),
    ];
    for (what, send, stdin, words) in cases {
        let run = case(script(send), stdin, &[]).await;
        assert_failure(what, &run, 1, words, b"");
    }
    // With 5 bytes sent: beyond, then backwards. The relay waits to see the DATA first.
    for (acks, words) in [
        (
            &[6u64][..],
            &["acknowledged 6 bytes but only 5 were sent"][..],
        ),
        (&[5, 3], &["acknowledged 3 bytes after acknowledging 5"]),
    ] {
        let url = {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("ws://{}", listener.local_addr().expect("addr"));
            let acks = acks.to_vec();
            tokio::spawn(async move {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let Some(mut ws) = accept(stream).await else {
                    return;
                };
                let _ = ws.send(sid()).await;
                let mut got = 0usize;
                let _ = tokio::time::timeout(Duration::from_secs(10), async {
                    while got < 5 {
                        match ws.next().await {
                            Some(Ok(Message::Binary(b))) => {
                                if let Ok(Frame::Data(p)) = Frame::decode(&b) {
                                    got += p.len();
                                }
                            }
                            Some(Ok(_)) => {}
                            _ => return,
                        }
                    }
                    for a in acks {
                        let _ = ws.send(ack(a)).await;
                    }
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
            });
            url
        };
        let run = tokio::task::spawn_blocking(move || {
            run_iap_ssh(&url, b"hello", &[], Duration::from_secs(30))
        })
        .await
        .expect("runner");
        assert_failure(&format!("acks {acks:?}"), &run, 1, words, b"");
    }
}

/// Pings before the session id, and a flood of them after it, are answered and ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_floods_are_answered_and_ignored() {
    let mut send: Vec<Message> = (0..1000)
        .map(|_| Message::Ping(Default::default()))
        .collect();
    send.push(sid());
    send.extend((0..50_000).map(|i| Message::Ping(vec![(i % 256) as u8; 8].into())));
    send.push(Message::Binary(Frame::Data(b"ok\n").to_bytes()));
    send.extend((0..50_000).map(|_| Message::Ping(Default::default())));
    send.push(close(1000, ""));
    let run = case(script(send), b"", &[]).await;
    assert_failure("ping flood", &run, 0, &[], b"ok\n");
    assert!(run.took < Duration::from_secs(30), "took {:?}", run.took);
}

/// Regression: a ping before the session id used to fail the tunnel as "its first message was
/// a ping message", although WebSocket control frames may come at any time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_before_the_session_id_is_not_a_violation() {
    let send = vec![
        Message::Ping(Default::default()),
        sid(),
        Message::Binary(Frame::Data(b"hi").to_bytes()),
        close(4010, "destination read failed"),
    ];
    let run = case(script(send), b"", &[]).await;
    assert_failure("ping first", &run, 0, &[], b"hi");
}

/// A relay that accepts the upgrade and then says nothing: iap-ssh gives up after
/// FIRST_FRAME_TIMEOUT (60 s), not never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_relay_is_given_up_on() {
    let s = Script {
        send: vec![],
        after: After::Stall(Duration::from_secs(90)),
    };
    let url = scripted_relay(s).await;
    let run =
        tokio::task::spawn_blocking(move || run_iap_ssh(&url, b"", &[], Duration::from_secs(80)))
            .await
            .expect("runner");
    assert_failure(
        "silent relay",
        &run,
        1,
        &["did not confirm the tunnel", "60s"],
        b"",
    );
}

/// A relay that stops reading and answering after the session id while we wait for an ACK:
/// the keepalive notices, the resume finds nobody, and iap-ssh gives up within its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_session_is_given_up_on() {
    let s = Script {
        send: vec![sid()],
        after: After::Stall(Duration::from_secs(90)),
    };
    let url = scripted_relay(s).await;
    let run = tokio::task::spawn_blocking(move || {
        run_iap_ssh(
            &url,
            b"anyone there?",
            &["--resume-timeout", "3"],
            Duration::from_secs(60),
        )
    })
    .await
    .expect("runner");
    assert_failure(
        "stalled session",
        &run,
        1,
        &["could not resume within 3s"],
        b"",
    );
    assert!(run.took < Duration::from_secs(40), "took {:?}", run.took);
}

/// Every close code, before and after the session id: the right status, one clear line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_close_with_every_code() {
    let codes: &[u16] = &[
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 3000, 4000, 4001, 4002, 4003, 4004, 4005,
        4006, 4007, 4008, 4009, 4010, 4013, 4033, 4047, 4051, 4074, 4080, 4999,
    ];
    for &code in codes {
        // Before the session id: every close is a failure, with the code's exit status.
        let run = case(
            script(vec![close(code, "")]),
            b"",
            &["--resume-timeout", "3"],
        )
        .await;
        let status = i32::from(close::exit_kind(code).code());
        assert_failure(
            &format!("close {code} first"),
            &run,
            status,
            &[&code.to_string()],
            b"",
        );
        assert!(
            run.took < Duration::from_secs(15),
            "close {code}: took {:?}",
            run.took
        );

        // After it: ends in order, fails, or tries to resume and gives up within 3 s.
        let send = vec![
            sid(),
            Message::Binary(Frame::Data(b"tunnel").to_bytes()),
            close(code, ""),
        ];
        let run = case(script(send), b"", &["--resume-timeout", "3"]).await;
        let (status, words): (i32, Vec<String>) = match close::disposition(code) {
            Disposition::Finished => (0, vec![]),
            Disposition::Fatal => (
                i32::from(close::exit_kind(code).code()),
                vec![code.to_string()],
            ),
            Disposition::Resumable => (1, vec!["could not resume".into()]),
        };
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        assert_failure(
            &format!("close {code} after the SID"),
            &run,
            status,
            &words,
            b"tunnel",
        );
        assert!(
            run.took < Duration::from_secs(20),
            "close {code}: took {:?}",
            run.took
        );
    }
    // A close frame with no code at all.
    let run = case(script(vec![Message::Close(None)]), b"", &[]).await;
    assert_failure("close without a code", &run, 1, &[], b"");
}
