//! A relay fleet behind HAProxy: three `iap-relay` nodes in plain `ws://` mode on loopback,
//! HAProxy (Debian's package, run as a subprocess) terminating TLS with the configuration that
//! ships in `deploy/haproxy/haproxy.cfg`, and real `iap-ssh` and gcloud clients.
//!
//! New tunnels must spread over the nodes, every resume must reach the node that holds the
//! session (checked in the nodes' audit logs), a killed node's clients must end with a clear
//! error in bounded time while the others carry on, and a draining node must take no new
//! sessions, keep serving its live ones (resumes included) and exit when they are done.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;
mod fault;
mod stream;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use fault::FaultProxy;
use stream::{Pattern, expected_hash, hex};

const PRINCIPAL: &str = "user:alice@example.com";
/// HAProxy's configuration, as shipped.
const HAPROXY_CFG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy/haproxy.cfg");
/// Bound on every tunnel of a test.
const DEADLINE: Duration = Duration::from_secs(240);
/// Step between progress and state polls.
const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------------------
// The fleet
// ---------------------------------------------------------------------------------------------

/// One relay node: its process, admin address and audit log.
struct Node {
    id: String,
    relay: Relay,
    admin: SocketAddr,
    audit: PathBuf,
}

impl Node {
    /// The node's audit events so far.
    fn events(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `(sid, port)` of every session this node opened.
    fn connects(&self) -> Vec<(String, u64)> {
        self.events()
            .iter()
            .filter(|e| e["event"] == "connect")
            .map(|e| {
                (
                    e["sid"].as_str().unwrap_or("").to_owned(),
                    e["port"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// The session id of every resume this node served.
    fn reconnects(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["event"] == "reconnect")
            .map(|e| e["sid"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    fn signal(&self, signal: rustix::process::Signal) {
        self.relay.signal(signal);
    }
}

/// HAProxy and three relays; every process is killed (by pid) when this is dropped.
struct Fleet {
    nodes: Vec<Node>,
    /// HAProxy's TLS frontend.
    addr: SocketAddr,
    pki: TestPki,
    token_file: PathBuf,
    haproxy_log: PathBuf,
    _haproxy: ChildGuard,
    dir: tempfile::TempDir,
}

impl Fleet {
    /// The `wss://` URL clients use.
    fn url(&self) -> String {
        format!("wss://{}", self.addr)
    }

    fn haproxy_log(&self) -> String {
        read_log(&self.haproxy_log)
    }

    /// Everything that helps explain a failure.
    fn logs(&self) -> String {
        let mut s = format!("--- haproxy ---\n{}", self.haproxy_log());
        for n in &self.nodes {
            s.push_str(&format!(
                "\n--- {} stderr ---\n{}\n--- {} audit ---\n{}",
                n.id,
                n.relay.log(),
                n.id,
                read_log(&n.audit)
            ));
        }
        s
    }

    fn node(&self, id: &str) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("node id")
    }

    /// Which node holds the session to `port` (each tunnel has its own backend port).
    fn owner_of_port(&self, port: u16) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.connects().iter().any(|(_, p)| *p == u64::from(port)))
            .map(|n| n.id.as_str())
    }

    /// Checks that every session id names the node that opened it and that every resume was
    /// served by that node. Returns resumes per session id.
    fn check_resumes_on_owner(&self) -> BTreeMap<String, usize> {
        let mut resumes = BTreeMap::new();
        for n in &self.nodes {
            let opened: BTreeSet<String> = n.connects().into_iter().map(|(s, _)| s).collect();
            for sid in &opened {
                assert!(
                    sid.starts_with(&format!("{}.", n.id)),
                    "{} opened session {sid}, which does not carry its node id",
                    n.id
                );
                resumes.entry(sid.clone()).or_insert(0);
            }
            for sid in n.reconnects() {
                assert!(
                    opened.contains(&sid),
                    "{} resumed {sid}, which it never opened: a resume reached the wrong node\n{}",
                    n.id,
                    self.logs()
                );
                *resumes.entry(sid).or_insert(0) += 1;
            }
        }
        resumes
    }

    /// New sessions per node.
    fn spread(&self) -> BTreeMap<String, usize> {
        self.nodes
            .iter()
            .map(|n| (n.id.clone(), n.connects().len()))
            .collect()
    }
}

/// Starts three relays (`relay-1` … `relay-3`, plain ws://, admin port, audit log, HAProxy's
/// address trusted for X-Forwarded-For) with `reauthenticate_after_secs` in their `[limits]`,
/// and HAProxy in front of them. None (after printing why) when haproxy is missing outside CI.
fn fleet(reauthenticate_after_secs: Option<u64>) -> Option<Fleet> {
    if !require_tool("haproxy") {
        return None;
    }
    let dir = tempfile::tempdir().expect("fleet temp dir");
    let token = random_hex(24);
    let token_file = write_token_file(dir.path(), &token);
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let id = format!("relay-{i}");
        let admin_port = free_port();
        let audit = dir.path().join(format!("{id}.audit.jsonl"));
        let spec = RelaySpec {
            node_id: Some(id.clone()),
            admin_listen: Some(([127, 0, 0, 1], admin_port).into()),
            trusted_proxies: vec!["127.0.0.1".into()],
            audit_log: Some(audit.clone()),
            limits: Limits {
                drain_secs: Some(60),
                resume_window_secs: Some(60),
                reauthenticate_after_secs,
                ..Limits::default()
            },
            ..RelaySpec::standard(PRINCIPAL, &token).plaintext()
        };
        let relay = spawn_relay(&spec);
        nodes.push(Node {
            id,
            relay,
            admin: ([127, 0, 0, 1], admin_port).into(),
            audit,
        });
    }

    // HAProxy wants the certificate chain and the key in one file.
    let pki = test_pki();
    let pem = dir.path().join("haproxy.pem");
    let mut combined = fs::read_to_string(&pki.cert_pem).expect("cert");
    combined.push_str(&fs::read_to_string(&pki.key_pem).expect("key"));
    fs::write(&pem, combined).expect("writing haproxy.pem");

    let haproxy_log = dir.path().join("haproxy.log");
    for attempt in 1..=5 {
        let port = free_port();
        let log = File::create(&haproxy_log).expect("haproxy log");
        let mut cmd = Command::new(tool_path("haproxy").expect("haproxy"));
        cmd.arg("-db")
            .arg("-f")
            .arg(HAPROXY_CFG)
            .env("IAP_BIND", format!("127.0.0.1:{port}"))
            .env("IAP_TLS_PEM", &pem)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (i, n) in nodes.iter().enumerate() {
            let k = i + 1;
            cmd.env(format!("RELAY{k}_ID"), &n.id)
                .env(format!("RELAY{k}_ADDR"), n.relay.addr.to_string())
                .env(format!("RELAY{k}_ADMIN_PORT"), n.admin.port().to_string());
        }
        let mut child = ChildGuard::new(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}")),
        );
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait() {
                let log = read_log(&haproxy_log);
                if log.contains("cannot bind") && attempt < 5 {
                    break; // the port was taken between free_port() and the bind: retry
                }
                panic!("haproxy exited ({status}) before it was ready\n{log}");
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Some(Fleet {
                    nodes,
                    addr,
                    pki,
                    token_file,
                    haproxy_log,
                    _haproxy: child,
                    dir,
                });
            }
            assert!(
                Instant::now() < deadline,
                "haproxy not ready within {READY_TIMEOUT:?}\n{}",
                read_log(&haproxy_log)
            );
            thread::sleep(POLL);
        }
    }
    unreachable!("the loop above returns or panics on its last attempt")
}

// ---------------------------------------------------------------------------------------------
// Tunnels: iap-ssh in stdio mode to an echo backend of its own
// ---------------------------------------------------------------------------------------------

/// How a tunnel ended.
struct Outcome {
    port: u16,
    status: ExitStatus,
    stderr: String,
    /// Bytes echoed back and their SHA-256.
    echoed: (u64, String),
    want: String,
    ended: Instant,
}

impl Outcome {
    fn intact(&self, len: u64) -> bool {
        self.status.success() && self.echoed == (len, self.want.clone())
    }

    /// The last line iap-ssh printed.
    fn last_line(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    }
}

/// One `iap-ssh` sending `len` pattern bytes (paced) through the fleet to an echo backend and
/// reading them back.
struct Tunnel {
    port: u16,
    child: ChildGuard,
    /// Bytes echoed back so far.
    progress: Arc<AtomicU64>,
    writer: Option<thread::JoinHandle<()>>,
    reader: Option<thread::JoinHandle<(u64, String)>>,
    stderr: Option<thread::JoinHandle<String>>,
    want: String,
}

/// Chunk written every [`PACE`].
const CHUNK: usize = 16 * 1024;
/// Pause between chunks: about 0.5 MB/s per tunnel each way.
const PACE: Duration = Duration::from_millis(30);

impl Tunnel {
    /// Starts `iap-ssh --endpoint endpoint … 127.0.0.1-instance PORT` with `extra` arguments.
    fn start(fleet: &Fleet, endpoint: &str, len: u64, seed: u64, extra: &[&str]) -> Tunnel {
        let port = echo_backend();
        let mut cmd = iap_ssh(fleet.dir.path())
            .endpoint(endpoint)
            .ca_file(&fleet.pki.ca_pem)
            .token_file(&fleet.token_file)
            .command();
        cmd.arg("--no-token-cache")
            .args(extra)
            .arg(dotted_host())
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::new(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}")),
        );
        let mut stdin = child.child_mut().stdin.take().expect("stdin");
        let mut stdout = child.child_mut().stdout.take().expect("stdout");
        let mut stderr = child.child_mut().stderr.take().expect("stderr");
        let progress = Arc::new(AtomicU64::new(0));
        let echoed = progress.clone();
        let reader_done = Arc::new(AtomicBool::new(false));
        let eof = reader_done.clone();
        let writer = thread::spawn(move || {
            let mut pattern = Pattern(seed);
            let mut buf = vec![0u8; CHUNK];
            let mut left = len;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                pattern.fill(&mut buf[..n]);
                if stdin.write_all(&buf[..n]).is_err() {
                    return;
                }
                left -= n as u64;
                thread::sleep(PACE);
            }
            // End of stdin ends the tunnel (as when ssh exits), so keep it open until every
            // byte has come back (bounded: a tunnel that died is reaped by wait_all).
            let started = Instant::now();
            while echoed.load(Ordering::SeqCst) < len
                && !eof.load(Ordering::SeqCst)
                && started.elapsed() < DEADLINE
            {
                thread::sleep(POLL);
            }
        });
        let p = progress.clone();
        let reader = thread::spawn(move || {
            let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        reader_done.store(true, Ordering::SeqCst);
                        return (total, hex(hash.finish().as_ref()));
                    }
                    Ok(n) => {
                        hash.update(&buf[..n]);
                        total += n as u64;
                        p.fetch_add(n as u64, Ordering::SeqCst);
                    }
                }
            }
        });
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Tunnel {
            port,
            child,
            progress,
            writer: Some(writer),
            reader: Some(reader),
            stderr: Some(stderr),
            want: expected_hash(len, seed),
        }
    }

    fn progress(&self) -> u64 {
        self.progress.load(Ordering::SeqCst)
    }
}

/// Waits (bounded by [`DEADLINE`]) for every tunnel, recording when each one ended.
fn wait_all(tunnels: Vec<Tunnel>, fleet: &Fleet) -> Vec<Outcome> {
    let started = Instant::now();
    let mut ended: Vec<Option<(ExitStatus, Instant)>> = vec![None; tunnels.len()];
    let mut tunnels = tunnels;
    while ended.iter().any(Option::is_none) {
        for (t, e) in tunnels.iter_mut().zip(ended.iter_mut()) {
            if e.is_none()
                && let Some(status) = t.child.try_wait()
            {
                *e = Some((status, Instant::now()));
            }
        }
        if started.elapsed() > DEADLINE {
            let stuck: Vec<u16> = tunnels
                .iter()
                .zip(&ended)
                .filter(|(_, e)| e.is_none())
                .map(|(t, _)| t.port)
                .collect();
            drop(tunnels); // kills them
            panic!(
                "tunnels to ports {stuck:?} did not finish within {DEADLINE:?}\n{}",
                fleet.logs()
            );
        }
        thread::sleep(POLL);
    }
    tunnels
        .into_iter()
        .zip(ended)
        .map(|(mut t, e)| {
            let (status, ended) = e.expect("every tunnel ended");
            let _ = t.writer.take().map(thread::JoinHandle::join);
            Outcome {
                port: t.port,
                status,
                stderr: t
                    .stderr
                    .take()
                    .map(|h| h.join().unwrap_or_default())
                    .unwrap_or_default(),
                echoed: t
                    .reader
                    .take()
                    .map(|h| h.join().unwrap_or_default())
                    .unwrap_or_default(),
                want: t.want.clone(),
                ended,
            }
        })
        .collect()
}

/// Waits (bounded) until every tunnel has an audited session and has echoed `min_progress`.
fn wait_established(fleet: &Fleet, tunnels: &[Tunnel], min_progress: u64) {
    let started = Instant::now();
    loop {
        let all_owned = tunnels
            .iter()
            .all(|t| fleet.owner_of_port(t.port).is_some());
        if all_owned && tunnels.iter().all(|t| t.progress() >= min_progress) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "tunnels not established within 60 s\n{}",
            fleet.logs()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// 30 tunnels through a fault proxy in front of HAProxy, every connection reset four times
/// mid-transfer: sessions spread over all three nodes, every resume lands on the node that
/// holds the session, every byte comes back intact.
#[test]
fn thirty_tunnels_spread_over_three_nodes_resume_on_their_owner() {
    const TUNNELS: u64 = 30;
    const CUTS: u32 = 4;
    let len: u64 = 4 << 20;
    let Some(fleet) = fleet(None) else { return };
    let proxy = FaultProxy::start(fleet.addr);
    let endpoint = format!("wss://{}", proxy.addr);
    let tunnels: Vec<Tunnel> = (0..TUNNELS)
        .map(|i| Tunnel::start(&fleet, &endpoint, len, 100 + i, &[]))
        .collect();

    // Reset every connection each time the slowest tunnel passes another sixth of the data,
    // so the cuts fall in the middle of the transfers.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let hits = thread::scope(|s| {
        let (proxy, tunnels_ref) = (&proxy, &tunnels);
        let chaos = s.spawn(move || {
            let mut hits = 0;
            for i in 1..=CUTS {
                let point = len * u64::from(i) / u64::from(CUTS + 2);
                loop {
                    if done_rx.try_recv().is_ok() {
                        return hits;
                    }
                    if tunnels_ref.iter().map(Tunnel::progress).min().unwrap_or(0) >= point {
                        break;
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                let reached = proxy.reset_all();
                eprintln!("cut {i}: reset {reached} connections");
                if reached > 0 {
                    hits += 1;
                }
            }
            hits
        });
        // Wait for the cuts; stop them if every tunnel got to the end first (or one is stuck).
        let started = Instant::now();
        while !chaos.is_finished() {
            let slowest = tunnels_ref.iter().map(Tunnel::progress).min().unwrap_or(0);
            if slowest >= len || started.elapsed() > DEADLINE {
                let _ = done_tx.send(());
                break;
            }
            thread::sleep(POLL);
        }
        chaos.join().expect("chaos thread")
    });
    let outcomes = wait_all(tunnels, &fleet);
    for o in &outcomes {
        assert!(
            o.intact(len),
            "tunnel to port {} failed ({}): {} of {len} bytes echoed\n{}\n{}",
            o.port,
            o.status,
            o.echoed.0,
            o.stderr,
            fleet.logs()
        );
    }
    assert_eq!(hits, CUTS, "every cut hit live connections");

    let spread = fleet.spread();
    let resumes = fleet.check_resumes_on_owner();
    eprintln!("sessions per node: {spread:?}");
    let counts: Vec<usize> = resumes.values().copied().collect();
    eprintln!(
        "resumes per session: min {}, max {}, total {}",
        counts.iter().min().unwrap_or(&0),
        counts.iter().max().unwrap_or(&0),
        counts.iter().sum::<usize>()
    );
    assert_eq!(resumes.len() as u64, TUNNELS, "{resumes:?}");
    assert!(
        spread.values().all(|&n| n >= 3),
        "sessions not spread over all three nodes: {spread:?}"
    );
    for (sid, n) in &resumes {
        assert!(
            *n >= CUTS as usize - 1,
            "session {sid} resumed only {n} times after {CUTS} cuts\n{}",
            fleet.logs()
        );
    }
    // The relays saw the clients' address from HAProxy's X-Forwarded-For.
    for n in &fleet.nodes {
        for e in n.events().iter().filter(|e| e["event"] == "connect") {
            assert_eq!(e["client"], "127.0.0.1", "{e}");
        }
    }
}

/// SIGKILL one node mid-transfer: its clients cannot resume anywhere else and end with a clear
/// message within their resume budget; the other nodes' tunnels complete intact.
#[test]
fn killed_node_ends_its_sessions_with_a_clear_error_others_complete() {
    const TUNNELS: u64 = 12;
    const RESUME_SECS: u64 = 10;
    let len: u64 = 4 << 20;
    let Some(fleet) = fleet(None) else { return };
    let resume = RESUME_SECS.to_string();
    let tunnels: Vec<Tunnel> = (0..TUNNELS)
        .map(|i| {
            Tunnel::start(
                &fleet,
                &fleet.url(),
                len,
                200 + i,
                &["--resume-timeout", &resume],
            )
        })
        .collect();
    wait_established(&fleet, &tunnels, 256 << 10);
    let victim = "relay-2";
    let on_victim: BTreeSet<u16> = tunnels
        .iter()
        .filter(|t| fleet.owner_of_port(t.port) == Some(victim))
        .map(|t| t.port)
        .collect();
    assert!(
        !on_victim.is_empty(),
        "no session on {victim}: {:?}",
        fleet.spread()
    );
    let killed_at = Instant::now();
    fleet.node(victim).signal(rustix::process::Signal::KILL);

    let outcomes = wait_all(tunnels, &fleet);
    let mut times = Vec::new();
    for o in &outcomes {
        if on_victim.contains(&o.port) {
            let took = o.ended.duration_since(killed_at);
            times.push(took);
            assert_eq!(
                o.status.code(),
                Some(1),
                "tunnel on the killed node: {}\n{}",
                o.stderr,
                fleet.logs()
            );
            let line = o.last_line();
            assert!(
                line.contains("could not resume") && line.contains("503"),
                "unclear message for a lost node: {line:?}\n{}",
                o.stderr
            );
            assert!(
                took < Duration::from_secs(RESUME_SECS + 10),
                "a tunnel on the killed node took {took:?} to end"
            );
        } else {
            assert!(
                o.intact(len),
                "tunnel to port {} on a surviving node failed ({}): {} of {len} bytes\n{}\n{}",
                o.port,
                o.status,
                o.echoed.0,
                o.stderr,
                fleet.logs()
            );
        }
    }
    let example = outcomes
        .iter()
        .find(|o| on_victim.contains(&o.port))
        .map(Outcome::last_line)
        .unwrap_or("");
    eprintln!(
        "killed {victim} holding {} of {TUNNELS} sessions (spread {:?}); they ended {:?} after the kill \
         (--resume-timeout {RESUME_SECS}); the other {} completed intact; message: {example}",
        on_victim.len(),
        fleet.spread(),
        times,
        TUNNELS as usize - on_victim.len(),
    );
    fleet.check_resumes_on_owner();
}

/// SIGTERM one node mid-transfer: it reports 503 on /healthz, new tunnels (opened right away,
/// before HAProxy's health check has noticed) all land on the other nodes, its live tunnels
/// carry on (and resume on it after a cut), and it exits once they are done.
#[test]
fn drained_node_takes_no_new_sessions_finishes_live_ones_then_exits() {
    const TUNNELS: u64 = 9;
    let len: u64 = 4 << 20;
    let Some(mut fleet) = fleet(None) else { return };
    let proxy = FaultProxy::start(fleet.addr);
    let endpoint = format!("wss://{}", proxy.addr);
    let tunnels: Vec<Tunnel> = (0..TUNNELS)
        .map(|i| Tunnel::start(&fleet, &endpoint, len, 300 + i, &[]))
        .collect();
    wait_established(&fleet, &tunnels, 256 << 10);
    let drained = "relay-3";
    let on_drained: BTreeSet<u16> = tunnels
        .iter()
        .filter(|t| fleet.owner_of_port(t.port) == Some(drained))
        .map(|t| t.port)
        .collect();
    assert!(
        !on_drained.is_empty(),
        "no session on {drained}: {:?}",
        fleet.spread()
    );
    let opened_before = fleet.node(drained).connects().len();
    let resumed_before = fleet.node(drained).reconnects().len();

    let term_at = Instant::now();
    fleet.node(drained).signal(rustix::process::Signal::TERM);
    let admin = fleet.node(drained).admin;
    while !http_get(admin, "/healthz").starts_with("HTTP/1.1 503") {
        assert!(
            term_at.elapsed() < Duration::from_secs(5),
            "/healthz of a draining node is not 503"
        );
        thread::sleep(POLL);
    }
    // New tunnels at once: HAProxy may still think the node healthy, but the node refuses
    // with 503 and HAProxy retries another node.
    let late: Vec<Tunnel> = (0..TUNNELS)
        .map(|i| Tunnel::start(&fleet, &endpoint, 1 << 20, 400 + i, &[]))
        .collect();
    wait_established(&fleet, &late, 0);
    // One cut for everybody: the draining node's sessions must resume on it.
    thread::sleep(Duration::from_millis(300));
    let reached = proxy.reset_all();

    let outcomes = wait_all(tunnels, &fleet);
    let late_outcomes = wait_all(late, &fleet);
    for o in outcomes.iter() {
        assert!(
            o.intact(len),
            "tunnel to port {} failed during the drain ({}): {} of {len} bytes\n{}\n{}",
            o.port,
            o.status,
            o.echoed.0,
            o.stderr,
            fleet.logs()
        );
    }
    for o in late_outcomes.iter() {
        assert!(
            o.intact(1 << 20),
            "tunnel to port {} opened during the drain failed ({}): {}\n{}",
            o.port,
            o.status,
            o.stderr,
            fleet.logs()
        );
        assert_ne!(fleet.owner_of_port(o.port), Some(drained));
    }
    assert_eq!(
        fleet.node(drained).connects().len(),
        opened_before,
        "a draining node took a new session\n{}",
        fleet.logs()
    );
    let resumed_during_drain = fleet.node(drained).reconnects().len() - resumed_before;
    assert!(
        resumed_during_drain >= on_drained.len(),
        "the draining node's sessions did not resume on it ({resumed_during_drain} resumes, \
         {reached} connections cut)\n{}",
        fleet.logs()
    );
    let last_live_end = outcomes
        .iter()
        .filter(|o| on_drained.contains(&o.port))
        .map(|o| o.ended)
        .max()
        .expect("sessions on the drained node");

    // Then the node exits by itself, long before drain_secs (60).
    let node = fleet
        .nodes
        .iter_mut()
        .find(|n| n.id == drained)
        .expect("node");
    while node.relay.is_running() {
        assert!(
            last_live_end.elapsed() < Duration::from_secs(15),
            "the drained node is still running 15 s after its last session ended\n{}",
            node.relay.log()
        );
        thread::sleep(POLL);
    }
    let exited = Instant::now();
    // New sessions the node refused itself (503) before HAProxy's check took it out; HAProxy
    // sent each of them to another node (retry-on 503), which is why all late tunnels worked.
    let refused = node
        .relay
        .log()
        .lines()
        .filter(|l| l.contains("upgrade refused") && l.contains("draining"))
        .count();
    fleet.check_resumes_on_owner();

    eprintln!(
        "drained {drained}: {} live sessions finished intact ({resumed_during_drain} resumes on it during the drain), \
         {TUNNELS} new tunnels went to {:?}, none to it ({refused} refused by it with 503 and retried elsewhere by HAProxy); \
         it exited {:?} after SIGTERM, {:?} after its last session ended",
        on_drained.len(),
        fleet.spread(),
        exited.duration_since(term_at),
        exited.saturating_duration_since(last_live_end),
    );
    let down = fleet.haproxy_log();
    eprintln!(
        "haproxy: {}",
        down.lines()
            .filter(|l| l.contains("is DOWN") || l.contains("is UP"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
}

/// A client's own X-Forwarded-For never reaches a relay: HAProxy replaces it, so the audit log
/// names the real peer.
#[test]
fn haproxy_replaces_a_forwarded_for_header_sent_by_the_client() {
    let Some(fleet) = fleet(None) else { return };
    let backend = echo_backend();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let tls = iap_ssh::wire::tls_config(Some(&fleet.pki.ca_pem)).expect("tls");
        let tcp = tokio::net::TcpStream::connect(fleet.addr)
            .await
            .expect("tcp");
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .expect("tls handshake");
        let url = format!(
            "{}/v4/connect?project={PROJECT}&port={backend}&newWebsocket=True&zone={ZONE}&instance={INSTANCE}&interface=nic0",
            fleet.url()
        );
        let mut req = url.as_str().into_client_request().expect("request");
        let token = fs::read_to_string(&fleet.token_file).expect("token");
        let h = req.headers_mut();
        h.insert(
            "Authorization",
            format!("Bearer {}", token.trim()).parse().expect("header"),
        );
        h.insert(
            "Sec-WebSocket-Protocol",
            "relay.tunnel.cloudproxy.app".parse().expect("header"),
        );
        h.insert("X-Forwarded-For", "203.0.113.66".parse().expect("header"));
        let (mut ws, _) = tokio_tungstenite::client_async(req, tls)
            .await
            .expect("upgrade through haproxy");
        let first = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        assert!(
            matches!(first, Ok(Some(Ok(Message::Binary(_))))),
            "{first:?}"
        );
        let _ = ws.close(None).await;
    });
    let started = Instant::now();
    let clients = loop {
        let clients: Vec<String> = fleet
            .nodes
            .iter()
            .flat_map(Node::events)
            .filter(|e| e["event"] == "connect")
            .map(|e| e["client"].as_str().unwrap_or("").to_owned())
            .collect();
        if !clients.is_empty() {
            break clients;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no connect line"
        );
        thread::sleep(POLL);
    };
    assert_eq!(clients, vec!["127.0.0.1".to_owned()]);
}

/// Unmodified gcloud (it needs wss://, so through HAProxy's TLS) uploads through the fleet while
/// the relays force re-authentication (close 4004) every 2 s: each forced resume reaches the
/// node holding the session and the files arrive intact.
#[test]
fn gcloud_forced_resume_reaches_the_owner_node() {
    if !require_openssh() || !require_tool("gcloud") {
        return;
    }
    const UPLOADS: usize = 3;
    let Some(fleet) = fleet(Some(2)) else {
        return;
    };
    let sshd = spawn_sshd();
    let gcloud = tool_path("gcloud").expect("gcloud installed");
    let pc = format!(
        "{} compute start-iap-tunnel {INSTANCE} %p --zone {ZONE} --project {PROJECT} \
         --listen-on-stdin --iap-tunnel-url-override={} --verbosity=warning",
        proxy_quote_path(&gcloud),
        proxy_quote(&fleet.url()),
    );
    let local = sshd.subdir("local");
    let remote = sshd.subdir("remote");
    let started = Instant::now();
    let results: Vec<(PathBuf, String, std::process::Output)> = thread::scope(|s| {
        let handles: Vec<_> = (0..UPLOADS)
            .map(|i| {
                let (sshd, pc, fleet, local, remote) = (&sshd, &pc, &fleet, &local, &remote);
                s.spawn(move || {
                    let src = random_file(local, &format!("up-{i}.bin"), 16 << 20);
                    let want = sha256_file(&src);
                    let dest = remote.join(format!("up-{i}.bin"));
                    let mut cmd = ssh_command("ssh", sshd);
                    cmd.env("CLOUDSDK_CORE_PROJECT", PROJECT)
                        .env("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", &fleet.token_file)
                        .env("CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE", &fleet.pki.ca_pem)
                        .env("CLOUDSDK_CORE_DISABLE_USAGE_REPORTING", "true")
                        .env("CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK", "true")
                        .args(ssh_base_args(sshd, pc))
                        .arg(INSTANCE)
                        // The remote side reads 256 KiB every 100 ms, so each upload spans
                        // several forced re-authentications whatever gcloud's own speed.
                        .arg(format!(
                            "/usr/bin/python3 -c {}",
                            sh_quote(&format!(
                                "import sys,time\nout=open({:?},'wb')\nwhile True:\n b=sys.stdin.buffer.read(262144)\n if not b: break\n out.write(b); time.sleep(0.1)\nout.close()",
                                dest.display().to_string()
                            ))
                        ));
                    let out = run_with_io(
                        &mut cmd,
                        Stdio::from(File::open(&src).expect("source")),
                        None,
                        TRANSFER_TIMEOUT,
                    );
                    (dest, want, out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("upload thread"))
            .collect()
    });
    let took = started.elapsed();
    for (dest, want, out) in &results {
        assert!(out.status.success(), "{}\n{}", describe(out), fleet.logs());
        assert_eq!(
            &sha256_file(dest),
            want,
            "upload through gcloud and the fleet corrupted\n{}",
            fleet.logs()
        );
    }
    let resumes = fleet.check_resumes_on_owner();
    let forced: usize = fleet
        .nodes
        .iter()
        .map(|n| n.relay.log().matches("code: 4004").count())
        .sum();
    let resumed: usize = resumes.values().sum();
    eprintln!(
        "{UPLOADS} gcloud uploads of 16 MiB took {took:?}: sessions per node {:?}, \
         {forced} forced re-authentications, {resumed} resumes, all on the owner node",
        fleet.spread()
    );
    assert!(
        forced >= UPLOADS,
        "expected several forced re-authentications\n{}",
        fleet.logs()
    );
    assert!(
        resumes.len() == UPLOADS && resumes.values().all(|&n| n >= 1),
        "a gcloud session did not resume after its 4004s: {resumes:?}\n{}",
        fleet.logs()
    );
}
