//! A TCP proxy for tests that breaks connections on command: reset (RST), half-close,
//! black-hole (stop forwarding but keep the sockets open) and delay. It runs on its own
//! runtime thread so that tests driving processes with std threads can use it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What a proxied connection does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Copy bytes both ways.
    Forward,
    /// Copy bytes both ways after sleeping this long before each write.
    Delay(Duration),
    /// Stop copying; keep both sockets open (a black hole).
    BlackHole,
    /// Half-close towards the client (it reads EOF), keep the rest open.
    HalfClose,
    /// Reset both sockets (RST) and end.
    Reset,
}

/// The proxy; dropping it stops it.
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<watch::Sender<Mode>>>>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// While set, new connections are reset as soon as they are accepted (a relay that is down).
    refusing: Arc<AtomicBool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 that forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let conns: Arc<Mutex<Vec<watch::Sender<Mode>>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let refusing = Arc::new(AtomicBool::new(false));
        let (c, a, r) = (conns.clone(), accepted.clone(), refusing.clone());
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                if r.load(Ordering::SeqCst) {
                    #[allow(deprecated)]
                    let _ = client.set_linger(Some(Duration::ZERO));
                    continue;
                }
                let (tx, rx) = watch::channel(Mode::Forward);
                c.lock().unwrap().push(tx);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        proxy_one(client, server, rx).await;
                    }
                });
            }
        });
        FaultProxy {
            addr,
            conns,
            accepted,
            refusing,
            runtime: Some(runtime),
        }
    }

    /// While `on`, resets every new connection at once; open ones are not touched.
    pub fn refuse_new(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }

    /// Applies `mode` to every connection open now (new ones start in `Forward`).
    /// Returns how many connections it reached.
    pub fn set_all(&self, mode: Mode) -> usize {
        let mut conns = self.conns.lock().unwrap();
        conns.retain(|tx| tx.send(mode).is_ok());
        let n = conns.len();
        if mode == Mode::Reset {
            conns.clear();
        }
        n
    }

    /// Resets every open connection.
    pub fn reset_all(&self) -> usize {
        self.set_all(Mode::Reset)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn proxy_one(client: TcpStream, server: TcpStream, mut mode: watch::Receiver<Mode>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut up = vec![0u8; 64 * 1024];
    let mut down = vec![0u8; 64 * 1024];
    let mut current = Mode::Forward;
    loop {
        let forwarding = matches!(current, Mode::Forward | Mode::Delay(_));
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                current = *mode.borrow_and_update();
                match current {
                    Mode::Reset => {
                        let client = cr.reunite(cw).expect("same stream");
                        let server = sr.reunite(sw).expect("same stream");
                        #[allow(deprecated)]
                        {
                            let _ = client.set_linger(Some(Duration::ZERO));
                            let _ = server.set_linger(Some(Duration::ZERO));
                        }
                        return;
                    }
                    Mode::HalfClose => {
                        let _ = cw.shutdown().await;
                    }
                    _ => {}
                }
            }
            n = cr.read(&mut up), if forwarding => match n {
                Ok(0) | Err(_) => { let _ = sw.shutdown().await; return; }
                Ok(n) => {
                    if let Mode::Delay(d) = current { tokio::time::sleep(d).await; }
                    if sw.write_all(&up[..n]).await.is_err() { return; }
                }
            },
            n = sr.read(&mut down), if forwarding => match n {
                Ok(0) | Err(_) => { let _ = cw.shutdown().await; return; }
                Ok(n) => {
                    if let Mode::Delay(d) = current { tokio::time::sleep(d).await; }
                    if current != Mode::HalfClose && cw.write_all(&down[..n]).await.is_err() { return; }
                }
            },
        }
    }
}
