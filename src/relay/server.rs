//! Accepting clients: TLS, the WebSocket upgrade with authentication, the policy and
//! inventory checks, the backend dial, and one pump per tunnel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use super::authn;
use super::config::RelayConfig;
use super::policy::{Decision, decide_with_cert};
use super::sessions::{Parked, Registry, SessionInfo};
use crate::client::dial::{SUBPROTOCOL, websocket_config};
use crate::close;
use crate::frame::Frame;
use crate::session::local::{TcpInput, TcpOutput};
use crate::session::pump::{self, Attach, Detach, PumpEnd, Role, Session};
use crate::target::{self, Target};

/// How long shutdown waits for live tunnels to close before giving up on them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the backend to take the bytes a client sent before it closed.
const BACKEND_DRAIN_WAIT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A running relay's shared, read-only parts.
pub struct Relay {
    config: RelayConfig,
    tls: Option<TlsAcceptor>,
    sessions: Arc<Registry>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Relay {
    /// Prepares a relay from a checked configuration, loading its certificate and key.
    ///
    /// # Errors
    /// When the certificate or key cannot be read or do not match.
    pub fn new(config: RelayConfig) -> anyhow::Result<Relay> {
        let tls = match &config.tls {
            Some((cert, key)) => Some(TlsAcceptor::from(super::tls::server_config(
                cert,
                key,
                config.client_ca.as_ref(),
            )?)),
            None => None,
        };
        Ok(Relay {
            config,
            tls,
            sessions: Arc::default(),
        })
    }

    /// The URL scheme clients use: `wss` with TLS, else `ws`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "wss" } else { "ws" }
    }
}

/// Serves clients on `listener` until `cancel` fires, then closes live tunnels (bounded by
/// [`SHUTDOWN_GRACE`]).
pub async fn serve(relay: Arc<Relay>, listener: TcpListener, cancel: CancellationToken) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(relay.config.limits.max_connections));
    loop {
        // Wait for a free slot before accepting, so excess clients queue in the kernel.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = cancel.cancelled() => break,
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
            () = cancel.cancelled() => break,
        };
        let relay = relay.clone();
        let cancel = cancel.child_token();
        // The handshake runs in the spawned task, never in this loop: a slow client must not
        // hold up others.
        tracker.spawn(
            async move {
                handle(&relay, stream, &cancel).await;
                drop(permit);
            }
            .instrument(info_span!("conn", %peer)),
        );
    }
    tracker.close();
    cancel.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            open = tracker.len(),
            "shutdown grace ended with tunnels still open"
        );
    }
}

/// What the upgrade request asked for, once authenticated.
enum Request_ {
    Connect { target: Target, port: u16 },
    Reconnect { sid: String, ack: u64 },
}

struct Accepted {
    principal: String,
    request: Request_,
}

type ServerSocket = WebSocketStream<Either<tokio_rustls::server::TlsStream<TcpStream>, TcpStream>>;

async fn upgrade(relay: &Relay, stream: TcpStream) -> anyhow::Result<(ServerSocket, Accepted)> {
    let _ = stream.set_nodelay(true);
    let stream = match &relay.tls {
        Some(acceptor) => Either::Left(acceptor.accept(stream).await.context("TLS handshake")?),
        None => Either::Right(stream),
    };
    let mut accepted = None;
    // tungstenite fixes the callback's error type; it is built once per refused upgrade.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let (resp, result) = check_upgrade(relay, req, resp)?;
        accepted = Some(result);
        Ok(resp)
    };
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(websocket_config()))
            .await
            .context("WebSocket upgrade")?;
    let accepted = accepted.context("upgrade finished without a checked request")?;
    Ok((ws, accepted))
}

fn reject(status: StatusCode, log_reason: &str) -> ErrorResponse {
    info!(
        status = status.as_u16(),
        reason = log_reason,
        "upgrade refused"
    );
    let mut resp = ErrorResponse::new(Some(
        status.canonical_reason().unwrap_or("error").to_owned(),
    ));
    *resp.status_mut() = status;
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

#[allow(clippy::result_large_err)] // the error is tungstenite's response type, returned as is
fn check_upgrade(
    relay: &Relay,
    req: &Request,
    mut resp: Response,
) -> Result<(Response, Accepted), ErrorResponse> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    if path != "/v4/connect" && path != "/v4/reconnect" {
        return Err(reject(StatusCode::NOT_FOUND, "unknown path"));
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(authn::bearer);
    let Some(token) = token else {
        return Err(reject(StatusCode::UNAUTHORIZED, "no bearer token"));
    };
    let Some(principal) = relay.config.tokens.authenticate(token) else {
        return Err(reject(StatusCode::UNAUTHORIZED, "unknown token"));
    };
    let request = if path == "/v4/connect" {
        let (target, port) = target::parse_connect_query(query)
            .map_err(|e| reject(StatusCode::BAD_REQUEST, &e.to_string()))?;
        Request_::Connect { target, port }
    } else {
        let q = target::parse_reconnect_query(query)
            .map_err(|e| reject(StatusCode::BAD_REQUEST, &e.to_string()))?;
        Request_::Reconnect {
            sid: q.sid,
            ack: q.ack,
        }
    };
    let offers_subprotocol = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(SUBPROTOCOL));
    if offers_subprotocol {
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    Ok((
        resp,
        Accepted {
            principal: principal.to_owned(),
            request,
        },
    ))
}

async fn close_with(ws: &mut ServerSocket, code: u16) {
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

fn new_session_id() -> String {
    let mut bytes = [0u8; 18];
    // SystemRandom only fails when the OS has no entropy source at all.
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the operating system's random source is available");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn handle(relay: &Relay, stream: TcpStream, cancel: &CancellationToken) {
    let limit = Duration::from_secs(relay.config.limits.handshake_timeout_secs);
    let (ws, accepted) = match tokio::time::timeout(limit, upgrade(relay, stream)).await {
        Ok(Ok(upgraded)) => upgraded,
        Ok(Err(e)) => {
            info!(error = %format!("{e:#}"), "handshake failed");
            return;
        }
        Err(_) => {
            info!(timeout_secs = limit.as_secs(), "handshake timed out");
            return;
        }
    };
    let principal = accepted.principal;
    match accepted.request {
        Request_::Connect { target, port } => {
            connect(relay, ws, principal, target, port, cancel).await
        }
        Request_::Reconnect { sid, ack } => reconnect(relay, ws, principal, sid, ack, cancel).await,
    }
}

async fn connect(
    relay: &Relay,
    mut ws: ServerSocket,
    principal: String,
    target: Target,
    port: u16,
    cancel: &CancellationToken,
) {
    let described = target.describe(port);
    let client_cert = super::tls::stream_has_client_cert(ws.get_ref());
    let binding = match decide_with_cert(
        &relay.config.policy,
        &principal,
        client_cert,
        &target,
        port,
    ) {
        Decision::Allow { binding } => binding,
        Decision::Deny { reason } => {
            info!(%principal, target = %described, %reason, code = close::NOT_AUTHORIZED, "denied");
            close_with(&mut ws, close::NOT_AUTHORIZED).await;
            return;
        }
    };
    let Some(ip) = relay.config.inventory.resolve(&target) else {
        info!(%principal, target = %described, code = close::LOOKUP_FAILED, "target not in inventory");
        close_with(&mut ws, close::LOOKUP_FAILED).await;
        return;
    };
    let backend_addr = SocketAddr::new(ip, port);
    let dial_limit = Duration::from_secs(relay.config.limits.backend_connect_timeout_secs);
    let backend = match tokio::time::timeout(dial_limit, TcpStream::connect(backend_addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            info!(%principal, target = %described, backend = %backend_addr, error = %e, code = close::FAILED_TO_CONNECT_TO_BACKEND, "backend refused");
            close_with(&mut ws, close::FAILED_TO_CONNECT_TO_BACKEND).await;
            return;
        }
        Err(_) => {
            info!(%principal, target = %described, backend = %backend_addr, code = close::FAILED_TO_CONNECT_TO_BACKEND, "backend connect timed out");
            close_with(&mut ws, close::FAILED_TO_CONNECT_TO_BACKEND).await;
            return;
        }
    };
    let _ = backend.set_nodelay(true);
    let sid = new_session_id();
    if let Err(e) = ws
        .send(Message::Binary(
            Frame::ConnectSuccessSid(sid.as_bytes()).to_bytes(),
        ))
        .await
    {
        info!(%principal, sid = %sid, error = %e, "client went away before the session started");
        return;
    }
    info!(%principal, target = %described, %binding, sid = %sid, "connect");
    let detach = relay.sessions.attach_new(&sid, &principal);
    let (read, write) = backend.into_split();
    let parked = Parked {
        session: Session::new(
            TcpInput::new(read),
            TcpOutput::new(write),
            relay.config.limits.max_unacked_bytes,
        ),
        info: SessionInfo {
            sid,
            principal,
            target: described,
            started: Instant::now(),
            resumes: 0,
        },
    };
    drive(relay, ws, parked, &detach, Vec::new(), cancel).await;
}

/// How long a reconnect waits for the WebSocket that still holds its session to let go.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

async fn reconnect(
    relay: &Relay,
    mut ws: ServerSocket,
    principal: String,
    sid: String,
    ack: u64,
    cancel: &CancellationToken,
) {
    let (mut parked, detach) = match relay.sessions.claim(&sid, &principal, TAKEOVER_WAIT).await {
        Ok(claimed) => claimed,
        Err(e) => {
            let code = e.close_code();
            info!(%principal, sid = %sid, code, reason = ?e, "reconnect refused");
            close_with(&mut ws, code).await;
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
            log_close(&parked, close::FAILED_TO_REWIND, &e.to_string());
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
        park(relay, parked);
        return;
    }
    parked.info.resumes += 1;
    info!(
        principal = %parked.info.principal,
        sid = %sid,
        resumes = parked.info.resumes,
        client_has = ack,
        relay_has = received,
        resent_bytes = parked.session.state.unacked(),
        "reconnect"
    );
    drive(relay, ws, parked, &detach, resend, cancel).await;
}

/// Runs one WebSocket attachment of a session, then parks it or ends it.
async fn drive(
    relay: &Relay,
    ws: ServerSocket,
    mut parked: Parked,
    detach: &Detach,
    resend: Vec<bytes::Bytes>,
    cancel: &CancellationToken,
) {
    let mut attach = Attach::new(Role::Relay, cancel);
    attach.resend = resend;
    attach.detach = Some(detach);
    let pump = pump::run(&mut parked.session, ws, attach);
    let end = match relay.config.limits.reauthenticate_after_secs {
        Some(secs) => {
            tokio::pin!(pump);
            tokio::select! {
                end = &mut pump => end,
                () = tokio::time::sleep(Duration::from_secs(secs)) => {
                    detach.request(close::REAUTHENTICATION_REQUIRED);
                    pump.await
                }
            }
        }
        None => pump.await,
    };
    if end.resumable() && !cancel.is_cancelled() {
        info!(sid = %parked.info.sid, end = ?end, "connection lost; session parked for resume");
        park(relay, parked);
        return;
    }
    relay.sessions.remove(&parked.info.sid);
    if matches!(end, PumpEnd::PeerClosed { .. }) {
        // The client's last bytes must reach the backend before its socket is closed.
        let _ = tokio::time::timeout(BACKEND_DRAIN_WAIT, async {
            let _ = parked.session.drain_output().await;
            let _ = crate::session::local::LocalOutput::finish(&mut parked.session.output).await;
        })
        .await;
    }
    let (code, detail) = match &end {
        PumpEnd::LocalEof => (close::NORMAL, "backend closed".to_owned()),
        PumpEnd::PeerClosed { code, .. } => (*code, "client closed".to_owned()),
        PumpEnd::TransportLost(d) => (close::ABNORMAL_CLOSURE, d.clone()),
        PumpEnd::LocalFailed { error, code } => (*code, error.clone()),
        PumpEnd::Violation { detail, code } => (*code, detail.clone()),
        PumpEnd::Cancelled => (1001, "relay shutting down".to_owned()),
        PumpEnd::Detached { code } => (*code, "detached during shutdown".to_owned()),
    };
    log_close(&parked, code, &detail);
}

/// Parks a session and arms the end of its resume window.
fn park(relay: &Relay, parked: Parked) {
    let sid = parked.info.sid.clone();
    let generation = relay.sessions.park(parked);
    let window = Duration::from_secs(relay.config.limits.resume_window_secs);
    let sessions = relay.sessions.clone();
    tokio::spawn(async move {
        tokio::time::sleep(window).await;
        if let Some(expired) = sessions.expire(&sid, generation) {
            log_close(&expired, close::ABNORMAL_CLOSURE, "resume window ended");
        }
    });
}

fn log_close(parked: &Parked, code: u16, detail: &str) {
    let info = &parked.info;
    info!(
        principal = %info.principal,
        target = %info.target,
        sid = %info.sid,
        code,
        detail = %detail,
        resumes = info.resumes,
        bytes_from_client = parked.session.state.received(),
        bytes_to_client = parked.session.state.sent(),
        duration_ms = info.started.elapsed().as_millis() as u64,
        "close"
    );
}
