//! Loopback tunnels through the real binaries: `iap-ssh` (stdio mode) ↔ `iap-relay` (TLS with
//! a test CA) ↔ a TCP backend in this process. Data is compared by SHA-256; every refusal is
//! checked for its exit status and its message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;
mod stream;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use ring::digest::{Context, SHA256};
use stream::{expected_hash, hash_all, hex, send_pattern};

const PRINCIPAL: &str = "user:alice@example.com";
const TOKEN: &str = "tunnel-test-token-0123456789";
const DEADLINE: Duration = Duration::from_secs(240);

struct Setup {
    relay: Relay,
    token_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let relay = spawn_relay(&RelaySpec::standard(PRINCIPAL, TOKEN));
    let dir = tempfile::tempdir().unwrap();
    let token_file = write_token_file(dir.path(), TOKEN);
    Setup {
        relay,
        token_file,
        _dir: dir,
    }
}

/// iap-ssh to `host` `port` through the setup's relay with its token.
fn tunnel_command(setup: &Setup, host: &str, port: u16) -> Command {
    let mut cmd = iap_ssh(setup._dir.path())
        .relay(&setup.relay)
        .token_file(&setup.token_file)
        .command();
    cmd.arg(host).arg(port.to_string());
    cmd
}

/// A backend that takes one connection and runs `serve` on it in a thread.
fn backend<T: Send + 'static>(
    serve: impl FnOnce(std::net::TcpStream) -> T + Send + 'static,
) -> (u16, mpsc::Receiver<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            let _ = tx.send(serve(stream));
        }
    });
    (port, rx)
}

struct Run {
    status: std::process::ExitStatus,
    stdout: (u64, String),
    stderr: String,
}

/// When the test closes iap-ssh's stdin.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stdin {
    /// As soon as the upload is written.
    AfterWrite,
    /// Only when iap-ssh has exited (ssh keeps a ProxyCommand's stdin open all session).
    AtExit,
    /// Once the whole upload has come back on stdout (an echo), as ssh would.
    WhenEchoed,
}

/// Runs iap-ssh feeding `upload` pattern bytes (seed `seed`) to stdin and hashing stdout.
fn run_client(mut cmd: Command, upload: u64, seed: u64, close: Stdin) -> Run {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // The writer waits on this channel: the reader signals a complete echo, and dropping
    // every sender (the reader done, iap-ssh exited) releases it too.
    let (release, wait_release) = mpsc::channel::<()>();
    let echoed = release.clone();
    let writer = thread::spawn(move || {
        let _ = send_pattern(&mut stdin, upload, seed);
        if close != Stdin::AfterWrite {
            let _ = wait_release.recv_timeout(DEADLINE);
        }
        drop(stdin);
    });
    let reader = thread::spawn(move || {
        let mut hash = Context::new(&SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = stdout.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            total += n as u64;
            if close == Stdin::WhenEchoed && total == upload {
                let _ = echoed.send(());
            }
        }
        (total, hex(hash.finish().as_ref()))
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("iap-ssh did not finish within {DEADLINE:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    drop(release);
    let stdout = reader.join().unwrap();
    writer.join().unwrap();
    Run {
        status,
        stdout,
        stderr: err_reader.join().unwrap(),
    }
}

/// Upload `len` bytes: the backend must receive exactly them, and iap-ssh exits 0 after EOF.
fn upload(len: u64) {
    let s = setup();
    let (port, got) = backend(|mut stream| hash_all(&mut stream).unwrap());
    let run = run_client(
        tunnel_command(&s, &dotted_host(), port),
        len,
        7,
        Stdin::AfterWrite,
    );
    assert!(
        run.status.success(),
        "exit {:?}: {}",
        run.status,
        run.stderr
    );
    assert_eq!(run.stdout.0, 0, "nothing comes back from a sink");
    let (n, hash) = got.recv_timeout(DEADLINE).expect("backend finished");
    assert_eq!(
        (n, hash),
        (len, expected_hash(len, 7)),
        "relay log:\n{}",
        s.relay.log()
    );
}

/// Download `len` bytes: the backend sends them and closes; iap-ssh writes exactly them to
/// stdout and exits 0 while its stdin is still open.
fn download(len: u64) {
    let s = setup();
    let (port, sent) = backend(move |mut stream| {
        let hash = send_pattern(&mut stream, len, 11).unwrap();
        let _ = stream.shutdown(Shutdown::Write);
        hash
    });
    let run = run_client(
        tunnel_command(&s, &dotted_host(), port),
        0,
        0,
        Stdin::AtExit,
    );
    assert!(
        run.status.success(),
        "exit {:?}: {}",
        run.status,
        run.stderr
    );
    let sent = sent.recv_timeout(DEADLINE).unwrap();
    assert_eq!(run.stdout, (len, sent), "relay log:\n{}", s.relay.log());
    assert!(
        run.stderr.is_empty(),
        "quiet by default, got: {}",
        run.stderr
    );
}

#[test]
fn one_byte_each_way() {
    upload(1);
    download(1);
}

#[test]
fn one_mib_each_way() {
    upload(1 << 20);
    download(1 << 20);
}

#[test]
fn two_hundred_fifty_six_mib_upload() {
    let started = Instant::now();
    upload(256 << 20);
    eprintln!(
        "256 MiB upload through iap-ssh and iap-relay: {:?}",
        started.elapsed()
    );
}

#[test]
fn two_hundred_fifty_six_mib_download() {
    let started = Instant::now();
    download(256 << 20);
    eprintln!(
        "256 MiB download through iap-relay and iap-ssh: {:?}",
        started.elapsed()
    );
}

/// Both directions at once through an echo backend: nothing may deadlock when both peers send
/// faster than the other reads.
#[test]
fn echo_both_directions_at_once() {
    let s = setup();
    let len: u64 = 32 << 20;
    let (port, _done) = backend(|mut stream| {
        let mut copy = stream.try_clone().unwrap();
        std::io::copy(&mut stream, &mut copy)
    });
    let run = run_client(
        tunnel_command(&s, &dotted_host(), port),
        len,
        3,
        Stdin::WhenEchoed,
    );
    assert!(
        run.status.success(),
        "exit {:?}: {}",
        run.status,
        run.stderr
    );
    assert_eq!(run.stdout, (len, expected_hash(len, 3)));
}

/// stdin EOF right away: the bytes already sent still reach the backend, and iap-ssh exits 0
/// promptly instead of waiting for the backend.
#[test]
fn stdin_eof_flushes_and_exits() {
    let s = setup();
    let (port, got) = backend(|mut stream| {
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf);
        buf
    });
    let mut child = tunnel_command(&s, &dotted_host(), port)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"last words\n")
        .unwrap();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        got.recv_timeout(Duration::from_secs(10)).unwrap(),
        b"last words\n"
    );
}

/// Runs iap-ssh with stdin at EOF and returns (exit code, stderr, stdout).
fn refused(cmd: &mut Command) -> (i32, String, Vec<u8>) {
    let out = common::run_with_timeout(cmd, Duration::from_secs(60));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.stdout,
    )
}

fn assert_refusal(result: (i32, String, Vec<u8>), code: i32, words: &[&str]) {
    let (status, stderr, stdout) = result;
    assert_eq!(status, code, "stderr: {stderr}");
    assert!(stdout.is_empty(), "stdout must carry tunnel bytes only");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("iap-ssh: "), "{stderr}");
    for w in words {
        assert!(stderr.contains(w), "expected {w:?} in: {stderr}");
    }
}

#[test]
fn relay_refusals_reach_the_user_with_exit_codes() {
    let spec = RelaySpec::standard(PRINCIPAL, TOKEN)
        .with_token("user:mallory@example.com", "mallory-token");
    let relay = spawn_relay(&spec);
    let dir = tempfile::tempdir().unwrap();
    let s = Setup {
        relay,
        token_file: write_token_file(dir.path(), TOKEN),
        _dir: tempfile::tempdir().unwrap(),
    };
    let closed_port = common::free_port();

    // 4033: a principal with no binding.
    let mut cmd = retarget_token(
        tunnel_command(&s, &dotted_host(), 22),
        dir.path(),
        "mallory-token",
    );
    assert_refusal(
        refused(&mut cmd),
        4,
        &["not authorized", "4033", "roles/iap.tunnelResourceAccessor"],
    );

    // 4047: an instance the inventory does not name.
    assert_refusal(
        refused(&mut tunnel_command(&s, "vm-404.test-zone-a.test-proj", 22)),
        5,
        &["not found", "4047", "name, zone and project"],
    );

    // 4003: nothing listens on the port.
    assert_refusal(
        refused(&mut tunnel_command(&s, &dotted_host(), closed_port)),
        6,
        &["4003", "35.235.240.0/20", &closed_port.to_string()],
    );

    // HTTP 401: a token the relay does not know.
    let cmd = tunnel_command(&s, &dotted_host(), 22);
    let mut cmd = retarget_token(cmd, dir.path(), "unknown-token");
    let result = refused(&mut cmd);
    assert!(
        !result.1.contains("unknown-token"),
        "token leaked: {}",
        result.1
    );
    assert_refusal(result, 3, &["HTTP 401", "credentials"]);

    // Untrusted relay certificate: no --ca-file.
    let mut cmd = iap_ssh(s._dir.path())
        .endpoint(&s.relay.url)
        .token_file(&s.token_file)
        .command();
    cmd.args([&dotted_host(), "22"])
        .env("SSL_CERT_FILE", "/dev/null")
        .env_remove("SSL_CERT_DIR");
    let (status, stderr, _) = refused(&mut cmd);
    assert_ne!(status, 0);
    assert!(stderr.contains("--ca-file"), "{stderr}");

    // Tokens never appear in the relay's log.
    let log = s.relay.log();
    for secret in [TOKEN, "mallory-token", "unknown-token"] {
        assert!(!log.contains(secret), "relay logged a token");
    }
}

/// A copy of `cmd` whose token file holds `token`.
fn retarget_token(cmd: Command, dir: &Path, token: &str) -> Command {
    let file = write_token_file(dir, token);
    let mut args: Vec<std::ffi::OsString> = cmd.get_args().map(|a| a.to_owned()).collect();
    if let Some(i) = args.iter().position(|a| a == "--access-token-file") {
        args[i + 1] = file.into_os_string();
    }
    let mut out = Command::new(cmd.get_program());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => out.env(key, value),
            None => out.env_remove(key),
        };
    }
    out.args(args).env_remove("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE");
    out
}

#[test]
fn usage_errors_are_one_line_and_exit_2() {
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &["HOST PORT"]),
        (&["vm-1"], &["HOST PORT"]),
        (&["vm-1.z.p", "http"], &["PORT", "65535"]),
        (&["vm-1.z.p", "0"], &["PORT"]),
        (&["vm-1", "22"], &["zone", "CLOUDSDK_COMPUTE_ZONE"]),
        (
            &["--endpoint", "ws://relay.example", "vm-1.z.p", "22"],
            &["wss://"],
        ),
        (
            &["--region", "r", "10.0.0.5", "22", "--project", "p"],
            &["--network"],
        ),
        (&["--bogus", "vm-1.z.p", "22"], &["--bogus"]),
    ];
    for (args, words) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = iap_ssh(dir.path()).command();
        cmd.args(*args)
            .env("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", "/nonexistent");
        let (status, stderr, stdout) = refused(&mut cmd);
        assert_eq!(status, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty());
        for w in *words {
            assert!(stderr.contains(w), "{args:?}: expected {w:?} in {stderr}");
        }
    }
}

#[test]
fn missing_token_file_is_an_authentication_error() {
    let s = setup();
    let mut cmd = iap_ssh(s._dir.path())
        .relay(&s.relay)
        .token_file(Path::new("/nonexistent/token"))
        .command();
    cmd.args([&dotted_host(), "22"]);
    assert_refusal(
        refused(&mut cmd),
        3,
        &["reading access token file /nonexistent/token"],
    );
}
