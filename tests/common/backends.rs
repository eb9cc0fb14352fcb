//! Backends the relay dials in tests: an echo server (threads, or tasks on the caller's
//! runtime) that runs until the test ends.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::thread;

/// Echoes every connection on 127.0.0.1 until the peer half-closes; returns the port.
pub fn echo_backend() -> u16 {
    echo_backend_on("127.0.0.1:0").port()
}

/// [`echo_backend`] bound to `addr` (e.g. `[::1]:0`); returns the bound address.
pub fn echo_backend_on(addr: &str) -> SocketAddr {
    let listener = TcpListener::bind(addr).expect("binding echo backend");
    let local = listener.local_addr().expect("echo address");
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            thread::spawn(move || {
                let Ok(mut reader) = conn.try_clone() else {
                    return;
                };
                let _ = io::copy(&mut reader, &mut conn);
                let _ = conn.shutdown(Shutdown::Write);
            });
        }
    });
    local
}

/// [`echo_backend`] as tasks on the current tokio runtime (ends with it).
pub async fn echo_backend_async() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding echo backend");
    let port = listener.local_addr().expect("echo address").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}
