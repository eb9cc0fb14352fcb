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
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use iap_ssh::client::report;
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
    /// Drop the connection at once, without a close frame (a lost connection).
    Drop,
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
/// Plays `script` on an upgraded connection: its messages, then what comes after.
async fn play(mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, script: Script) {
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
        After::Stall(d) => tokio::time::sleep(d).await,
        After::Drop => {}
    }
}

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
        let Some(ws) = accept(stream).await else {
            return;
        };
        play(ws, script).await;
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
    run_iap_ssh_env(url, stdin_bytes, extra, &[], limit)
}

/// [`run_iap_ssh`] with extra environment variables.
fn run_iap_ssh_env(
    url: &str,
    stdin_bytes: &[u8],
    extra: &[&str],
    envs: &[(&str, &str)],
    limit: Duration,
) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = common::write_token_file(dir.path(), "hostile-relay-token");
    let mut builder = common::iap_ssh(dir.path());
    if !url.is_empty() {
        builder = builder.endpoint(url);
    }
    let mut cmd = builder.token_file(&token).command();
    cmd.args(["--no-token-cache"])
        .args(extra)
        .args(["vm-1.zone-a.proj", "22"])
        .envs(envs.iter().copied())
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
    // Resume notices may come first; the failure itself is one line.
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.starts_with(report::NOTICE_PREFIX))
        .collect();
    assert_eq!(lines.len(), 1, "one line: {ctx}");
    assert!(lines[0].starts_with("iap-ssh: "), "{ctx}");
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
            "random bytes after a known tag",
            vec![bin(&[0, 1, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3])],
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
    // The resume took over a second, so the user was told, before the final line.
    let first = run.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("iap-ssh: resuming the tunnel to vm-1 port 22 in proj/zone-a: the connection to the relay was lost (no answer from the relay for"),
        "{}",
        run.stderr
    );
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

// ---------------------------------------------------------------------------------------------
// Where Google's relay may differ from ours: iap-ssh is as tolerant as gcloud.
// ---------------------------------------------------------------------------------------------

/// What a [`sequence_relay`] saw of one upgrade request.
#[derive(Clone, Debug, Default)]
struct Seen {
    path: String,
    host: String,
    reason: Option<String>,
}

/// What a [`sequence_relay`] does with one connection.
enum Step {
    /// Close the TCP connection at once (RST), as a relay that is down.
    Refuse,
    /// Upgrade and follow the script.
    Serve(Script),
}

type SeenLog = std::sync::Arc<std::sync::Mutex<Vec<Seen>>>;

/// A relay that serves connection `n` (from 0), accepted `t` after the first, with
/// `plan(n, t)`, recording each upgrade request. At most 100 connections, within 60 s.
async fn sequence_relay(
    plan: impl Fn(usize, Duration) -> Step + Send + 'static,
) -> (String, SeenLog) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    sequence_relay_on(listener, plan)
}

fn sequence_relay_on(
    listener: TcpListener,
    plan: impl Fn(usize, Duration) -> Step + Send + 'static,
) -> (String, SeenLog) {
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let seen = SeenLog::default();
    let log = seen.clone();
    tokio::spawn(async move {
        let mut first: Option<Instant> = None;
        for n in 0..100 {
            let Ok(Ok((stream, _))) =
                tokio::time::timeout(Duration::from_secs(60), listener.accept()).await
            else {
                return;
            };
            let since = first.get_or_insert_with(Instant::now).elapsed();
            let script = match plan(n, since) {
                Step::Refuse => {
                    #[allow(deprecated)]
                    // tokio deprecates linger for its blocking close; fine here
                    let _ = stream.set_linger(Some(Duration::ZERO));
                    continue;
                }
                Step::Serve(script) => script,
            };
            let log = log.clone();
            tokio::spawn(async move {
                #[allow(clippy::result_large_err)] // tungstenite fixes the callback type
                let record = |req: &Request, mut resp: Response| {
                    let header = |name: &str| {
                        req.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    log.lock().unwrap().push(Seen {
                        path: req.uri().to_string(),
                        host: header("host").unwrap_or_default(),
                        reason: header("x-goog-request-reason"),
                    });
                    resp.headers_mut().insert(
                        "Sec-WebSocket-Protocol",
                        HeaderValue::from_static("relay.tunnel.cloudproxy.app"),
                    );
                    Ok(resp)
                };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                    return;
                };
                play(ws, script).await;
            });
        }
    });
    (url, seen)
}

fn data(bytes: &[u8]) -> Message {
    Message::Binary(Frame::Data(bytes).to_bytes())
}

fn long_close(code: u32, reason: &str) -> Message {
    Message::Binary(
        Frame::LongClose {
            code,
            reason: reason.as_bytes(),
        }
        .to_bytes(),
    )
}

/// `message` with `extra` bytes appended.
fn with_trailing(message: Message, extra: &[u8]) -> Message {
    let mut bytes = message.into_data().to_vec();
    bytes.extend_from_slice(extra);
    Message::Binary(bytes.into())
}

/// Unknown tags (before and after the session id), trailing bytes after any message and empty
/// DATA are ignored, as gcloud ignores them; the tunnel carries the real data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tags_trailing_bytes_and_empty_data_are_ignored() {
    let cases: Vec<(&str, Vec<Message>, &[u8])> = vec![
        (
            "unknown tags before the session id",
            vec![
                bin(&[0x00, 0x99, 1, 2, 3]),
                bin(&[0x00, 0x03]),
                Message::Ping(Default::default()),
                bin(&[0xde, 0xad, 0xbe, 0xef]),
                sid(),
                bin(&[0x12, 0x34, 9]),
                data(b"ok"),
                close(4010, "destination read failed"),
            ],
            b"ok",
        ),
        (
            "trailing bytes and empty DATA",
            vec![
                with_trailing(sid(), &[1, 2, 3]),
                with_trailing(data(b"a"), &[9]),
                bin(&[0, 4, 0, 0, 0, 0]),
                with_trailing(Message::Binary(Frame::Ack(0).to_bytes()), &[7, 7]),
                bin(&[0, 4, 0, 0, 0, 0, 5]),
                data(b"b"),
                close(4010, ""),
            ],
            b"ab",
        ),
    ];
    for (what, send, want) in cases {
        let run = case(script(send), b"", &[]).await;
        assert_failure(what, &run, 0, &[], want);
    }
    // With -vv each is named in a debug line (never its payload).
    let send = vec![
        bin(&[0x00, 0x99]),
        with_trailing(sid(), &[1]),
        bin(&[0, 4, 0, 0, 0, 0]),
        data(b"z"),
        close(1000, ""),
    ];
    let run = case(script(send), b"", &["-vv"]).await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    for line in [
        "ignored a relay message with an unknown tag tag=0x0099",
        "ignored trailing bytes after a relay message",
        "ignored an empty DATA message",
    ] {
        assert!(run.stderr.contains(line), "{line:?} in {}", run.stderr);
    }
}

/// A LONG_CLOSE before the session id (or before the close of an open tunnel) is honoured:
/// the user sees its code and reason, not a protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_close_is_reported_with_its_code_and_reason() {
    type Case = (
        &'static str,
        Vec<Message>,
        After,
        i32,
        &'static [&'static str],
        &'static [u8],
    );
    let cases: Vec<Case> = vec![
        (
            "LONG_CLOSE then close 4033",
            vec![long_close(4033, "not authorized"), close(4033, "")],
            After::Read,
            4,
            &[
                "not authorized to reach vm-1",
                "(4033)",
                "roles/iap.tunnelResourceAccessor",
            ],
            b"",
        ),
        (
            "LONG_CLOSE then a close without a code",
            vec![long_close(4033, "org policy says no"), Message::Close(None)],
            After::Read,
            4,
            &["(4033 org policy says no)"],
            b"",
        ),
        (
            "LONG_CLOSE then the connection drops",
            vec![long_close(4047, "Failed to lookup instance")],
            After::Drop,
            5,
            &["(4047 Failed to lookup instance)", "was not found"],
            b"",
        ),
        (
            "LONG_CLOSE and nothing more",
            vec![long_close(4003, "")],
            After::Stall(Duration::from_secs(30)),
            6,
            &["(4003 failed to connect to backend)"],
            b"",
        ),
        (
            "LONG_CLOSE in an open tunnel",
            vec![
                sid(),
                data(b"x"),
                long_close(4003, "backend gone"),
                Message::Close(None),
            ],
            After::Read,
            6,
            &["(4003 backend gone)"],
            b"x",
        ),
    ];
    for (what, send, after, status, words, stdout) in cases {
        let run = case(Script { send, after }, b"", &[]).await;
        assert_failure(what, &run, status, words, stdout);
        assert!(
            !run.stderr.contains("broke the protocol"),
            "{what}: {}",
            run.stderr
        );
        assert!(
            run.took < Duration::from_secs(10),
            "{what}: took {:?}",
            run.took
        );
    }
}

/// A relay that answers pings but is slow to acknowledge our data (nothing documents how soon
/// Google acknowledges a small write) keeps its tunnel: no reconnect after 10 s of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_acknowledger_that_answers_pings_keeps_its_tunnel() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let relay = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        // One connection only: a reconnect would find nobody.
        drop(listener);
        let mut ws = accept(stream).await.expect("upgrade");
        ws.send(sid()).await.expect("send sid");
        let mut got = Vec::new();
        let mut pings = 0;
        // Read (tungstenite answers pings) for 25 s without ever acknowledging.
        let _ = tokio::time::timeout(Duration::from_secs(25), async {
            while let Some(Ok(m)) = ws.next().await {
                match m {
                    Message::Binary(b) => {
                        if let Ok(Frame::Data(p)) = Frame::decode(&b) {
                            got.extend_from_slice(p);
                        }
                    }
                    Message::Ping(_) => pings += 1,
                    _ => {}
                }
            }
        })
        .await;
        let _ = ws.send(data(b"still here")).await;
        let _ = ws.send(close(4010, "")).await;
        while let Some(Ok(_)) = ws.next().await {}
        (got, pings)
    });
    let run = tokio::task::spawn_blocking(move || {
        run_iap_ssh(&url, b"hello", &[], Duration::from_secs(60))
    })
    .await
    .expect("runner");
    assert_failure("slow acknowledger", &run, 0, &[], b"still here");
    let (got, pings) = relay.await.expect("relay");
    assert_eq!(got, b"hello");
    assert!(pings >= 3, "iap-ssh probed the path with pings: {pings}");
}

/// 4002 (session in use) on a resume is retried: the relay may still hold the connection we
/// lost. The tunnel comes back and carries data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_in_use_on_resume_is_retried() {
    let (url, seen) = sequence_relay(|n, _| {
        Step::Serve(match n {
            0 => Script {
                send: vec![sid()],
                after: After::Drop,
            },
            1 | 2 => script(vec![close(4002, "session id in use")]),
            _ => script(vec![
                Message::Binary(Frame::ReconnectSuccessAck(0).to_bytes()),
                data(b"back"),
                close(4010, ""),
            ]),
        })
    })
    .await;
    let run = tokio::task::spawn_blocking(move || {
        run_iap_ssh(
            &url,
            b"",
            &["--resume-timeout", "20"],
            Duration::from_secs(40),
        )
    })
    .await
    .expect("runner");
    assert_failure("4002 then resume", &run, 0, &[], b"back");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen[0].path.starts_with("/v4/connect?"), "{seen:?}");
    for s in &seen[1..] {
        assert!(
            s.path.starts_with("/v4/reconnect?sid=hostile-sid&ack=0"),
            "{seen:?}"
        );
    }
}

/// A 4002 that does not go away within the resume budget ends the tunnel with its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_in_use_until_the_budget_runs_out_is_reported() {
    let (url, _) = sequence_relay(|n, _| {
        Step::Serve(match n {
            0 => Script {
                send: vec![sid()],
                after: After::Drop,
            },
            _ => script(vec![close(4002, "")]),
        })
    })
    .await;
    let run = tokio::task::spawn_blocking(move || {
        run_iap_ssh(
            &url,
            b"",
            &["--resume-timeout", "3"],
            Duration::from_secs(30),
        )
    })
    .await
    .expect("runner");
    assert_failure(
        "4002 forever",
        &run,
        1,
        &["could not resume within 3s", "(4002)", "still attached"],
        b"",
    );
}

/// The upgrade request carries gcloud's headers: `X-Goog-Request-Reason` from
/// `--request-reason` (or `CLOUDSDK_CORE_REQUEST_REASON`), and a Host header that leaves the
/// scheme's default port out, as gcloud's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reason_and_host_headers() {
    let serve = |_, _| Step::Serve(script(vec![sid(), close(1000, "")]));
    // (arguments, environment, expected reason)
    type Case = (
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (&[], &[], None),
        (
            &["--request-reason", "ticket 42: disk full"],
            &[],
            Some("ticket 42: disk full"),
        ),
        (
            &[],
            &[("CLOUDSDK_CORE_REQUEST_REASON", "from the environment")],
            Some("from the environment"),
        ),
        (
            &["--request-reason", "flag wins"],
            &[("CLOUDSDK_CORE_REQUEST_REASON", "env")],
            Some("flag wins"),
        ),
    ];
    for (args, envs, reason) in cases {
        let (url, seen) = sequence_relay(serve).await;
        let authority = url.trim_start_matches("ws://").to_owned();
        let run = tokio::task::spawn_blocking(move || {
            run_iap_ssh_env(&url, b"", args, envs, Duration::from_secs(30))
        })
        .await
        .expect("runner");
        assert_failure(&format!("{args:?} {envs:?}"), &run, 0, &[], b"");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].reason.as_deref(), reason, "{args:?} {envs:?}");
        // A non-default port stays in the Host header.
        assert_eq!(seen[0].host, authority);
    }
    // A request reason with a control character is a usage error, before any connection.
    let run = tokio::task::spawn_blocking(|| {
        run_iap_ssh(
            "ws://127.0.0.1:9",
            b"",
            &["--request-reason", "a\u{1b}b"],
            Duration::from_secs(30),
        )
    })
    .await
    .expect("runner");
    assert_failure(
        "bad reason",
        &run,
        2,
        &["request reason", "control characters"],
        b"",
    );

    // The default port: Host without ":80" (for wss:// the same rule drops ":443").
    match TcpListener::bind("127.0.0.1:80").await {
        Ok(listener) => {
            let (_, seen) = sequence_relay_on(listener, serve);
            let run = tokio::task::spawn_blocking(|| {
                run_iap_ssh("ws://127.0.0.1:80", b"", &[], Duration::from_secs(30))
            })
            .await
            .expect("runner");
            assert_failure("port 80", &run, 0, &[], b"");
            let seen = seen.lock().unwrap().clone();
            assert_eq!(seen.len(), 1, "{seen:?}");
            assert_eq!(seen[0].host, "127.0.0.1", "no default port in Host");
        }
        Err(e) => eprintln!("skipping the default-port Host check: cannot bind 127.0.0.1:80: {e}"),
    }
}

/// Outside the default universe the relay is `tunnel-cloudproxy.<universe domain>`, from
/// `--universe-domain` or `CLOUDSDK_CORE_UNIVERSE_DOMAIN`. Seen through a local HTTP proxy,
/// so nothing leaves 127.0.0.1: the proxy records the CONNECT target and refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn universe_domain_picks_the_relay() {
    type Case = (
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (&[], &[], "tunnel.cloudproxy.app:443"),
        (
            &["--universe-domain", "googleapis.com"],
            &[],
            "tunnel.cloudproxy.app:443",
        ),
        (
            &["--universe-domain", "cloud.example"],
            &[],
            "tunnel-cloudproxy.cloud.example:443",
        ),
        (
            &[],
            &[("CLOUDSDK_CORE_UNIVERSE_DOMAIN", "env.example")],
            "tunnel-cloudproxy.env.example:443",
        ),
    ];
    for (args, envs, want) in cases {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = format!("http://{}", listener.local_addr().expect("addr"));
        let connect_line = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
                use tokio::io::AsyncReadExt;
                if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            use tokio::io::AsyncWriteExt;
            let _ = stream.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
            String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        });
        let mut all_envs = envs.to_vec();
        let proxy_env: &'static str = Box::leak(proxy.into_boxed_str());
        all_envs.push(("HTTPS_PROXY", proxy_env));
        let run = tokio::task::spawn_blocking(move || {
            run_iap_ssh_env("", b"", args, &all_envs, Duration::from_secs(30))
        })
        .await
        .expect("runner");
        assert_failure(
            &format!("{args:?}"),
            &run,
            1,
            &["proxy", "refused", want],
            b"",
        );
        let line = connect_line.await.expect("proxy");
        assert_eq!(
            line,
            format!("CONNECT {want} HTTP/1.1"),
            "{args:?} {envs:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// What the user is told.
// ---------------------------------------------------------------------------------------------

/// A resume that takes over a second is announced on stderr, and so is its success; a quick
/// one stays silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_resume_is_announced_and_a_quick_one_is_not() {
    let resumed = || {
        script(vec![
            Message::Binary(Frame::ReconnectSuccessAck(0).to_bytes()),
            data(b"b"),
            close(4010, ""),
        ])
    };
    let lost = || Script {
        send: vec![sid(), data(b"a")],
        after: After::Drop,
    };
    // Down for 2.5 s after the loss.
    let (url, _) = sequence_relay(move |n, since| match n {
        0 => Step::Serve(lost()),
        _ if since < Duration::from_millis(2500) => Step::Refuse,
        _ => Step::Serve(resumed()),
    })
    .await;
    let run =
        tokio::task::spawn_blocking(move || run_iap_ssh(&url, b"", &[], Duration::from_secs(40)))
            .await
            .expect("runner");
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.stdout, b"ab");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stderr);
    assert!(
        lines[0].starts_with("iap-ssh: resuming the tunnel to vm-1 port 22 in proj/zone-a: the connection to the relay was lost ("),
        "{}",
        run.stderr
    );
    assert!(
        lines[1].starts_with("iap-ssh: resumed the tunnel to vm-1 port 22 in proj/zone-a after "),
        "{}",
        run.stderr
    );

    // Back at once: nothing to say.
    let (url, seen) = sequence_relay(move |n, _| match n {
        0 => Step::Serve(lost()),
        _ => Step::Serve(resumed()),
    })
    .await;
    let run =
        tokio::task::spawn_blocking(move || run_iap_ssh(&url, b"", &[], Duration::from_secs(40)))
            .await
            .expect("runner");
    assert_failure("quick resume", &run, 0, &[], b"ab");
    assert_eq!(seen.lock().unwrap().len(), 2);
}

/// `-v` gives one line when the tunnel opens and one when it ends; `-vv` (or `-v -v`) adds the
/// handshake steps with their timings. Never the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_lines() {
    let send = || vec![sid(), data(b"hi"), close(4010, "")];
    let v = case(script(send()), b"", &["-v"]).await;
    let vv = case(script(send()), b"", &["-vv"]).await;
    let v_v = case(script(send()), b"", &["-v", "-v"]).await;
    for run in [&v, &vv, &v_v] {
        assert_eq!(run.status, 0, "{}", run.stderr);
        assert_eq!(run.stdout, b"hi");
        assert!(
            !run.stderr.contains("hostile-relay-token"),
            "{}",
            run.stderr
        );
        for part in [
            "tunnel open: relay 127.0.0.1:",
            ", target vm-1 port 22 in proj/zone-a, credentials access token file ",
            ", session hostile-sid",
            "tunnel to vm-1 port 22 in proj/zone-a ended after ",
            "s: 0 bytes sent, 2 bytes received, 0 resumes",
        ] {
            assert!(run.stderr.contains(part), "{part:?} in {}", run.stderr);
        }
    }
    assert!(!v.stderr.contains("handshake:"), "{}", v.stderr);
    for run in [&vv, &v_v] {
        for step in [
            "handshake: DNS lookup of 127.0.0.1",
            "handshake: TCP connect to 127.0.0.1:",
            "handshake: WebSocket upgrade (/connect)",
            "handshake: first message from the relay",
        ] {
            assert!(run.stderr.contains(step), "{step:?} in {}", run.stderr);
        }
        assert!(run.stderr.contains(" ms="), "timings: {}", run.stderr);
    }
}

/// `-h` and `-V` work as they do in most programs.
#[test]
fn short_help_and_version() {
    for (flag, want) in [
        ("-h", "Positional Arguments:"),
        ("--help", "Positional Arguments:"),
        ("-V", concat!("iap-ssh ", env!("CARGO_PKG_VERSION"))),
        ("--version", concat!("iap-ssh ", env!("CARGO_PKG_VERSION"))),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = common::iap_ssh(dir.path())
            .arg(flag)
            .stdin(Stdio::null())
            .output()
            .expect("run iap-ssh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{flag}: {out:?}");
        assert!(stdout.contains(want), "{flag}: {stdout}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let out = common::iap_ssh(dir.path())
        .arg("--help")
        .output()
        .expect("run iap-ssh");
    let help = String::from_utf8_lossy(&out.stdout);
    for option in ["--request-reason", "--universe-domain", "-vv"] {
        assert!(help.contains(option), "{option} in {help}");
    }
}
