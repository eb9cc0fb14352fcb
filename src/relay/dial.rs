//! Reaching a backend: resolving a listed host name, and dialling the addresses
//! `locate::addresses` allowed, in order, until one answers.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

/// How long resolving a listed host name may take; a name that does not resolve in time is
/// treated as one that does not resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Every address `host` resolves to, or none when it does not resolve in time.
pub(super) async fn resolve(host: &str, port: u16) -> Vec<IpAddr> {
    let resolved =
        tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await;
    match resolved {
        Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
        _ => Vec::new(),
    }
}

/// Connects to `port` on the first of `addrs` that answers within `limit` each.
///
/// # Errors
/// The last address's failure, for the audit log.
pub(super) async fn dial(
    addrs: &[IpAddr],
    port: u16,
    limit: Duration,
) -> Result<TcpStream, String> {
    let mut last_error = String::from("no address");
    for ip in addrs {
        match tokio::time::timeout(limit, TcpStream::connect(SocketAddr::new(*ip, port))).await {
            Ok(Ok(backend)) => {
                let _ = backend.set_nodelay(true);
                return Ok(backend);
            }
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = "connect timed out".into(),
        }
    }
    Err(last_error)
}
