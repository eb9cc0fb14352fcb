//! Listener mode through the real binaries: `iap-ssh --listen` ↔ `iap-relay` (TLS, test CA)
//! ↔ an echo backend in this process. Many connections at once, IPv6, the readiness line, the
//! start-up check, a failing tunnel beside working ones, and SIGTERM with tunnels open.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const PRINCIPAL: &str = "user:lister@example.com";
const TOKEN: &str = "listen-test-token-0123456789";
/// Bound on any single wait in these tests.
const WAIT: Duration = Duration::from_secs(60);

/// A relay granting [`PRINCIPAL`] the test instance, whose nic0 is 127.0.0.1.
fn relay() -> Relay {
    spawn_relay(&RelaySpec::standard(PRINCIPAL, TOKEN))
}

/// A running `iap-ssh --listen`; killed on drop.
struct Listener {
    child: ChildGuard,
    port: u16,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

/// The command for `iap-ssh --listen ADDR <extra> HOST PORT` against `relay`.
fn listen_command(
    relay: &Relay,
    dir: &Path,
    addr: &str,
    extra: &[&str],
    (host, port): (&str, u16),
) -> Command {
    let token = write_token_file(dir, TOKEN);
    let mut cmd = iap_ssh(dir).relay(relay).token_file(&token).command();
    cmd.args(["--listen", addr])
        .args(extra)
        .arg(host)
        .arg(port.to_string());
    cmd
}

/// Starts the listener and waits for `Listening on port [N].`, returning N.
fn start_listener(relay: &Relay, addr: &str, extra: &[&str], backend_port: u16) -> Listener {
    let dir = tempfile::tempdir().expect("temp dir");
    let stderr = dir.path().join("iap-ssh.stderr");
    let host = format!("{INSTANCE}.{ZONE}.{PROJECT}");
    let mut cmd = listen_command(relay, dir.path(), addr, extra, (&host, backend_port));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"));
    let mut child = ChildGuard::new(cmd.spawn().expect("spawning iap-ssh --listen"));
    let stdout = child.child_mut().stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        for _ in lines {}
    });
    let line = match rx.recv_timeout(WAIT) {
        Ok(Some(Ok(line))) => line,
        other => panic!(
            "no readiness line ({other:?}), exit {:?}\n{}",
            child.try_wait(),
            read_log(&stderr)
        ),
    };
    let port = line
        .strip_prefix("Listening on port [")
        .and_then(|rest| rest.strip_suffix("]."))
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("unexpected readiness line {line:?}"));
    assert_ne!(port, 0);
    Listener {
        child,
        port,
        stderr,
        _dir: dir,
    }
}

/// A deterministic byte pattern for connection `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `data` on a fresh connection to `addr` and reads the same number of bytes back.
fn echo_through(addr: SocketAddr, data: Vec<u8>) -> Result<(TcpStream, Vec<u8>), String> {
    let mut conn = TcpStream::connect_timeout(&addr, WAIT).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    let mut writer = conn.try_clone().map_err(|e| e.to_string())?;
    let len = data.len();
    let sender = thread::spawn(move || writer.write_all(&data));
    let mut back = vec![0u8; len];
    conn.read_exact(&mut back)
        .map_err(|e| format!("reading the echo: {e}"))?;
    match sender.join() {
        Ok(Ok(())) => Ok((conn, back)),
        Ok(Err(e)) => Err(format!("writing: {e}")),
        Err(_) => Err("writer thread panicked".into()),
    }
}

#[test]
fn two_hundred_concurrent_connections_each_echo_one_mib() {
    let relay = relay();
    let backend = echo_backend_on("127.0.0.1:0");
    let listener = start_listener(&relay, "127.0.0.1:0", &[], backend.port());
    let addr = SocketAddr::from(([127, 0, 0, 1], listener.port));
    let started = Instant::now();
    let clients: Vec<_> = (0..200u64)
        .map(|i| {
            thread::spawn(move || {
                let data = pattern(i, 1 << 20);
                echo_through(addr, data.clone()).map(|(_, back)| back == data)
            })
        })
        .collect();
    let mut intact = 0;
    for (i, client) in clients.into_iter().enumerate() {
        match client.join().expect("client thread") {
            Ok(true) => intact += 1,
            Ok(false) => panic!("connection {i}: echoed bytes differ"),
            Err(e) => panic!("connection {i}: {e}\n{}", read_log(&listener.stderr)),
        }
    }
    assert_eq!(intact, 200);
    eprintln!("200 x 1 MiB echoed in {:?}", started.elapsed());
}

#[test]
fn ipv6_listener_serves_connections() {
    if TcpListener::bind("[::1]:0").is_err() {
        common::skip_or_fail("IPv6 loopback (::1) unavailable");
        return;
    }
    let relay = relay();
    let backend = echo_backend_on("127.0.0.1:0");
    let listener = start_listener(&relay, "[::1]:0", &[], backend.port());
    let addr: SocketAddr = format!("[::1]:{}", listener.port).parse().unwrap();
    let data = pattern(7, 100_000);
    let (_, back) = echo_through(addr, data.clone()).expect("echo over ::1");
    assert_eq!(back, data);
    // Bound to ::1 only: the IPv4 loopback has nothing on that port from us.
    let v4 = SocketAddr::from(([127, 0, 0, 1], listener.port));
    if let Ok(mut c) = TcpStream::connect_timeout(&v4, Duration::from_secs(2)) {
        // Something else may own that IPv4 port; it must not be our tunnel.
        let _ = c.set_read_timeout(Some(Duration::from_millis(300)));
        let _ = c.write_all(b"x");
        let mut buf = [0u8; 1];
        assert!(!matches!(c.read(&mut buf), Ok(1) if buf[0] == b'x'));
    }
}

#[test]
fn a_failing_tunnel_does_not_stop_the_listener() {
    let relay = relay();
    // Nothing listens on this port yet: the first tunnel fails with 4003. --no-check lets the
    // listener start anyway.
    let port = common::free_port();
    let listener = start_listener(&relay, "127.0.0.1:0", &["--no-check"], port);
    let addr = SocketAddr::from(([127, 0, 0, 1], listener.port));
    let mut first = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    first.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(first.read(&mut buf), Ok(0) | Err(_)));
    let deadline = Instant::now() + WAIT;
    while !read_log(&listener.stderr).contains("tunnel failed") {
        assert!(Instant::now() < deadline, "{}", read_log(&listener.stderr));
        thread::sleep(Duration::from_millis(20));
    }
    let log = read_log(&listener.stderr);
    assert!(log.contains("(4003)") || log.contains("4003"), "{log}");
    // Now the backend is up, and the same listener serves the next connection.
    echo_backend_on(&format!("127.0.0.1:{port}"));
    let data = pattern(3, 64 * 1024);
    let (_, back) = echo_through(addr, data.clone()).expect("second connection");
    assert_eq!(back, data);
}

#[test]
fn sigterm_with_live_tunnels_exits_promptly_and_delivers_what_was_acknowledged() {
    let relay = relay();
    let backend = echo_backend_on("127.0.0.1:0");
    let mut listener = start_listener(&relay, "127.0.0.1:0", &[], backend.port());
    let addr = SocketAddr::from(([127, 0, 0, 1], listener.port));
    // Five open tunnels, each having carried 256 KiB both ways (so every byte was acknowledged
    // and delivered), then left open.
    let conns: Vec<TcpStream> = (0..5u64)
        .map(|i| {
            let data = pattern(100 + i, 256 * 1024);
            let (conn, back) = echo_through(addr, data.clone()).expect("echo before SIGTERM");
            assert_eq!(back, data);
            conn
        })
        .collect();
    let pid = listener.child.id().to_string();
    let signalled = Instant::now();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let exit = loop {
        if let Some(exit) = listener.child.try_wait() {
            break exit;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(15),
            "still running 15 s after SIGTERM\n{}",
            read_log(&listener.stderr)
        );
        thread::sleep(Duration::from_millis(20));
    };
    let took = signalled.elapsed();
    let log = read_log(&listener.stderr);
    assert!(exit.success(), "{exit}\n{log}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    assert!(
        log.contains("stopped listening")
            && log.contains("5 connections: 0 finished, 0 failed, 5 closed at shutdown"),
        "{log}"
    );
    // Each local connection ends in order (EOF), with no stray bytes after the echo.
    for mut conn in conns {
        let mut rest = Vec::new();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        conn.read_to_end(&mut rest).expect("EOF after shutdown");
        assert!(rest.is_empty());
    }
    // The port is closed.
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
}

/// Runs `iap-ssh --listen` (start-up check on) to the end: (status, stdout, stderr).
fn listen_expecting_exit(relay: &Relay, host: &str, port: u16) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = listen_command(relay, dir.path(), "127.0.0.1:0", &[], (host, port));
    let out = common::run_with_timeout(&mut cmd, WAIT);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn startup_check_failures_exit_with_the_close_code_status() {
    let backend = echo_backend_on("127.0.0.1:0");
    let mut spec = RelaySpec::standard(PRINCIPAL, TOKEN);
    // vm-2 is granted but not in the inventory: 4047.
    spec.bindings
        .push(Binding::new(&[PRINCIPAL], "projects/other-proj"));
    let relay = spawn_relay(&spec);
    let closed = common::free_port();
    let cases = [
        // (host, port, exit status, parts of the message)
        (
            format!("{INSTANCE}.{ZONE}.denied-proj"),
            backend.port(),
            4,
            vec!["not authorized", "4033", "roles/iap.tunnelResourceAccessor"],
        ),
        (
            format!("vm-2.{ZONE}.other-proj"),
            backend.port(),
            5,
            vec!["4047"],
        ),
        (
            format!("{INSTANCE}.{ZONE}.{PROJECT}"),
            closed,
            6,
            vec!["4003"],
        ),
    ];
    for (host, port, code, parts) in cases {
        let (status, stdout, stderr) = listen_expecting_exit(&relay, &host, port);
        assert_eq!(status, code, "{host}:{port}\n{stderr}");
        assert!(
            stdout.is_empty(),
            "no readiness line on failure: {stdout:?}"
        );
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("iap-ssh: "), "{stderr}");
        for part in parts {
            assert!(last.contains(part), "{part:?} missing in {last:?}");
        }
    }
}

#[test]
fn listen_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--listen", "nowhere", "vm.z.p", "22"],
            "is not an address",
        ),
        (
            &["--listen", "127.0.0.1:0", "--check", "vm.z.p", "22"],
            "separate modes",
        ),
        (
            &["--no-check", "vm.z.p", "22"],
            "--no-check goes with --listen",
        ),
        (
            &[
                "--listen",
                "192.0.2.1:1",
                "--no-check",
                "--access-token-file",
                "/dev/null",
                "vm.z.p",
                "22",
            ],
            "listening on 192.0.2.1:1",
        ),
    ];
    for (args, want) in cases {
        let out = run_with_timeout(iap_ssh(dir.path()).args(args), WAIT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}\n{stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}
