//! The admin endpoint on its own address: `GET /healthz` and `GET /metrics`, plain HTTP/1.1,
//! one request per connection. It carries no secrets and takes no input beyond the path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;

/// Bound on reading one admin request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the admin endpoint until `cancel`. `draining` makes `/healthz` answer 503 so a load
/// balancer stops sending new sessions.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => return,
        };
        let (metrics, draining) = (metrics.clone(), draining.clone());
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &metrics, &draining)).await;
        });
    }
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    metrics: &Metrics,
    draining: &AtomicBool,
) -> std::io::Result<()> {
    let mut buf = [0u8; 2048];
    let mut len = 0;
    // Read until the end of the request head (or a full buffer: the path is all we need).
    while len < buf.len()
        && !buf
            .get(..len)
            .unwrap_or_default()
            .windows(4)
            .any(|w| w == b"\r\n\r\n")
    {
        let n = stream.read(buf.get_mut(len..).unwrap_or_default()).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let head = String::from_utf8_lossy(buf.get(..len).unwrap_or_default());
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, body) = match (method, path) {
        ("GET", "/healthz") if draining.load(Ordering::Relaxed) => {
            ("503 Service Unavailable", "draining\n".to_owned())
        }
        ("GET", "/healthz") => ("200 OK", "ok\n".to_owned()),
        ("GET", "/metrics") => ("200 OK", metrics.render()),
        ("GET", _) => ("404 Not Found", "not found\n".to_owned()),
        _ => ("405 Method Not Allowed", "GET only\n".to_owned()),
    };
    let content_type = if path == "/metrics" {
        "text/plain; version=0.0.4"
    } else {
        "text/plain"
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
