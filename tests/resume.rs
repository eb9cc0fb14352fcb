//! Sessions survive the network: a fault-injecting proxy between `iap-ssh` and `iap-relay`
//! resets, half-closes and black-holes connections mid-transfer, the relay forces
//! re-authentication with 4004, and another principal tries to take a live session. Every
//! transfer must come out byte-identical.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;
mod fault;
mod stream;

use std::io::Read;
use std::net::{Shutdown, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use fault::{FaultProxy, Mode};
use stream::{Pattern, expected_hash, hex};

const PRINCIPAL: &str = "user:alice@example.com";
const TOKEN: &str = "resume-test-token-0123456789";
const DEADLINE: Duration = Duration::from_secs(300);

struct Rig {
    relay: Relay,
    proxy: FaultProxy,
    token_file: PathBuf,
    _dir: tempfile::TempDir,
}

fn rig(spec: RelaySpec) -> Rig {
    let relay = spawn_relay(&spec);
    let proxy = FaultProxy::start(relay.addr);
    let dir = tempfile::tempdir().unwrap();
    let token_file = write_token_file(dir.path(), TOKEN);
    Rig {
        relay,
        proxy,
        token_file,
        _dir: dir,
    }
}

/// iap-ssh through the fault proxy to the test instance's `port`, with `-v`.
fn tunnel_command(rig: &Rig, port: u16) -> Command {
    let mut cmd = iap_ssh(rig._dir.path())
        .endpoint(&format!("wss://{}", rig.proxy.addr))
        .ca_file(rig.relay.ca_pem())
        .token_file(&rig.token_file)
        .command();
    cmd.args(["-v", &dotted_host(), &port.to_string()]);
    cmd
}

/// Writes pattern bytes, counting progress in `progress`; `pace` slows the writer down.
fn write_counted(
    w: &mut impl std::io::Write,
    len: u64,
    seed: u64,
    progress: &AtomicU64,
    pace: Option<Duration>,
) -> std::io::Result<()> {
    let mut pattern = Pattern(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        w.write_all(&buf[..n])?;
        progress.fetch_add(n as u64, Ordering::SeqCst);
        left -= n as u64;
        if let Some(p) = pace {
            thread::sleep(p);
        }
    }
    Ok(())
}

/// Reads to the end, counting progress, returning (bytes, SHA-256).
fn read_counted(r: &mut impl Read, progress: &AtomicU64) -> (u64, String) {
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return (total, hex(hash.finish().as_ref())),
            Ok(n) => {
                hash.update(&buf[..n]);
                total += n as u64;
                progress.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    }
}

/// Resets every proxied connection each time `progress` crosses one of `count` evenly spread
/// points (jittered), while `running`. Returns how many resets hit a live connection.
fn chaos(
    proxy: &FaultProxy,
    progress: &AtomicU64,
    len: u64,
    count: u32,
    done: &mpsc::Receiver<()>,
) -> u32 {
    let mut hits = 0;
    let mut seed = Pattern(0x5eed);
    for i in 0..count {
        let mut r = [0u8; 8];
        seed.fill(&mut r);
        let jitter = u64::from_le_bytes(r) % (len / u64::from(count + 1) / 2);
        let point = len / u64::from(count + 1) * u64::from(i + 1) + jitter;
        loop {
            if done.try_recv().is_ok() {
                return hits;
            }
            if progress.load(Ordering::SeqCst) >= point {
                break;
            }
            thread::sleep(Duration::from_millis(2));
        }
        if proxy.reset_all() > 0 {
            hits += 1;
        }
    }
    hits
}

/// A backend that sends `len` pattern bytes (seed `seed`, paced by `pace`) to its one client
/// and half-closes. Returns its port and its thread.
fn source_backend(len: u64, seed: u64, pace: Option<Duration>) -> (u16, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let thread = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        write_counted(&mut s, len, seed, &AtomicU64::new(0), pace).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
    });
    (port, thread)
}

/// iap-ssh downloading from `port`: stdin held open for the whole session (as ssh keeps it),
/// stdout hashed while `progress` counts the bytes.
struct Download {
    child: std::process::Child,
    err: thread::JoinHandle<String>,
    reader: thread::JoinHandle<(u64, String)>,
    _stdin: Option<std::process::ChildStdin>,
}

fn start_download(rig: &Rig, port: u16, progress: Arc<AtomicU64>) -> Download {
    let mut child = tunnel_command(rig, port)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = stderr_of(&mut child);
    let _stdin = child.stdin.take();
    let mut stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || read_counted(&mut stdout, &progress));
    Download {
        child,
        err,
        reader,
        _stdin,
    }
}

impl Download {
    /// Waits for iap-ssh; returns (exit status, stderr, (bytes, SHA-256) of stdout).
    fn finish(mut self) -> (std::process::ExitStatus, String, (u64, String)) {
        let status = wait_child(&mut self.child);
        (
            status,
            self.err.join().unwrap(),
            self.reader.join().unwrap(),
        )
    }
}

/// Prints the client's resume latencies (its `tunnel resumed … after_ms=N` lines, -v).
fn report_resume_latency(what: &str, stderr: &str) {
    let mut ms: Vec<u64> = stderr
        .lines()
        .filter(|l| l.contains("tunnel resumed"))
        .filter_map(|l| {
            l.split("after_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    ms.sort_unstable();
    assert!(!ms.is_empty(), "no resume was logged:\n{stderr}");
    eprintln!(
        "{what}: {} resumes, latency min {} ms, median {} ms, max {} ms",
        ms.len(),
        ms[0],
        ms[ms.len() / 2],
        ms[ms.len() - 1]
    );
}

fn wait_child(child: &mut std::process::Child) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("iap-ssh did not finish within {DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut std::process::Child) -> thread::JoinHandle<String> {
    let mut err = child.stderr.take().unwrap();
    thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    })
}

#[test]
fn upload_256_mib_survives_10_resets() {
    let len: u64 = 256 << 20;
    let rig = rig(RelaySpec::standard(PRINCIPAL, TOKEN));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    let backend = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        read_counted(&mut s, &r)
    });
    let mut child = tunnel_command(&rig, port)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = stderr_of(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    let writer = thread::spawn(move || {
        let _ = write_counted(&mut stdin, len, 21, &AtomicU64::new(0), None);
    });
    let (done_tx, done_rx) = mpsc::channel();
    let hits = thread::scope(|s| {
        let (proxy, received) = (&rig.proxy, &received);
        let c = s.spawn(move || chaos(proxy, received, len, 10, &done_rx));
        let status = wait_child(&mut child);
        let _ = done_tx.send(());
        let hits = c.join().unwrap();
        let stderr = err.join().unwrap();
        assert!(
            status.success(),
            "exit {status:?}: {stderr}\nrelay:\n{}",
            rig.relay.log()
        );
        report_resume_latency("upload", &stderr);
        hits
    });
    writer.join().unwrap();
    let (n, hash) = backend.join().unwrap();
    assert_eq!(hits, 10, "every reset hit a live connection");
    assert_eq!((n, hash), (len, expected_hash(len, 21)));
    assert!(rig.proxy.accepted.load(Ordering::SeqCst) >= 11);
    assert!(
        rig.relay.log().matches(" reconnect ").count() >= 10,
        "{}",
        rig.relay.log()
    );
}

#[test]
fn download_256_mib_survives_10_resets() {
    let len: u64 = 256 << 20;
    let rig = rig(RelaySpec::standard(PRINCIPAL, TOKEN));
    let (port, backend) = source_backend(len, 33, None);
    let got = Arc::new(AtomicU64::new(0));
    let download = start_download(&rig, port, got.clone());
    let (done_tx, done_rx) = mpsc::channel();
    let (hits, (status, stderr, received)) = thread::scope(|s| {
        let (proxy, got) = (&rig.proxy, &got);
        let c = s.spawn(move || chaos(proxy, got, len, 10, &done_rx));
        let finished = download.finish();
        let _ = done_tx.send(());
        (c.join().unwrap(), finished)
    });
    assert!(
        status.success(),
        "exit {status:?}: {stderr}\nrelay:\n{}",
        rig.relay.log()
    );
    report_resume_latency("download", &stderr);
    backend.join().unwrap();
    assert_eq!(received, (len, expected_hash(len, 33)));
    assert_eq!(hits, 10, "every reset hit a live connection");
}

/// A black hole (packets vanish, no error) is detected by the client's keepalive and the
/// session resumes on a fresh connection; a half-close is treated as a loss too.
#[test]
fn black_hole_and_half_close_are_survived() {
    let rig = rig(RelaySpec::standard(PRINCIPAL, TOKEN));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Echo backend.
    thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = s;
        let _ = std::io::copy(&mut r, &mut w);
    });
    let mut child = tunnel_command(&rig, port)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = stderr_of(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut line = |text: &str| {
        use std::io::Write;
        stdin.write_all(text.as_bytes()).unwrap();
        let mut got = vec![0u8; text.len()];
        stdout.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), text);
    };
    line("before\n");
    assert_eq!(
        rig.proxy.set_all(Mode::BlackHole),
        1,
        "accepted {}, relay log:\n{}",
        rig.proxy.accepted.load(Ordering::SeqCst),
        rig.relay.log()
    );
    let started = Instant::now();
    line("typed into a black hole\n");
    let recovered = started.elapsed();
    // The black-holed connection is still open (its packets just vanish), so two are reached.
    assert!(rig.proxy.set_all(Mode::HalfClose) >= 1);
    line("after a half-close\n");
    drop(stdin);
    let status = wait_child(&mut child);
    let stderr = err.join().unwrap();
    assert!(status.success(), "{stderr}");
    assert!(
        recovered < Duration::from_secs(30),
        "black hole took {recovered:?}"
    );
    assert!(stderr.contains("tunnel resumed"), "{stderr}");
    eprintln!("black hole detected and resumed after {recovered:?}");
}

/// The relay asks for re-authentication every second (4004); the client resumes with a fresh
/// token each time and a paced download completes intact.
#[test]
fn forced_reauthentication_mid_transfer() {
    let spec =
        RelaySpec::standard(PRINCIPAL, TOKEN).limits(|l| l.reauthenticate_after_secs = Some(1));
    let rig = rig(spec);
    let len: u64 = 24 << 20;
    // 64 KiB every 10 ms: about 4 s, so several re-authentications fall inside.
    let (port, backend) = source_backend(len, 5, Some(Duration::from_millis(10)));
    let (status, stderr, received) = start_download(&rig, port, Arc::default()).finish();
    assert!(status.success(), "{stderr}");
    backend.join().unwrap();
    assert_eq!(received, (len, expected_hash(len, 5)));
    let log = rig.relay.log();
    let reauths = log.matches("code: 4004").count();
    assert!(reauths >= 2, "expected several 4004 closes:\n{log}");
    assert!(log.matches(" reconnect ").count() >= reauths, "{log}");
}

/// Another principal presenting a live session id is refused with 4033 and the owner's
/// transfer is unaffected; an unknown id gets 4001.
#[test]
fn hijack_attempt_is_refused_and_owner_unaffected() {
    let spec = RelaySpec::standard(PRINCIPAL, TOKEN)
        .with_token("user:mallory@example.com", "mallory-token");
    let rig = rig(spec);
    let len: u64 = 8 << 20;
    let (port, backend) = source_backend(len, 9, Some(Duration::from_millis(10)));
    let download = start_download(&rig, port, Arc::default());

    // The session id, from the relay's connect line.
    let started = Instant::now();
    let sid = loop {
        let log = rig.relay.log();
        if let Some(sid) = log
            .lines()
            .find(|l| l.contains(" connect "))
            .and_then(|l| l.split("sid=").nth(1))
            .map(|s| s.split_whitespace().next().unwrap_or("").to_owned())
        {
            break sid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no connect line:\n{log}"
        );
        thread::sleep(Duration::from_millis(20));
    };
    let refused = |token: &str, sid: &str| -> u16 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use futures_util::StreamExt;
            use iap_ssh::client::auth::Token;
            use iap_ssh::client::dial::{Dialer, Endpoint};
            use iap_ssh::wire::tls_config;
            let dialer = Dialer {
                endpoint: Endpoint::parse(&rig.relay.url).unwrap(),
                tls: tls_config(Some(rig.relay.ca_pem())).unwrap(),
                user_agent: "hijacker".into(),
            };
            let query = format!("sid={sid}&ack=0&zone={}", common::ZONE);
            let mut ws = dialer
                .open("reconnect", &query, &Token::new(token).unwrap())
                .await
                .unwrap();
            match ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
                    u16::from(f.code)
                }
                other => panic!("expected a close, got {other:?}"),
            }
        })
    };
    assert_eq!(refused("mallory-token", &sid), 4033);
    assert_eq!(refused("mallory-token", "no-such-session"), 4001);

    let (status, stderr, received) = download.finish();
    assert!(status.success(), "{stderr}");
    backend.join().unwrap();
    assert_eq!(received, (len, expected_hash(len, 9)));
    let log = rig.relay.log();
    assert!(log.contains("reconnect refused"), "{log}");
    assert!(
        !log.contains("mallory-token") && !log.contains(TOKEN),
        "a token reached the log"
    );
}

/// The relay dies and its address answers HTTP 503 (a load balancer with no node for the
/// session): the client gives up in bounded time with a one-line message, not after the whole
/// resume budget. With nothing listening at all, `--resume-timeout` bounds the wait.
#[test]
fn a_dead_relay_ends_the_tunnel_in_bounded_time() {
    for answer_503 in [false, true] {
        // Plain ws:// on loopback, so a plain HTTP server can stand in for a load balancer.
        let mut spec = RelaySpec::standard(PRINCIPAL, TOKEN);
        spec.tls = false;
        let rig = rig(spec);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            if let Ok((s, _)) = listener.accept() {
                let mut w = s.try_clone().unwrap();
                let mut r = s;
                let _ = std::io::copy(&mut r, &mut w);
            }
        });
        let mut cmd = iap_ssh(rig._dir.path())
            .endpoint(&format!("ws://{}", rig.proxy.addr))
            .token_file(&rig.token_file)
            .command();
        cmd
            // With a 503 the budget is generous: the refusal itself must end the wait.
            .args([
                "--resume-timeout",
                if answer_503 { "120" } else { "3" },
                &dotted_host(),
                &port.to_string(),
            ]);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = stderr_of(&mut child);
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        {
            use std::io::Write;
            stdin.write_all(b"ping\n").unwrap();
            let mut got = [0u8; 5];
            stdout.read_exact(&mut got).unwrap();
        }
        let relay_addr = rig.relay.addr;
        let Rig { relay, proxy, .. } = rig;
        drop(relay); // killed
        let _refuser = answer_503.then(|| {
            let l = TcpListener::bind(relay_addr).expect("rebinding the relay's port");
            thread::spawn(move || {
                for s in l.incoming().flatten() {
                    let mut s = s;
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                    use std::io::Write;
                    let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                }
            })
        });
        let started = Instant::now();
        proxy.reset_all();
        let status = wait_child(&mut child);
        let took = started.elapsed();
        let stderr = err.join().unwrap();
        let last = stderr.lines().last().unwrap_or_default().to_owned();
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            last.starts_with("iap-ssh: lost the connection to the relay"),
            "{last}"
        );
        if answer_503 {
            assert!(
                last.contains("HTTP 503") && last.contains("refused to resume"),
                "{last}"
            );
            assert!(took < Duration::from_secs(45), "took {took:?}");
        } else {
            assert!(last.contains("could not resume within 3s"), "{last}");
            assert!(took < Duration::from_secs(15), "took {took:?}");
        }
        eprintln!("dead relay (503: {answer_503}) reported after {took:?}: {last}");
        drop(stdin);
    }
}
