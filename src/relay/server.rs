//! Accepting clients: TLS, reading and authenticating the upgrade request, the policy and
//! inventory checks, the backend dial, one pump per attachment, resume, reload and drain.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::admission::{Budget, HandshakeGate, HandshakeSlot, Reservation};
use super::audit::{AuditLog, Event};
use super::authn::{self, AuthError, Authenticator, Credential, Identity};
use super::config::{RelayConfig, SESSION_OVERHEAD_BYTES};
use super::http::HttpClient;
use super::inventory::HostLookup;
use super::jwt::JwtVerifier;
use super::metrics::Metrics;
use super::policy::{self, Decision};
use super::sessions::RelaySession;
use super::sessions::{Grant, Parked, Registry, SessionInfo, Standing};
use super::tokeninfo::TokenInfo;
use super::upgrade::{self, HeadError, Prefixed};
use super::watch::{Flow, Stall, Watched};
use crate::close;
use crate::frame::Frame;
use crate::session::local::{TcpInput, TcpOutput};
use crate::session::pump::{
    self, Attach, CLOSE_WAIT, Detach, POLICY_VIOLATION, PumpEnd, Role, Session,
};
use crate::session::state::ACK_THRESHOLD;
use crate::target::{self, Target};
use crate::wire::{SUBPROTOCOL, websocket_config};

/// How long a reconnect waits for the WebSocket that still holds its session to let go.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);
/// How long to wait for the backend to take the bytes a client sent before it closed.
const BACKEND_DRAIN_WAIT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// After a WebSocket dropped without a close, how long the backend may take to close too for
/// the session to count as complete rather than lost (see `finished_without_close`).
const COMPLETE_WAIT: Duration = Duration::from_secs(1);
/// Audit reason of a session that ended without a close after its backend closed.
pub const COMPLETE_WITHOUT_CLOSE: &str = "complete; client left without a close";
/// How often an attachment is checked for a stall (see `watch::Stall`).
const STALL_CHECK_EVERY: Duration = Duration::from_secs(1);
/// After the drain, how long closing the remaining tunnels may take.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What a reload replaces: configuration, TLS, authentication.
struct State {
    config: RelayConfig,
    tls: Option<TlsAcceptor>,
    auth: Authenticator,
}

impl State {
    /// What one session reserves from the memory budget.
    fn session_reservation(&self) -> usize {
        self.config.limits.max_unacked_bytes + SESSION_OVERHEAD_BYTES
    }

    fn budget_bytes(&self) -> usize {
        self.config
            .limits
            .memory_budget_mib
            .saturating_mul(1024 * 1024)
    }

    fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.config.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// Whether a live session may go on under this configuration: its credential is still
    /// accepted and a binding still allows it. `Ok` carries when it must be decided again (a
    /// binding's expiry); `Err` the reason it may not.
    async fn still_allowed(
        &self,
        grant: &Grant,
        credential: &Credential,
        client_cert: bool,
    ) -> Result<Option<SystemTime>, String> {
        if !self.auth.still_accepts(credential, &grant.principal).await {
            return Err("credential no longer accepted".to_owned());
        }
        let req = policy::Request {
            principal: &grant.principal,
            target: &grant.target,
            port: grant.port,
            group: grant.group.as_deref(),
            client_cert,
            now: SystemTime::now(),
        };
        match policy::decide(&self.config.policy, &req) {
            Decision::Allow { until, .. } => Ok(until),
            Decision::Deny { reason } => Err(reason),
        }
    }

    async fn build(config: RelayConfig) -> anyhow::Result<State> {
        let tls = match &config.tls {
            Some((cert, key)) => Some(TlsAcceptor::from(super::tls::server_config(
                cert,
                key,
                config.client_ca.as_ref(),
            )?)),
            None => None,
        };
        let needs_http =
            config.tokeninfo.is_some() || config.jwt.iter().any(|j| j.jwks_url.is_some());
        let http = if needs_http {
            Some(Arc::new(HttpClient::new(
                config.outbound_ca_file.as_deref(),
                Duration::from_secs(10),
            )?))
        } else {
            None
        };
        let jwt = if config.jwt.is_empty() {
            None
        } else {
            Some(JwtVerifier::new(config.jwt.clone(), http.clone()).await?)
        };
        let tokeninfo = match (&config.tokeninfo, &http) {
            (Some(t), Some(http)) => Some(TokenInfo::new(t, http.clone()).context("[tokeninfo]")?),
            _ => None,
        };
        let mut config = config;
        let tokens = std::mem::take(&mut config.tokens);
        Ok(State {
            auth: Authenticator {
                tokens,
                jwt,
                tokeninfo,
            },
            tls,
            config,
        })
    }
}

/// A running relay.
pub struct Relay {
    state: RwLock<Arc<State>>,
    sessions: Arc<Registry>,
    metrics: Arc<Metrics>,
    audit: Arc<AuditLog>,
    draining: Arc<AtomicBool>,
    per_principal: Arc<Mutex<HashMap<String, usize>>>,
    handshakes: Arc<HandshakeGate>,
    budget: Arc<Budget>,
    /// Resume-window timers of parked sessions; stopped and awaited at shutdown.
    timers: TaskTracker,
    timers_stop: CancellationToken,
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
            per_principal: Arc::default(),
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

    fn state(&self) -> Arc<State> {
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
        // Sessions opened from here on are decided against the new state (see `handle`), so
        // one pass over those already known covers every session.
        let mut doomed = Vec::new();
        let mut reasons = HashMap::new();
        for Standing {
            sid,
            grant,
            credential,
        } in self.sessions.standings()
        {
            if let Err(reason) = state
                .still_allowed(&grant, &credential, grant.client_cert)
                .await
            {
                reasons.insert(sid.clone(), reason);
                doomed.push(sid);
            }
        }
        let (attached, parked) = self.sessions.revoke(&doomed);
        for p in &parked {
            let reason = reasons
                .get(&p.info.sid)
                .map_or("revoked by reload", String::as_str);
            self.end_session(
                p,
                close::NOT_AUTHORIZED,
                &format!("revoked by reload: {reason}"),
                "revoked",
            );
        }
        Ok(attached + parked.len())
    }

    fn end_session(&self, parked: &Parked, code: u16, detail: &str, result: &'static str) {
        let info = &parked.info;
        let (from, to) = (parked.session.state.received(), parked.session.state.sent());
        self.metrics.session_closed(result, from, to);
        release_principal(self, &info.principal);
        let duration = info.started.elapsed().as_millis() as u64;
        info!(principal = %info.principal, target = %info.target, sid = %info.sid, code, detail = %detail, resumes = info.resumes, bytes_from_client = from, bytes_to_client = to, duration_ms = duration, "close");
        self.audit.record(&Event {
            event: "close",
            principal: Some(&info.principal),
            target: Some(&info.target),
            port: Some(info.port),
            sid: Some(&info.sid),
            reason: Some(detail),
            code: Some(code),
            bytes_from_client: Some(from),
            bytes_to_client: Some(to),
            duration_ms: Some(duration),
            resumes: Some(info.resumes),
            ..Event::default()
        });
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
    let drain = {
        let relay = relay.clone();
        let stop = stop.clone();
        async move {
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
    };
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
        // One address may hold only so many unfinished handshakes: beyond that its new
        // connections are closed at once, so idle sockets from one source cannot take every
        // slot. Trusted proxies carry many clients and are exempt.
        let state = relay.state();
        let slot = if state.is_trusted_proxy(peer.ip()) {
            None
        } else {
            let limit = state.config.limits.max_handshakes_per_address;
            match relay.handshakes.try_enter(peer.ip(), limit) {
                Some(slot) => Some(slot),
                None => {
                    relay.metrics.refused("handshakes_per_address");
                    debug!(%peer, limit, "too many unfinished handshakes from this address");
                    continue;
                }
            }
        };
        drop(state);
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
        relay.end_session(&parked, 1001, "relay shut down", "shutdown");
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, relay.timers.wait()).await;
}

/// What the upgrade request asked for, once authenticated.
enum Asked {
    Connect { target: Target, port: u16 },
    Reconnect { sid: String, ack: u64 },
}

type ServerStream = Prefixed<Either<tokio_rustls::server::TlsStream<TcpStream>, TcpStream>>;
type ServerSocket = WebSocketStream<ServerStream>;

/// Everything known about a caller after the upgrade.
struct Caller {
    identity: Identity,
    /// The bearer token, kept only until the configuration in force after the upgrade has
    /// accepted it too; never logged.
    token: String,
    credential: Credential,
    client: IpAddr,
    client_cert: bool,
    asked: Asked,
    /// A new session's share of the memory budget (connects only).
    reservation: Option<Reservation>,
    /// The client says it is gcloud, which never closes its WebSocket (see
    /// `finished_without_close`).
    is_gcloud: bool,
}

/// Whether a `User-Agent` is gcloud's (`gcloud/528.0.0 command/gcloud.compute.start-iap-tunnel …`).
fn is_gcloud(user_agent: &str) -> bool {
    user_agent.starts_with("gcloud/") || user_agent.contains("command/gcloud.")
}

/// The client's address: the peer, or the nearest untrusted address in `X-Forwarded-For`
/// when the peer is a trusted proxy.
fn client_address(state: &State, peer: IpAddr, forwarded: Option<&str>) -> IpAddr {
    let trusted = |ip: IpAddr| state.config.trusted_proxies.iter().any(|c| c.contains(ip));
    if !trusted(peer) {
        return peer;
    }
    let Some(list) = forwarded else { return peer };
    let mut client = peer;
    for hop in list.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted(ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

async fn upgrade(
    relay: &Relay,
    state: &State,
    stream: TcpStream,
    peer: IpAddr,
) -> Result<(ServerSocket, Caller), ()> {
    let _ = stream.set_nodelay(true);
    // An honest client speaks at once (its TLS ClientHello, or the request line). A silent
    // socket is dropped after this shorter limit instead of the whole handshake limit.
    // With a first-byte limit no shorter than the whole handshake's, the latter applies.
    let limits = &state.config.limits;
    let first_byte = Duration::from_secs(limits.first_byte_timeout_secs);
    let silent = if limits.first_byte_timeout_secs < limits.handshake_timeout_secs {
        tokio::time::timeout(first_byte, stream.peek(&mut [0u8; 1])).await
    } else {
        Ok(Ok(1))
    };
    match silent {
        Ok(Ok(n)) if n > 0 => {}
        Ok(_) => return Err(()),
        Err(_) => {
            // Debug, not info: under a flood of silent sockets one line each would turn the
            // attack into log volume. The metric counts them.
            relay.metrics.refused("silent");
            debug!(
                timeout_secs = first_byte.as_secs(),
                "no first byte in time; connection dropped"
            );
            return Err(());
        }
    }
    let stream = match &state.tls {
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(tls) => Either::Left(tls),
            Err(e) => {
                info!(error = %e, "TLS handshake failed");
                return Err(());
            }
        },
        None => Either::Right(stream),
    };
    let client_cert = super::tls::stream_has_client_cert(&stream);
    let mut stream = stream;
    let (head, bytes) = match upgrade::read_head(&mut stream).await {
        Ok(read) => read,
        Err(HeadError::TooLarge) => {
            upgrade::refuse(&mut stream, 431, "Request Header Fields Too Large", None).await;
            return Err(());
        }
        Err(HeadError::Malformed) => {
            upgrade::refuse(&mut stream, 400, "Bad Request", None).await;
            return Err(());
        }
        Err(HeadError::Io(_)) => return Err(()),
    };
    let client = client_address(state, peer, head.forwarded_for.as_deref());
    let fail = |reason: &str, status: u16| {
        info!(%client, status, reason, "upgrade refused");
    };
    if head.path != "/v4/connect" && head.path != "/v4/reconnect" {
        fail("unknown path", 404);
        upgrade::refuse(&mut stream, 404, "Not Found", None).await;
        return Err(());
    }
    let token = head
        .authorization
        .as_deref()
        .and_then(authn::bearer)
        .unwrap_or_default()
        .to_owned();
    let identity = match token.as_str() {
        "" => Err(AuthError::Missing),
        token => state.auth.authenticate(token, client).await,
    };
    // A principal is shown in logs and matched against bindings: one carrying controls or
    // invisible marks (an email claim with a newline) is no identity at all.
    let identity = identity.and_then(|id| {
        if crate::logging::is_plain(&id.principal) {
            Ok(id)
        } else {
            Err(AuthError::NoIdentity)
        }
    });
    let identity = match identity {
        Ok(identity) => identity,
        Err(e) => {
            relay.metrics.auth_failed(e.reason());
            relay.audit.record(&Event {
                event: "auth_failure",
                client: Some(client),
                reason: Some(&e.to_string()),
                ..Event::default()
            });
            fail(e.reason(), 401);
            upgrade::refuse(
                &mut stream,
                401,
                "Unauthorized",
                Some("WWW-Authenticate: Bearer"),
            )
            .await;
            return Err(());
        }
    };
    let asked = if head.path == "/v4/connect" {
        target::parse_connect_query(&head.query)
            .map(|(target, port)| Asked::Connect { target, port })
    } else {
        target::parse_reconnect_query(&head.query).map(|q| Asked::Reconnect {
            sid: q.sid,
            ack: q.ack,
        })
    };
    let asked = match asked {
        Ok(a) => a,
        Err(e) => {
            fail(&e.to_string(), 400);
            upgrade::refuse(&mut stream, 400, "Bad Request", None).await;
            return Err(());
        }
    };
    if matches!(asked, Asked::Connect { .. }) {
        if relay.draining.load(Ordering::SeqCst) {
            fail("draining", 503);
            upgrade::refuse(
                &mut stream,
                503,
                "Service Unavailable",
                Some("Retry-After: 1"),
            )
            .await;
            return Err(());
        }
        let limit = state.config.limits.max_connections_per_principal;
        let over = {
            let mut counts = relay
                .per_principal
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let count = counts.entry(identity.principal.clone()).or_default();
            // Counted from here; every path that does not open a session gives it back.
            let over = *count >= limit;
            if !over {
                *count += 1;
            }
            over
        };
        if over {
            relay.metrics.refused("over_principal_limit");
            relay.audit.record(&Event {
                event: "deny",
                principal: Some(&identity.principal),
                client: Some(client),
                reason: Some("too many tunnels for this principal"),
                ..Event::default()
            });
            fail("too many tunnels for this principal", 429);
            upgrade::refuse(&mut stream, 429, "Too Many Requests", None).await;
            return Err(());
        }
    }
    let reservation = match asked {
        Asked::Connect { .. } => match relay.budget.try_reserve(state.session_reservation()) {
            Some(r) => Some(r),
            None => {
                const REASON: &str = "relay memory budget reached";
                release_principal(relay, &identity.principal);
                relay.metrics.refused("memory_budget");
                warn!(
                    reserved_mib = relay.budget.reserved() / (1024 * 1024),
                    "{REASON}; new tunnel refused"
                );
                relay.audit.record(&Event {
                    event: "deny",
                    principal: Some(&identity.principal),
                    client: Some(client),
                    reason: Some(REASON),
                    ..Event::default()
                });
                fail(REASON, 503);
                upgrade::refuse(
                    &mut stream,
                    503,
                    "Service Unavailable",
                    Some("Retry-After: 5"),
                )
                .await;
                return Err(());
            }
        },
        Asked::Reconnect { .. } => None,
    };
    // tungstenite fixes the callback's error type; this callback never fails.
    #[allow(clippy::result_large_err)]
    let echo_subprotocol = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let offered = req
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case(SUBPROTOCOL));
        if offered {
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        Ok(resp)
    };
    let caller = Caller {
        credential: Credential::of(&identity, &token),
        identity,
        token,
        client,
        client_cert,
        asked,
        reservation,
        is_gcloud: head.user_agent.as_deref().is_some_and(is_gcloud),
    };
    match tokio_tungstenite::accept_hdr_async_with_config(
        Prefixed::new(bytes, stream),
        echo_subprotocol,
        Some(websocket_config()),
    )
    .await
    {
        Ok(ws) => Ok((ws, caller)),
        Err(e) => {
            info!(error = %e, "WebSocket upgrade failed");
            if matches!(caller.asked, Asked::Connect { .. }) {
                release_principal(relay, &caller.identity.principal);
            }
            Err(())
        }
    }
}

fn release_principal(relay: &Relay, principal: &str) {
    let mut counts = relay
        .per_principal
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(n) = counts.get_mut(principal) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(principal);
        }
    }
}

async fn close_with<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, code: u16) {
    let frame = CloseFrame {
        code: code.into(),
        reason: close::reason_text(code).into(),
    };
    // Send the close and wait briefly for the reply so the client sees a clean close.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = ws.close(Some(frame)).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// A session id: `NODE.` (when the relay has a node id) and 144 random bits in hex. The node
/// part lets a load balancer route a reconnect to the node holding the session; the random
/// part makes ids unguessable.
fn new_session_id(node_id: Option<&str>) -> String {
    let mut bytes = [0u8; 18];
    // SystemRandom only fails when the OS has no entropy source at all.
    #[allow(clippy::expect_used)]
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the operating system's random source is available");
    let random: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match node_id {
        Some(node) => format!("{node}.{random}"),
        None => random,
    }
}

async fn handle(
    relay: &Arc<Relay>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Option<HandshakeSlot>,
    cancel: &CancellationToken,
) {
    let accepted_with = relay.state();
    let started = Instant::now();
    let limit = Duration::from_secs(accepted_with.config.limits.handshake_timeout_secs);
    let upgraded = tokio::time::timeout(limit, upgrade(relay, &accepted_with, stream, peer.ip()));
    let (mut ws, mut caller) = match upgraded.await {
        Ok(Ok(upgraded)) => upgraded,
        Ok(Err(())) => return,
        Err(_) => {
            info!(timeout_secs = limit.as_secs(), "handshake timed out");
            return;
        }
    };
    drop(slot);
    // Authorization is decided against the configuration in force now that the handshake is
    // done. A reload during the handshake has already swept the live sessions, so this caller
    // must pass the new configuration's authentication too.
    let state = relay.state();
    if !Arc::ptr_eq(&state, &accepted_with) {
        let again = state.auth.authenticate(&caller.token, caller.client).await;
        if !again
            .as_ref()
            .is_ok_and(|id| id.principal == caller.identity.principal)
        {
            let reason = "credential revoked by reload during the handshake";
            relay.metrics.refused("revoked");
            info!(principal = %caller.identity.principal, reason, "refused");
            relay.audit.record(&Event {
                event: "deny",
                principal: Some(&caller.identity.principal),
                client: Some(caller.client),
                reason: Some(reason),
                code: Some(close::NOT_AUTHORIZED),
                ..Event::default()
            });
            if matches!(caller.asked, Asked::Connect { .. }) {
                release_principal(relay, &caller.identity.principal);
            }
            close_with(&mut ws, close::NOT_AUTHORIZED).await;
            return;
        }
    }
    caller.token = String::new();
    match &caller.asked {
        Asked::Connect { target, port } => {
            let (target, port) = (target.clone(), *port);
            let principal = caller.identity.principal.clone();
            let opened = connect(
                relay,
                &state,
                ws,
                &mut caller,
                target,
                port,
                started,
                cancel,
            )
            .await;
            if !opened {
                release_principal(relay, &principal);
            }
        }
        Asked::Reconnect { sid, ack } => {
            let (sid, ack) = (sid.clone(), *ack);
            reconnect(relay, &state, ws, &caller, sid, ack, cancel).await;
        }
    }
}

/// Opens a session. Returns whether one was opened (and now counts for the principal).
#[allow(clippy::too_many_arguments)]
async fn connect(
    relay: &Arc<Relay>,
    state: &Arc<State>,
    mut ws: ServerSocket,
    caller: &mut Caller,
    target: Target,
    port: u16,
    started: Instant,
    cancel: &CancellationToken,
) -> bool {
    let principal = caller.identity.principal.as_str();
    let described = target.describe(port);
    let Some(reservation) = caller.reservation.take() else {
        return false;
    };
    let refuse = |code: u16, reason: &str, result: &'static str| {
        relay.metrics.refused(result);
        info!(%principal, target = %described, %reason, code, "refused");
        relay.audit.record(&Event {
            event: "deny",
            principal: Some(principal),
            auth: Some(caller.identity.method),
            client: Some(caller.client),
            target: Some(&described),
            port: Some(port),
            reason: Some(reason),
            code: Some(code),
            ..Event::default()
        });
    };
    // Where the target leads, checked before the policy only as far as naming the group a
    // host-mode target is in; nothing is dialled before the policy allows it.
    let (group, addrs) = match &target {
        Target::Instance { .. } => (
            None,
            state.config.inventory.resolve(&target).map(|ip| vec![ip]),
        ),
        Target::Host {
            project,
            region,
            host,
            dest_group,
            ..
        } => match state
            .config
            .inventory
            .locate_host(project, region, host, dest_group.as_deref())
        {
            HostLookup::Address { group, addr } => (Some(group), Some(vec![addr])),
            HostLookup::Name { group } => (Some(group), Some(Vec::new())),
            HostLookup::UnknownGroup => (None, None),
            HostLookup::Outside => {
                refuse(
                    close::NOT_AUTHORIZED,
                    "host is outside every destination group",
                    "denied",
                );
                close_with(&mut ws, close::NOT_AUTHORIZED).await;
                return false;
            }
        },
    };
    let req = policy::Request {
        principal,
        target: &target,
        port,
        group: group.as_deref(),
        client_cert: caller.client_cert,
        now: SystemTime::now(),
    };
    let (binding, until) = match policy::decide(&state.config.policy, &req) {
        Decision::Allow { binding, until } => (binding, until),
        Decision::Deny { reason } => {
            refuse(close::NOT_AUTHORIZED, &reason, "denied");
            close_with(&mut ws, close::NOT_AUTHORIZED).await;
            return false;
        }
    };
    let Some(mut addrs) = addrs else {
        refuse(close::LOOKUP_FAILED, "target not in inventory", "not_found");
        close_with(&mut ws, close::LOOKUP_FAILED).await;
        return false;
    };
    if let (Target::Host { host, .. }, Some(group_name), true) = (&target, &group, addrs.is_empty())
    {
        // A listed name: resolve it, and keep only addresses the group admits, so DNS cannot
        // steer the relay outside the group. The checked address is the one dialled.
        let group = state
            .config
            .inventory
            .group(target.project(), region_of(&target), group_name);
        let resolved = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await;
        let all: Vec<IpAddr> = match resolved {
            Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
            _ => Vec::new(),
        };
        addrs = all
            .iter()
            .copied()
            .filter(|ip| group.is_some_and(|g| g.admits(*ip)))
            .collect();
        if addrs.is_empty() {
            let reason = if all.is_empty() {
                "host name does not resolve"
            } else {
                "host name resolves outside the destination group"
            };
            refuse(close::NOT_AUTHORIZED, reason, "denied");
            close_with(&mut ws, close::NOT_AUTHORIZED).await;
            return false;
        }
    }
    let dial_limit = Duration::from_secs(state.config.limits.backend_connect_timeout_secs);
    let mut backend = None;
    let mut last_error = String::from("no address");
    for ip in &addrs {
        match tokio::time::timeout(dial_limit, TcpStream::connect(SocketAddr::new(*ip, port))).await
        {
            Ok(Ok(s)) => {
                backend = Some(s);
                break;
            }
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = "connect timed out".into(),
        }
    }
    let Some(backend) = backend else {
        refuse(
            close::FAILED_TO_CONNECT_TO_BACKEND,
            &format!("backend: {last_error}"),
            "backend_failed",
        );
        close_with(&mut ws, close::FAILED_TO_CONNECT_TO_BACKEND).await;
        return false;
    };
    let _ = backend.set_nodelay(true);
    let sid = new_session_id(state.config.node_id.as_deref());
    if let Err(e) = ws
        .send(Message::Binary(
            Frame::ConnectSuccessSid(sid.as_bytes()).to_bytes(),
        ))
        .await
    {
        info!(%principal, sid = %sid, error = %e, "client went away before the session started");
        return false;
    }
    relay.metrics.handshake(started.elapsed());
    relay.metrics.session_opened();
    info!(%principal, target = %described, %binding, sid = %sid, "connect");
    relay.audit.record(&Event {
        event: "connect",
        principal: Some(principal),
        auth: Some(caller.identity.method),
        client: Some(caller.client),
        target: Some(&described),
        port: Some(port),
        sid: Some(&sid),
        binding: Some(&binding),
        ..Event::default()
    });
    let grant = Grant {
        principal: principal.to_owned(),
        target,
        port,
        group,
        client_cert: caller.client_cert,
    };
    let detach = relay
        .sessions
        .attach_new(&sid, grant.clone(), caller.credential.clone());
    let (read, write) = backend.into_split();
    let parked = Parked {
        session: Session::new(
            TcpInput::new(read),
            TcpOutput::new(write),
            state.config.limits.max_unacked_bytes,
        ),
        info: SessionInfo {
            sid,
            principal: principal.to_owned(),
            target: described,
            port,
            started: Instant::now(),
            resumes: 0,
        },
        reservation,
    };
    let lease = Lease {
        grant,
        credential: caller.credential.clone(),
        credential_expires: caller.identity.expires_at,
        authorized_until: until,
        decided_with: state.clone(),
        is_gcloud: caller.is_gcloud,
    };
    drive(relay, state, ws, parked, &detach, Vec::new(), lease, cancel).await;
    true
}

/// Why a session may run, and until when.
struct Lease {
    grant: Grant,
    credential: Credential,
    /// When the token expires: the client is asked for a fresh one (4004).
    credential_expires: Option<SystemTime>,
    /// When the binding that allowed it expires: it is decided again then.
    authorized_until: Option<SystemTime>,
    /// The configuration the session was last decided with. A reload that lands between the
    /// decision and the session's registration would miss it, so `drive` checks again.
    decided_with: Arc<State>,
    /// This attachment's client is gcloud.
    is_gcloud: bool,
}

fn region_of(target: &Target) -> &str {
    match target {
        Target::Host { region, .. } => region,
        Target::Instance { zone, .. } => zone,
    }
}

async fn reconnect(
    relay: &Arc<Relay>,
    state: &Arc<State>,
    mut ws: ServerSocket,
    caller: &Caller,
    sid: String,
    ack: u64,
    cancel: &CancellationToken,
) {
    let principal = caller.identity.principal.as_str();
    let claimed = relay
        .sessions
        .claim(&sid, principal, &caller.credential, TAKEOVER_WAIT)
        .await;
    let (mut parked, detach, grant) = match claimed {
        Ok(claimed) => claimed,
        Err(e) => {
            let code = e.close_code();
            info!(%principal, sid = %sid, code, reason = ?e, "reconnect refused");
            relay.audit.record(&Event {
                event: "reconnect_refused",
                principal: Some(principal),
                client: Some(caller.client),
                sid: Some(&sid),
                reason: Some(&format!("{e:?}")),
                code: Some(code),
                ..Event::default()
            });
            close_with(&mut ws, code).await;
            return;
        }
    };
    // The grant is decided again: a binding may have expired while the client was away.
    let req = policy::Request {
        principal,
        target: &grant.target,
        port: grant.port,
        group: grant.group.as_deref(),
        client_cert: caller.client_cert,
        now: SystemTime::now(),
    };
    let until = match policy::decide(&state.config.policy, &req) {
        Decision::Allow { until, .. } => until,
        Decision::Deny { reason } => {
            relay.sessions.remove(&sid);
            close_with(&mut ws, close::NOT_AUTHORIZED).await;
            relay.end_session(&parked, close::NOT_AUTHORIZED, &reason, "revoked");
            return;
        }
    };
    let resend = match parked.session.state.resume(ack) {
        Ok(resend) => resend,
        Err(e) => {
            // The client asks for bytes we no longer hold (or never sent): the stream cannot
            // continue intact, so the session ends.
            relay.sessions.remove(&sid);
            close_with(&mut ws, close::FAILED_TO_REWIND).await;
            relay.end_session(
                &parked,
                close::FAILED_TO_REWIND,
                &e.to_string(),
                "rewind_failed",
            );
            return;
        }
    };
    let received = parked.session.state.received();
    if let Err(e) = ws
        .send(Message::Binary(
            Frame::ReconnectSuccessAck(received).to_bytes(),
        ))
        .await
    {
        info!(sid = %sid, error = %e, "client went away during resume");
        park(relay, state, parked);
        return;
    }
    parked.info.resumes += 1;
    info!(%principal, sid = %sid, resumes = parked.info.resumes, client_has = ack, relay_has = received, resent_bytes = parked.session.state.unacked(), "reconnect");
    relay.audit.record(&Event {
        event: "reconnect",
        principal: Some(principal),
        auth: Some(caller.identity.method),
        client: Some(caller.client),
        target: Some(&parked.info.target),
        port: Some(parked.info.port),
        sid: Some(&sid),
        resumes: Some(parked.info.resumes),
        ..Event::default()
    });
    let lease = Lease {
        grant: Grant::clone(&grant),
        credential: caller.credential.clone(),
        credential_expires: caller.identity.expires_at,
        authorized_until: until,
        decided_with: state.clone(),
        is_gcloud: caller.is_gcloud,
    };
    drive(relay, state, ws, parked, &detach, resend, lease, cancel).await;
}

/// Runs one WebSocket attachment of a session, then parks it or ends it.
#[allow(clippy::too_many_arguments)]
async fn drive(
    relay: &Arc<Relay>,
    state: &Arc<State>,
    ws: ServerSocket,
    mut parked: Parked,
    detach: &Detach,
    resend: Vec<bytes::Bytes>,
    lease: Lease,
    cancel: &CancellationToken,
) {
    let limits = &state.config.limits;
    let mut attach = Attach::new(Role::Relay, cancel);
    attach.resend = resend;
    attach.detach = Some(detach);
    attach.idle_timeout = limits.idle_timeout_secs.map(Duration::from_secs);
    let until_now =
        |t: Option<SystemTime>| t.map(|e| e.duration_since(SystemTime::now()).unwrap_or_default());
    // Ask for a fresh credential when this one expires, or at the configured period.
    let reauth = [
        limits.reauthenticate_after_secs.map(Duration::from_secs),
        until_now(lease.credential_expires),
    ]
    .into_iter()
    .flatten()
    .min();
    let session_left = limits
        .max_session_secs
        .map(|s| Duration::from_secs(s).saturating_sub(parked.info.started.elapsed()));
    // A reload between the decision and the registration saw neither: decide again now.
    let mut authorized_for = if Arc::ptr_eq(&relay.state(), &lease.decided_with) {
        Ok(until_now(lease.authorized_until))
    } else {
        relay
            .state()
            .still_allowed(&lease.grant, &lease.credential, lease.grant.client_cert)
            .await
            .map(until_now)
    };
    let mut recheck_at = deadline_of(&authorized_for);
    let mut revoked: Option<String> = None;
    let flow = Flow::starting_at(parked.session.state.peer_acked());
    let mut stall = Stall::new();
    let mut stall_tick = tokio::time::interval(STALL_CHECK_EVERY);
    stall_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = {
        let ws = Watched::new(ws, flow.clone());
        let pump = pump::run(&mut parked.session, ws, attach);
        tokio::pin!(pump);
        let reauth = sleep_or_never(reauth);
        let session_left = sleep_or_never(session_left);
        tokio::pin!(reauth, session_left);
        let mut asked = false;
        loop {
            if let Err(reason) = &authorized_for
                && !asked
            {
                info!(sid = %parked.info.sid, %reason, "authorization ended");
                revoked = Some(reason.clone());
                detach.request(close::NOT_AUTHORIZED);
                asked = true;
            }
            // A deadline, not a fresh sleep: other arms (the stall check every second) wake
            // this loop, and a sleep made anew each time would never end.
            let recheck = match &authorized_for {
                Ok(Some(_)) if !asked => recheck_at,
                _ => None,
            };
            tokio::select! {
                end = &mut pump => break end,
                () = &mut reauth, if !asked => {
                    detach.request(close::REAUTHENTICATION_REQUIRED);
                    asked = true;
                }
                () = &mut session_left, if !asked => {
                    detach.request(POLICY_VIOLATION);
                    asked = true;
                }
                _ = stall_tick.tick() => {
                    if let Some(stalled) = stall.check(&flow, Instant::now()) {
                        report_stall(relay, &parked.info, flow.unacked(), stalled);
                    }
                }
                // The binding that allowed the session expires: decide again against the
                // configuration in force (another binding may still allow it).
                () = tokio::time::sleep_until(recheck.unwrap_or_else(tokio::time::Instant::now)), if recheck.is_some() => {
                    authorized_for = relay
                        .state()
                        .still_allowed(&lease.grant, &lease.credential, lease.grant.client_cert)
                        .await
                        .map(until_now);
                    recheck_at = deadline_of(&authorized_for);
                }
            }
        }
    };
    let sid = parked.info.sid.clone();
    let final_detach = matches!(end, PumpEnd::Detached { code } if code == close::NOT_AUTHORIZED || code == POLICY_VIOLATION);
    if end.resumable() && !final_detach && !cancel.is_cancelled() {
        if matches!(end, PumpEnd::TransportLost(_))
            && finished_without_close(&mut parked.session, lease.is_gcloud).await
        {
            relay.sessions.remove(&sid);
            debug!(sid = %sid, end = ?end, unacked = parked.session.state.unacked(), "client left without a close after the backend closed");
            relay.end_session(&parked, close::NORMAL, COMPLETE_WITHOUT_CLOSE, "complete");
            return;
        }
        info!(sid = %sid, end = ?end, backend_closed = parked.session.input_ended(), unacked = parked.session.state.unacked(), "connection lost; session parked for resume");
        park(relay, state, parked);
        return;
    }
    relay.sessions.remove(&sid);
    if matches!(end, PumpEnd::PeerClosed { .. }) {
        // The client's last bytes must reach the backend before its socket is closed.
        let _ = tokio::time::timeout(BACKEND_DRAIN_WAIT, async {
            let _ = parked.session.drain_output().await;
            let _ = crate::session::local::LocalOutput::finish(&mut parked.session.output).await;
        })
        .await;
    }
    let (code, detail, result) = match &end {
        PumpEnd::LocalEof => (close::NORMAL, "backend closed".to_owned(), "closed"),
        PumpEnd::PeerClosed { code, .. } => (*code, "client closed".to_owned(), "closed"),
        PumpEnd::TransportLost(d) => (close::ABNORMAL_CLOSURE, d.clone(), "lost"),
        PumpEnd::LocalFailed { error, code } => (*code, error.clone(), "backend_error"),
        PumpEnd::Violation { detail, code } => (*code, detail.clone(), "protocol_error"),
        PumpEnd::Cancelled => (1001, "relay shutting down".to_owned(), "shutdown"),
        PumpEnd::IdleTimeout => (POLICY_VIOLATION, "idle timeout".to_owned(), "idle"),
        PumpEnd::Detached { code } if *code == close::NOT_AUTHORIZED => match revoked {
            Some(reason) => (*code, reason, "revoked"),
            None => (*code, "binding revoked".to_owned(), "revoked"),
        },
        PumpEnd::Detached { code } if *code == POLICY_VIOLATION => {
            (*code, "maximum session length".to_owned(), "too_long")
        }
        PumpEnd::Detached { code } => (*code, "detached during shutdown".to_owned(), "shutdown"),
    };
    relay.end_session(&parked, code, &detail, result);
}

/// Logs, audits and counts a session found stalled by [`Stall`].
fn report_stall(relay: &Relay, info: &SessionInfo, unacked: u64, stalled: Duration) {
    relay.metrics.stalled();
    warn!(sid = %info.sid, principal = %info.principal, target = %info.target, unacked, stalled_secs = stalled.as_secs(), "client stopped acknowledging; the session cannot go on until it does");
    let reason = format!(
        "no ACK from the client for {} s with {unacked} bytes unacknowledged",
        stalled.as_secs()
    );
    relay.audit.record(&Event {
        event: "stall",
        principal: Some(&info.principal),
        target: Some(&info.target),
        port: Some(info.port),
        sid: Some(&info.sid),
        reason: Some(&reason),
        ..Event::default()
    });
}

/// After a WebSocket dropped without a close: whether the session had in fact finished, so it
/// ends now instead of waiting for a resume no one will ask for.
///
/// Any client: the backend closes within [`COMPLETE_WAIT`] (after the client's last bytes
/// reached it) and the client had acknowledged every byte.
///
/// gcloud never sends a close: ssh ends its ProxyCommand with SIGHUP, and gcloud dies with
/// its socket. Its last message to sshd dies with it, so sshd stays open, and gcloud holds
/// back its last ACK (it acknowledges only beyond [`ACK_THRESHOLD`]). A gcloud session is
/// therefore complete when it was idle at the drop: the client's last bytes reach the
/// backend, the backend sends nothing for [`COMPLETE_WAIT`], and no more than
/// [`ACK_THRESHOLD`] bytes are unacknowledged. A backend still sending means a transfer was
/// cut: the session is parked for resume as before.
async fn finished_without_close(session: &mut RelaySession, is_gcloud: bool) -> bool {
    use crate::session::local::{LocalInput, LocalOutput};
    let unacked = session.state.unacked();
    if unacked > ACK_THRESHOLD || (unacked > 0 && !is_gcloud) {
        return false;
    }
    let mut drained = false;
    let waited = tokio::time::timeout(COMPLETE_WAIT, async {
        if session.drain_output().await.is_err() {
            return false;
        }
        drained = true;
        if session.input_ended() {
            return true;
        }
        if !session.state.can_send() {
            return false;
        }
        match session.input.read_message().await {
            Ok(None) => true,
            Ok(Some(message)) => {
                // Kept for the resume: the backend had more to say.
                session.state.record_sent(message);
                false
            }
            Err(_) => false,
        }
    })
    .await;
    let finished = match waited {
        Ok(closed) => closed,
        // The backend stayed open and silent: an idle session.
        Err(_) => is_gcloud && drained,
    };
    if finished {
        let _ = tokio::time::timeout(CLOSE_WAIT, LocalOutput::finish(&mut session.output)).await;
    }
    finished
}

/// When a session allowed for `left` must be decided again.
fn deadline_of<E>(left: &Result<Option<Duration>, E>) -> Option<tokio::time::Instant> {
    match left {
        Ok(Some(left)) => Some(tokio::time::Instant::now() + *left),
        _ => None,
    }
}

async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Parks a session and arms the end of its resume window. The timer is tracked: at shutdown
/// it stops, and the sessions still parked are ended by `serve`.
fn park(relay: &Arc<Relay>, state: &State, parked: Parked) {
    let sid = parked.info.sid.clone();
    let Some(generation) = relay.sessions.park(parked) else {
        return;
    };
    let window = Duration::from_secs(state.config.limits.resume_window_secs);
    let relay2 = relay.clone();
    relay.timers.spawn(async move {
        let relay = relay2;
        tokio::select! {
            () = tokio::time::sleep(window) => {}
            () = relay.timers_stop.cancelled() => return,
        }
        if let Some(expired) = relay.sessions.expire(&sid, generation) {
            relay.end_session(
                &expired,
                close::ABNORMAL_CLOSURE,
                "resume window ended",
                "expired",
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_name_their_node_and_are_unguessable() {
        let a = new_session_id(Some("relay-2"));
        let (node, random) = a.split_once('.').unwrap();
        assert_eq!(node, "relay-2");
        assert_eq!(random.len(), 36);
        assert!(random.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_session_id(Some("relay-2")));
        assert!(!new_session_id(None).contains('.'));
    }
}
