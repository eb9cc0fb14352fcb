//! The relay and its listener: the state a reload replaces, the accept loop, each
//! connection's chain (handshake, then a new session or a resume), and the drain at the end,
//! parked sessions included.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use super::admission::{Budget, HandshakeGate, HandshakeSlot, PrincipalGate, address_key};
use super::audit::AuditLog;
use super::config::RelayConfig;
use super::handshake::{self, Asked, Caller, ServerSocket};
use super::metrics::Metrics;
use super::report::Outcome;
use super::sessions::{Registry, Standing};
use super::state::State;
use super::{attach, connect, resume};
use crate::close;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// After the drain, how long closing the remaining tunnels may take.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running relay.
pub struct Relay {
    state: RwLock<Arc<State>>,
    pub(super) sessions: Arc<Registry>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) audit: Arc<AuditLog>,
    pub(super) draining: Arc<AtomicBool>,
    /// Tunnels per principal, attached or parked.
    pub(super) principals: Arc<PrincipalGate>,
    handshakes: Arc<HandshakeGate>,
    pub(super) budget: Arc<Budget>,
    /// Resume-window timers of parked sessions; stopped and awaited at shutdown.
    pub(super) timers: TaskTracker,
    pub(super) timers_stop: CancellationToken,
    scheme: &'static str,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Prepares a relay: certificate, authentication methods (JWKS URLs are fetched now), the
    /// audit log.
    ///
    /// # Errors
    /// When any of those cannot be set up.
    pub async fn new(config: RelayConfig) -> anyhow::Result<Relay> {
        let audit = AuditLog::open(config.audit_log.as_deref())?;
        let state = State::build(config).await?;
        Ok(Relay {
            scheme: if state.tls.is_some() { "wss" } else { "ws" },
            budget: Budget::new(state.budget_bytes()),
            state: RwLock::new(Arc::new(state)),
            sessions: Arc::default(),
            metrics: Arc::default(),
            audit: Arc::new(audit),
            draining: Arc::default(),
            principals: Arc::default(),
            handshakes: Arc::default(),
            timers: TaskTracker::new(),
            timers_stop: CancellationToken::new(),
        })
    }

    /// The URL scheme clients use: `wss` with TLS, else `ws`.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// The counters, for the admin endpoint.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Set while draining, for the admin endpoint's health check.
    pub fn draining(&self) -> Arc<AtomicBool> {
        self.draining.clone()
    }

    /// The configuration in force.
    pub(super) fn state(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the configuration and certificate. On error the running configuration stays.
    /// Sessions the new configuration no longer allows, because their credential (static
    /// token, JWT issuer, token-info) or their binding is gone, are closed with 4033
    /// (continuous authorization). Returns how many were closed.
    ///
    /// # Errors
    /// When the new configuration does not load; nothing changes then.
    pub async fn reload(&self, path: &Path) -> anyhow::Result<usize> {
        let config = RelayConfig::load(path)?;
        let state = Arc::new(State::build(config).await?);
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state.clone();
        self.budget.set_limit(state.budget_bytes());
        // Sessions opened from here on are decided against the new state (see
        // `handshake::run`), so one pass over those already known covers every session.
        let mut doomed = Vec::new();
        let mut reasons = HashMap::new();
        for Standing {
            sid,
            grant,
            credential,
        } in self.sessions.standings()
        {
            if let Err(reason) = state.still_allowed(&grant, &credential).await {
                reasons.insert(sid.clone(), reason);
                doomed.push(sid);
            }
        }
        let (attached, parked) = self.sessions.revoke(&doomed);
        for p in &parked {
            let reason = reasons
                .get(&p.info.sid)
                .map_or("revoked by reload", String::as_str);
            self.report(Outcome::Closed {
                parked: p,
                code: close::NOT_AUTHORIZED,
                detail: &format!("revoked by reload: {reason}"),
                result: "revoked",
            });
        }
        Ok(attached + parked.len())
    }
}

/// Serves clients on `listener`. When `stop` fires the relay drains: `/healthz` turns 503,
/// new sessions are refused (reconnects still work) until live sessions end or the drain time
/// passes; then the rest are closed within [`SHUTDOWN_GRACE`].
pub async fn serve(relay: Arc<Relay>, listener: TcpListener, stop: CancellationToken) {
    let tracker = TaskTracker::new();
    let sessions_cancel = CancellationToken::new();
    let max = relay.state().config.limits.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let drain = drain(&relay, stop);
    tokio::pin!(drain);
    loop {
        // Wait for a free slot before accepting, so excess clients queue in the kernel.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut drain => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut drain => break,
        };
        let Ok(slot) = handshake_slot(&relay, peer) else {
            continue;
        };
        let relay = relay.clone();
        let cancel = sessions_cancel.child_token();
        // The handshake runs in the spawned task, never in this loop: a slow client must not
        // hold up others.
        tracker.spawn(
            async move {
                handle(&relay, stream, peer, slot, &cancel).await;
                drop(permit);
            }
            .instrument(info_span!("conn", %peer)),
        );
    }
    tracker.close();
    sessions_cancel.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            open = tracker.len(),
            "shutdown grace ended with tunnels still open"
        );
    }
    // No connection task is left to park a session: end those still waiting for their
    // clients, so each gets its close line and leaves the open-session count.
    relay.timers_stop.cancel();
    relay.timers.close();
    for parked in relay.sessions.take_parked() {
        relay.report(Outcome::Closed {
            parked: &parked,
            code: close::GOING_AWAY,
            detail: "relay shut down",
            result: "shutdown",
        });
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, relay.timers.wait()).await;
}

/// Once `stop` fires: marks the relay draining, then waits until no session is left or the
/// drain time has passed.
async fn drain(relay: &Relay, stop: CancellationToken) {
    stop.cancelled().await;
    relay.draining.store(true, Ordering::SeqCst);
    let limit = Duration::from_secs(relay.state().config.limits.drain_secs);
    info!(
        open = relay.sessions.len(),
        drain_secs = limit.as_secs(),
        "draining"
    );
    let deadline = Instant::now() + limit;
    while !relay.sessions.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A new connection's place among its address's unfinished handshakes (`None`: a trusted
/// proxy, exempt), or `Err` when the address already holds its limit and the connection is
/// to be closed at once.
fn handshake_slot(relay: &Relay, peer: SocketAddr) -> Result<Option<HandshakeSlot>, ()> {
    // One address may hold only so many unfinished handshakes, so idle sockets from one
    // source cannot take every slot. Trusted proxies carry many clients and are exempt.
    let state = relay.state();
    if state.is_trusted_proxy(peer.ip()) {
        return Ok(None);
    }
    let limit = state.config.limits.max_handshakes_per_address;
    match relay.handshakes.try_enter(address_key(peer.ip()), limit) {
        Some(slot) => Ok(Some(slot)),
        None => {
            relay.report(Outcome::HandshakesPerAddress { peer, limit });
            Err(())
        }
    }
}

/// One connection's life: the handshake, then a new session or a resume.
async fn handle(
    relay: &Arc<Relay>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Option<HandshakeSlot>,
    cancel: &CancellationToken,
) {
    // Each phase is its own heap future, freed when it ends: the task then holds only what
    // the phase running now needs (the handshake's hyper and TLS state is larger than the
    // session's, and a single future is as large as its largest phase for its whole life).
    // The upgraded socket and caller go straight into the session's future, never into a
    // local of this one (which would keep room for them across the session's await).
    let session = Box::pin(handshake::run(relay, stream, peer.ip(), slot))
        .await
        .map(|upgraded| session(relay, upgraded, cancel));
    if let Some(session) = session {
        session.await;
    }
}

/// The session phase of a connection, as one heap future: a new session or a resume, then
/// its attachment. Opening is boxed apart too, so its locals are gone while the tunnel runs.
fn session<'a>(
    relay: &'a Arc<Relay>,
    (ws, caller, state): (ServerSocket, Caller, Arc<State>),
    cancel: &'a CancellationToken,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        let opening = match caller.asked {
            Asked::Connect { .. } => Box::pin(connect::open(relay, &state, ws, caller)).await,
            Asked::Reconnect { .. } => Box::pin(resume::reconnect(relay, &state, ws, caller)).await,
        };
        if let Some(drive) = opening.map(|attachment| attach::drive(relay, attachment, cancel)) {
            drive.await;
        }
    })
}
