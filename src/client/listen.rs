//! Listener mode: a local port where every accepted TCP connection becomes its own tunnel.
//!
//! The accept loop only accepts and spawns; dialing the relay happens in the spawned task, so a
//! slow or failing tunnel never holds up the next connection, and a tunnel's failure is logged
//! and counted without touching the listener. Shutdown: stop accepting, cancel every tunnel
//! (each closes its WebSocket and delivers what it already received), wait a bounded time.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use super::error::Error;
use super::tunnel::TunnelConfig;
use crate::session::local::{TcpInput, TcpOutput};
use crate::session::pump::Session;
use crate::session::state::DEFAULT_MAX_UNACKED;

/// How long shutdown waits for live tunnels to close (each needs one close exchange with the
/// relay, bounded by the session's own close wait).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The `--listen` address: `127.0.0.1:0`, `[::1]:0`, `localhost:N`, or a bare port (on
/// 127.0.0.1).
///
/// # Errors
/// A usage error naming the text and the forms it may take.
pub fn parse_addr(text: &str) -> Result<SocketAddr, Error> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let port = text.strip_prefix("localhost:").unwrap_or(text);
    port.parse::<u16>()
        .map(|port| SocketAddr::new(localhost, port))
        .map_err(|_| {
            Error::usage(format!(
                "--listen {text:?} is not an address: use IP:PORT, such as 127.0.0.1:0 or [::1]:0 (port 0 picks a free port)"
            ))
        })
}

/// What a listener did, for the summary line at exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Connections accepted.
    pub accepted: u64,
    /// Tunnels that ended in order.
    pub finished: u64,
    /// Tunnels that failed (each was logged).
    pub failed: u64,
    /// Tunnels that were still open when shutdown began.
    pub closed_at_shutdown: u64,
    /// Tunnels that did not close within [`SHUTDOWN_GRACE`].
    pub abandoned: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connections: {} finished, {} failed, {} closed at shutdown",
            self.accepted, self.finished, self.failed, self.closed_at_shutdown
        )?;
        if self.abandoned > 0 {
            write!(
                f,
                ", {} abandoned after {}s",
                self.abandoned,
                SHUTDOWN_GRACE.as_secs()
            )?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Counters {
    finished: AtomicU64,
    failed: AtomicU64,
    at_shutdown: AtomicU64,
}

/// Serves `listener` until `cancel` fires: one tunnel per accepted connection.
pub async fn run(
    config: Arc<TunnelConfig>,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Summary {
    let tracker = TaskTracker::new();
    let counters = Arc::new(Counters::default());
    let mut accepted = 0u64;
    loop {
        // `accept` is cancel safe: a connection not yet returned stays in the kernel's queue.
        let (stream, peer) = tokio::select! {
            result = listener.accept() => match result {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accepting a local connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = cancel.cancelled() => break,
        };
        accepted += 1;
        let (config, counters, cancel) = (config.clone(), counters.clone(), cancel.child_token());
        tracker.spawn(
            async move { serve(&config, stream, peer, &counters, &cancel).await }
                .instrument(info_span!("conn", %peer)),
        );
    }
    drop(listener);
    tracker.close();
    let open = tracker.len() as u64;
    let abandoned = match tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await {
        Ok(()) => 0,
        Err(_) => tracker.len() as u64,
    };
    Summary {
        accepted,
        finished: counters.finished.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        closed_at_shutdown: counters
            .at_shutdown
            .load(Ordering::Relaxed)
            .max(open - abandoned),
        abandoned,
    }
}

async fn serve(
    config: &TunnelConfig,
    stream: TcpStream,
    peer: SocketAddr,
    counters: &Counters,
    cancel: &CancellationToken,
) {
    // Interactive protocols send small writes; Nagle's delay would add latency to each.
    let _ = stream.set_nodelay(true);
    info!("connection accepted");
    let (read, write) = stream.into_split();
    let mut session = Session::new(
        TcpInput::new(read),
        TcpOutput::new(write),
        DEFAULT_MAX_UNACKED,
    );
    let result = config.run(&mut session, cancel).await;
    let (sent, received) = (session.state.sent(), session.state.received());
    match result {
        Ok(()) if cancel.is_cancelled() => {
            counters.at_shutdown.fetch_add(1, Ordering::Relaxed);
            info!(sent, received, "closed at shutdown");
        }
        Ok(()) => {
            counters.finished.fetch_add(1, Ordering::Relaxed);
            info!(sent, received, "connection closed");
        }
        Err(e) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, sent, received, "tunnel failed: {e}");
        }
    }
}
