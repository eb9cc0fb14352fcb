//! Latency, concurrency, setup-rate and distance tools for `bench/run.sh` (not part of the
//! shipped binaries). Every subcommand talks to 127.0.0.1 only and is bounded in time.
//!
//! * `echo` — an echo service on 127.0.0.1: prints `port N`, echoes every byte (with
//!   `TCP_NODELAY`) until stdin ends.
//! * `rtt SIZE COUNT tcp PORT` / `rtt SIZE COUNT stdio -- CMD ARGS...` — request/response
//!   round trips of SIZE bytes to an echo service, through a TCP port or through a child's
//!   stdin/stdout (iap-ssh, socat); prints `p50_us= p99_us= p999_us= n=`.
//! * `parallel N BYTES -- CMD ARGS...` — runs N copies of CMD at once (stdin held open), reads
//!   BYTES from each one's stdout; prints aggregate `mbps=` and the fastest and slowest
//!   completion times.
//! * `setup relay ENDPOINT CA TOKEN_FILE PROJECT ZONE INSTANCE PORT N CONC` and
//!   `setup tls ADDR CA N CONC` — N tunnel setups, CONC at a time, each a connect, one byte
//!   echoed and a close; through iap-relay (TLS, WebSocket upgrade, token, policy, backend
//!   dial, session id) or through a TLS-terminating proxy such as HAProxy. Prints `rate=`
//!   setups per second and `p50_ms= p99_ms=`.
//! * `delay LISTEN_PORT TARGET_PORT ONE_WAY_MS` — a delay line: forwards each connection to
//!   TARGET_PORT, holding every chunk ONE_WAY_MS in each direction; prints `port N` and runs
//!   until stdin ends.
//!
//! Run: `cargo run --release --example bench_net -- SUBCOMMAND ...`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use iap_ssh::client::auth::Token;
use iap_ssh::client::dial::{Dialer, Endpoint};
use iap_ssh::frame::Frame;
use iap_ssh::wire::tls_config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Upper bound for one subcommand, so a stuck peer cannot hang the harness.
const OVERALL_LIMIT: Duration = Duration::from_secs(900);

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        return Err(
            "usage: bench_net echo | rtt ... | parallel ... | setup ... | delay ...".into(),
        );
    };
    match cmd.as_str() {
        "rtt" => return rtt(rest),
        "parallel" => return parallel(rest),
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let work = async {
        match cmd.as_str() {
            "echo" => echo().await,
            "setup" => setup(rest).await,
            "delay" => delay(rest).await,
            other => Err(format!("unknown subcommand {other}").into()),
        }
    };
    rt.block_on(async {
        tokio::time::timeout(OVERALL_LIMIT, work)
            .await
            .map_err(|_| BoxError::from("time limit reached"))?
    })
}

/// Resolves when our stdin ends (the harness closes it).
async fn stdin_closed() {
    let _ = tokio::task::spawn_blocking(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    })
    .await;
}

async fn echo() -> Result<(), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("port {}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let accept = async {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if sock.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    };
    tokio::select! {
        () = stdin_closed() => {}
        () = accept => {}
    }
    Ok(())
}

/// Percentile `p` (0..=1) of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn print_latency(mut samples: Vec<Duration>) {
    samples.sort();
    let us = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e6);
    println!(
        "p50_us={} p99_us={} p999_us={} n={}",
        us(percentile(&samples, 0.5)),
        us(percentile(&samples, 0.99)),
        us(percentile(&samples, 0.999)),
        samples.len()
    );
}

/// Round trips over any byte stream: write SIZE bytes, read SIZE back, time it. The first
/// tenth are a warm-up and not counted. Blocking I/O: nothing but the path is measured.
fn round_trips(
    reader: &mut impl Read,
    writer: &mut impl Write,
    size: usize,
    count: usize,
) -> Result<Vec<Duration>, BoxError> {
    let request = vec![b'k'; size];
    let mut reply = vec![0u8; size];
    let warm = count / 10;
    let mut samples = Vec::with_capacity(count);
    for i in 0..count + warm {
        let t0 = Instant::now();
        writer.write_all(&request)?;
        writer.flush()?;
        reader.read_exact(&mut reply)?;
        if i >= warm {
            samples.push(t0.elapsed());
        }
    }
    Ok(samples)
}

fn rtt(args: &[String]) -> Result<(), BoxError> {
    let [size, count, mode, rest @ ..] = args else {
        return Err("usage: rtt SIZE COUNT tcp PORT | rtt SIZE COUNT stdio -- CMD ...".into());
    };
    let (size, count): (usize, usize) = (size.parse()?, count.parse()?);
    let samples = match mode.as_str() {
        "tcp" => {
            let port: u16 = rest.first().ok_or("rtt tcp: no port")?.parse()?;
            let sock = std::net::TcpStream::connect(("127.0.0.1", port))?;
            sock.set_nodelay(true)?;
            sock.set_read_timeout(Some(Duration::from_secs(60)))?;
            let mut reader = sock.try_clone()?;
            let mut writer = sock;
            round_trips(&mut reader, &mut writer, size, count)?
        }
        "stdio" => {
            let rest = rest.strip_prefix(&["--".to_owned()]).unwrap_or(rest);
            let (program, cmd_args) = rest.split_first().ok_or("rtt stdio: no command")?;
            let mut child = Command::new(program)
                .args(cmd_args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?;
            let mut stdin = child.stdin.take().ok_or("stdin")?;
            let mut stdout = child.stdout.take().ok_or("stdout")?;
            let samples = round_trips(&mut stdout, &mut stdin, size, count);
            let _ = child.kill();
            let _ = child.wait();
            samples?
        }
        other => return Err(format!("rtt: unknown mode {other}").into()),
    };
    print_latency(samples);
    Ok(())
}

fn parallel(args: &[String]) -> Result<(), BoxError> {
    let [n, bytes, rest @ ..] = args else {
        return Err("usage: parallel N BYTES -- CMD ...".into());
    };
    let (n, bytes): (usize, u64) = (n.parse()?, bytes.parse()?);
    let rest = rest.strip_prefix(&["--".to_owned()]).unwrap_or(rest);
    let (program, cmd_args) = rest.split_first().ok_or("parallel: no command")?;
    let started = Instant::now();
    let mut readers = Vec::new();
    for _ in 0..n {
        let mut child = Command::new(program)
            .args(cmd_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        readers.push(std::thread::spawn(move || -> Result<Duration, String> {
            let _stdin = child.stdin.take();
            let mut out = child.stdout.take().ok_or("stdout")?;
            let mut buf = vec![0u8; 128 * 1024];
            let mut got = 0u64;
            while got < bytes {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n as u64,
                }
            }
            let took = started.elapsed();
            let _ = child.kill();
            let _ = child.wait();
            if got < bytes {
                return Err(format!("a client ended after {got} of {bytes} bytes"));
            }
            Ok(took)
        }));
    }
    let mut times = Vec::new();
    for r in readers {
        times.push(r.join().map_err(|_| "a reader panicked")??);
    }
    times.sort();
    let total = started.elapsed().as_secs_f64();
    println!(
        "mbps={:.1} fastest_s={:.2} slowest_s={:.2} n={n}",
        (bytes * n as u64) as f64 / total / 1e6,
        times.first().map_or(0.0, Duration::as_secs_f64),
        times.last().map_or(0.0, Duration::as_secs_f64),
    );
    Ok(())
}

async fn setup(args: &[String]) -> Result<(), BoxError> {
    let Some((kind, rest)) = args.split_first() else {
        return Err("usage: setup relay ... | setup tls ...".into());
    };
    let (n, conc, one): (usize, usize, SetupFn) = match (kind.as_str(), rest) {
        (
            "relay",
            [
                endpoint,
                ca,
                token_file,
                project,
                zone,
                instance,
                port,
                n,
                conc,
            ],
        ) => {
            let dialer = Arc::new(Dialer {
                endpoint: Endpoint::parse(endpoint).map_err(|e| format!("{e:#}"))?,
                tls: tls_config(Some(Path::new(ca))).map_err(|e| format!("{e:#}"))?,
                user_agent: "iap-ssh-bench".into(),
            });
            let token = Token::new(std::fs::read_to_string(token_file)?.trim())
                .map_err(|e| format!("{e:#}"))?;
            let query = Arc::new(format!(
                "project={project}&port={port}&newWebsocket=True&zone={zone}&instance={instance}&interface=nic0"
            ));
            let one: SetupFn = Arc::new(move || {
                let (dialer, token, query) = (dialer.clone(), token.clone(), query.clone());
                Box::pin(async move { relay_setup(&dialer, &token, &query).await })
            });
            (n.parse()?, conc.parse()?, one)
        }
        ("tls", [addr, ca, n, conc]) => {
            let tls = tls_config(Some(Path::new(ca))).map_err(|e| format!("{e:#}"))?;
            let connector = tokio_rustls::TlsConnector::from(tls);
            let addr: std::net::SocketAddr = addr.parse()?;
            let one: SetupFn = Arc::new(move || {
                let connector = connector.clone();
                Box::pin(async move { tls_setup(&connector, addr).await })
            });
            (n.parse()?, conc.parse()?, one)
        }
        _ => {
            return Err("usage: setup relay ENDPOINT CA TOKEN_FILE PROJECT ZONE INSTANCE PORT N CONC | setup tls ADDR CA N CONC".into());
        }
    };
    let limit = Arc::new(Semaphore::new(conc));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = limit.clone().acquire_owned().await?;
        let one = one.clone();
        tasks.spawn(async move {
            let t0 = Instant::now();
            let r = one().await;
            drop(permit);
            r.map(|()| t0.elapsed())
        });
    }
    let mut samples = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        samples.push(done??);
    }
    let total = started.elapsed().as_secs_f64();
    samples.sort();
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
    println!(
        "rate={:.0} p50_ms={} p99_ms={} n={n} conc={conc}",
        n as f64 / total,
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
    );
    Ok(())
}

type SetupFn = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send>>
        + Send
        + Sync,
>;

/// One tunnel through iap-relay: upgrade, session id, one byte echoed, close.
async fn relay_setup(dialer: &Dialer, token: &Token, query: &str) -> Result<(), BoxError> {
    let mut ws = dialer
        .open("connect", query, token)
        .await
        .map_err(|e| e.message)?;
    match ws.next().await {
        Some(Ok(Message::Binary(b)))
            if matches!(Frame::decode(&b), Ok(Frame::ConnectSuccessSid(_))) => {}
        other => return Err(format!("no session id: {other:?}").into()),
    }
    ws.send(Message::Binary(Frame::Data(b"x").to_bytes()))
        .await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                if let Ok(Frame::Data(d)) = Frame::decode(&b)
                    && !d.is_empty()
                {
                    break;
                }
            }
            Some(Ok(_)) => {}
            other => return Err(format!("no echo: {other:?}").into()),
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// One TLS connection through a TLS-terminating proxy: handshake, one byte echoed, close.
async fn tls_setup(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
) -> Result<(), BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(b"x").await?;
    tls.flush().await?;
    let mut b = [0u8; 1];
    tls.read_exact(&mut b).await?;
    let _ = tls.shutdown().await;
    Ok(())
}

async fn delay(args: &[String]) -> Result<(), BoxError> {
    let [listen, target, ms] = args else {
        return Err("usage: delay LISTEN_PORT TARGET_PORT ONE_WAY_MS".into());
    };
    let (listen, target): (u16, u16) = (listen.parse()?, target.parse()?);
    let one_way = Duration::from_millis(ms.parse()?);
    let listener = TcpListener::bind(("127.0.0.1", listen)).await?;
    println!("port {}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let accept = async {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::join!(delayed_copy(cr, sw, one_way), delayed_copy(sr, cw, one_way));
            });
        }
    };
    tokio::select! {
        () = stdin_closed() => {}
        () = accept => {}
    }
    Ok(())
}

/// Copies `from` to `to`, each chunk leaving `one_way` after it arrived: a fixed propagation
/// delay with no bandwidth limit. The reader keeps reading while chunks wait, as a long link
/// holds bytes in flight; TCP flow control toward the sender still applies once the writer
/// falls behind (the queue is bounded).
async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    one_way: Duration,
) {
    const QUEUE_LIMIT: usize = 64 * 1024 * 1024;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Bytes)>(4096);
    let reader = async move {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = tokio::time::Instant::now() + one_way;
                    if tx
                        .send((due, Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        let mut held: VecDeque<(tokio::time::Instant, Bytes)> = VecDeque::new();
        let mut held_bytes = 0usize;
        loop {
            let next = match held.pop_front() {
                Some(item) => item,
                None => match rx.recv().await {
                    Some(item) => item,
                    None => break,
                },
            };
            held_bytes = held_bytes.saturating_sub(next.1.len());
            tokio::time::sleep_until(next.0).await;
            // Take what else has arrived meanwhile, up to the bound, so the channel drains.
            while held_bytes < QUEUE_LIMIT {
                match rx.try_recv() {
                    Ok(item) => {
                        held_bytes += item.1.len();
                        held.push_back(item);
                    }
                    Err(_) => break,
                }
            }
            if to.write_all(&next.1).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
