//! Load and timing helper for `bench/run.sh` (not part of the shipped binaries).
//!
//! Subcommands, each bounded in time:
//!
//! * `backend` — an idle TCP service on 127.0.0.1: prints `port N`, accepts any number of
//!   connections and holds them open (reading and discarding) until stdin ends.
//! * `idle ENDPOINT CA TOKEN_FILE PROJECT ZONE INSTANCE PORT RELAY_PID STEPS` — opens
//!   WebSocket tunnels to the relay in steps (e.g. `1000,10000` total), waits for each
//!   CONNECT_SUCCESS_SID, keeps them idle, and prints `tunnels=N rss_kib=R` for the relay
//!   process at 0 and after each step.
//! * `port` — prints a free TCP port on 127.0.0.1.
//! * `ttfb MARKER -- CMD ARGS...` — runs CMD with stdin held open and prints the time from
//!   spawn to its first stdout byte (`first_byte_ms`) and to the first stderr line containing
//!   MARKER (`marker_ms`, `-` when MARKER is empty or never seen), then kills CMD.
//!
//! Run: `cargo run --release --example bench_load -- SUBCOMMAND ...`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use iap_ssh::client::auth::Token;
use iap_ssh::client::dial::{Dialer, Endpoint};
use iap_ssh::frame::Frame;
use iap_ssh::wire::tls_config;
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Upper bound for one subcommand, so a stuck relay cannot hang the harness.
const OVERALL_LIMIT: Duration = Duration::from_secs(600);
/// Handshakes in flight at once while opening idle tunnels.
const CONCURRENCY: usize = 64;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        return Err("usage: bench_load backend | idle ... | ttfb MARKER -- CMD ...".into());
    };
    match cmd.as_str() {
        "backend" => runtime()?.block_on(backend()),
        "idle" => runtime()?.block_on(idle(&args[1..])),
        "ttfb" => ttfb(&args[1..]),
        "port" => {
            // A free loopback port for a server that binds by itself (socat, sshd).
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            println!("{}", l.local_addr()?.port());
            Ok(())
        }
        other => Err(format!("unknown subcommand {other}").into()),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

async fn backend() -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("port {}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    // Stop when our stdin ends (the harness closes it) or after the overall limit.
    let stop = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    });
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((mut sock, _)) => {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 512];
                        while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::select! {
        _ = stop => {}
        () = accept => {}
        () = tokio::time::sleep(OVERALL_LIMIT) => {}
    }
    Ok(())
}

fn rss_kib(pid: &str) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}

async fn idle(args: &[String]) -> Result<(), BoxError> {
    let [
        endpoint,
        ca,
        token_file,
        project,
        zone,
        instance,
        port,
        relay_pid,
        steps,
    ] = args
    else {
        return Err(
            "usage: idle ENDPOINT CA TOKEN_FILE PROJECT ZONE INSTANCE PORT RELAY_PID STEPS".into(),
        );
    };
    let steps: Vec<usize> = steps.split(',').map(str::parse).collect::<Result<_, _>>()?;
    let dialer = Arc::new(Dialer {
        endpoint: Endpoint::parse(endpoint)?,
        tls: tls_config(Some(Path::new(ca))).map_err(|e| format!("{e:#}"))?,
        user_agent: "iap-ssh-bench".into(),
    });
    let token = Token::new(&std::fs::read_to_string(token_file)?).map_err(|e| format!("{e:#}"))?;
    let query = format!(
        "project={project}&port={port}&newWebsocket=True&zone={zone}&instance={instance}&interface=nic0"
    );
    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let mut open = 0usize;
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("tunnels=0 rss_kib={}", rss_kib(relay_pid)?);
    for target in steps {
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let want = target.saturating_sub(open);
        for _ in 0..want {
            let permit = limit.clone().acquire_owned().await?;
            let (dialer, token, query) = (dialer.clone(), token.clone(), query.clone());
            let (ready_tx, failed_tx) = (ready_tx.clone(), failed_tx.clone());
            tokio::spawn(async move {
                let mut ws = match dialer.open("connect", &query, &token).await {
                    Ok(ws) => ws,
                    Err(e) => {
                        let _ = failed_tx.send(e.to_string());
                        return;
                    }
                };
                let first = tokio::time::timeout(Duration::from_secs(30), ws.next()).await;
                let ok = matches!(&first, Ok(Some(Ok(Message::Binary(b))))
                    if matches!(Frame::decode(b), Ok(Frame::ConnectSuccessSid(_))));
                drop(permit);
                if !ok {
                    let _ = failed_tx.send(format!("no CONNECT_SUCCESS_SID: {first:?}"));
                    return;
                }
                let _ = ready_tx.send(());
                // Idle: keep reading so pings would be answered, until the harness exits.
                while let Some(Ok(_)) = ws.next().await {}
            });
            if started.elapsed() > OVERALL_LIMIT {
                return Err("time limit reached while opening tunnels".into());
            }
        }
        drop(ready_tx);
        let mut got = 0;
        while got < want {
            tokio::select! {
                r = ready_rx.recv() => match r { Some(()) => got += 1, None => break },
                Some(e) = failed_rx.recv() => return Err(format!("tunnel {} failed: {e}", open + got + 1).into()),
                () = tokio::time::sleep(Duration::from_secs(60)) => return Err("no progress for 60 s".into()),
            }
        }
        open += got;
        // Let allocator and kernel settle before sampling.
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!(
            "tunnels={open} rss_kib={} secs={:.1}",
            rss_kib(relay_pid)?,
            started.elapsed().as_secs_f64()
        );
        std::io::stdout().flush()?;
    }
    Ok(())
}

fn ttfb(args: &[String]) -> Result<(), BoxError> {
    let (marker, rest) = args.split_first().ok_or("usage: ttfb MARKER -- CMD ...")?;
    let rest = rest.strip_prefix(&["--".to_owned()]).unwrap_or(rest);
    let (program, cmd_args) = rest.split_first().ok_or("ttfb: no command")?;
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(cmd_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (tx, rx) = mpsc::channel::<(&str, Duration)>();
    let mut stdout = child.stdout.take().ok_or("stdout")?;
    let out_tx = tx.clone();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        if matches!(stdout.read(&mut b), Ok(1)) {
            let _ = out_tx.send(("first_byte_ms", start.elapsed()));
        }
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
    });
    let stderr = child.stderr.take().ok_or("stderr")?;
    let marker = marker.clone();
    std::thread::spawn(move || {
        let mut seen = marker.is_empty();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !seen && line.contains(&marker) {
                seen = true;
                let _ = tx.send(("marker_ms", start.elapsed()));
            }
        }
    });
    let want = if args[0].is_empty() { 1 } else { 2 };
    let (mut first, mut mark) = (None, None);
    let deadline = start + Duration::from_secs(60);
    while (first.is_none() || (want == 2 && mark.is_none())) && Instant::now() < deadline {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(("first_byte_ms", t)) => first = Some(t),
            Ok((_, t)) => mark = Some(t),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let ms =
        |t: Option<Duration>| t.map_or("-".to_owned(), |t| format!("{:.1}", t.as_secs_f64() * 1e3));
    println!("first_byte_ms={} marker_ms={}", ms(first), ms(mark));
    Ok(())
}
