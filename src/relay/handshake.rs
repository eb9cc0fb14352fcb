//! From an accepted TCP connection to an authenticated WebSocket: the first-byte limit, TLS,
//! the upgrade request served by hyper, the client's address behind trusted proxies,
//! authentication, and the admission of a new tunnel (drain, per-principal limit, memory
//! budget).

use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_util::either::Either;
use tracing::{debug, info};

use super::admission::{Admitted, HandshakeSlot};
use super::authn::{self, AuthError, Credential, Identity};
use super::forwarded::client_address;
use super::report::Outcome;
use super::serve::Relay;
use super::state::State;
use super::upgrade::{self, Answer, Head, Prefixed, Refusal};
use crate::close;
use crate::target::{self, Target};
use crate::wire::websocket_config;

type ServerStream = Prefixed<Either<tokio_rustls::server::TlsStream<TcpStream>, TcpStream>>;
/// A client's WebSocket, after the upgrade. Boxed: it is over a kilobyte (tungstenite's and
/// rustls' state inline), and each async fn it passes through would otherwise keep its own
/// copy in the connection task for as long as the tunnel is open.
pub(super) type ServerSocket = Box<WebSocketStream<ServerStream>>;

/// What the upgrade request asked for.
pub(super) enum Asked {
    /// `/v4/connect`: a new session to this target and port.
    Connect { target: Target, port: u16 },
    /// `/v4/reconnect`: resume session `sid`; the client has received `ack` bytes.
    Reconnect { sid: String, ack: u64 },
}

/// Everything known about a caller after the upgrade.
pub(super) struct Caller {
    pub(super) identity: Identity,
    /// The bearer token, kept only until the configuration in force after the upgrade has
    /// accepted it too (see [`run`]); never logged.
    token: String,
    pub(super) credential: Credential,
    pub(super) client: IpAddr,
    pub(super) client_cert: bool,
    pub(super) asked: Asked,
    /// A new session's tunnel slot and memory reservation (connects only).
    pub(super) admitted: Option<Admitted>,
    /// The client says it is gcloud, which never closes its WebSocket (see
    /// `resume::finished_without_close`).
    pub(super) is_gcloud: bool,
    /// When the connection was accepted: a new session's handshake time counts from here.
    pub(super) accepted: Instant,
}

/// Runs the handshake of one accepted connection within the handshake time limit, then
/// checks the caller against the configuration in force now. Returns the WebSocket, the
/// caller and that configuration; `None` when the connection was refused or failed (already
/// answered and reported). `slot`, the connection's place among its address's unfinished
/// handshakes, is given back once the upgrade is done.
pub(super) async fn run(
    relay: &Relay,
    stream: TcpStream,
    peer: IpAddr,
    slot: Option<HandshakeSlot>,
) -> Option<(ServerSocket, Caller, Arc<State>)> {
    let accepted_with = relay.state();
    let limit = Duration::from_secs(accepted_with.config.limits.handshake_timeout_secs);
    let upgraded = tokio::time::timeout(limit, upgrade(relay, &accepted_with, stream, peer));
    let (mut ws, mut caller) = match upgraded.await {
        Ok(upgraded) => upgraded?,
        Err(_) => {
            info!(timeout_secs = limit.as_secs(), "handshake timed out");
            return None;
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
            relay.report(Outcome::RevokedInHandshake { caller: &caller });
            close_with(&mut ws, close::NOT_AUTHORIZED).await;
            return None;
        }
    }
    caller.token = String::new();
    Some((ws, caller, state))
}

async fn upgrade(
    relay: &Relay,
    state: &State,
    stream: TcpStream,
    peer: IpAddr,
) -> Option<(ServerSocket, Caller)> {
    let accepted = Instant::now();
    let stream = secure(relay, state, stream).await?;
    let exchange = Exchange {
        relay,
        state,
        peer,
        client_cert: super::tls::stream_has_client_cert(&stream),
        accepted,
        caller: Mutex::new(None),
    };
    let service = service_fn(|req| -> Answering<'_> {
        let exchange = &exchange;
        Box::pin(async move { Ok(exchange.answer(req).await) })
    });
    // Without shutdown: after a 101 the connection is the WebSocket's, and hyper gives it
    // back with the bytes it read past the head.
    let done = upgrade::builder()
        .serve_connection(TokioIo::new(stream), service)
        .without_shutdown()
        .await;
    let caller = exchange
        .caller
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let parts = match done {
        Ok(parts) => parts,
        Err(e) => {
            debug!(error = %e, "upgrade request failed");
            return None;
        }
    };
    let mut stream = parts.io.into_inner();
    let Some(caller) = caller else {
        // Refused: the answer is out.
        let _ = stream.shutdown().await;
        return None;
    };
    // What hyper read past the head is copied out: the bytes it hands back share its whole
    // read buffer (8 KiB or more), which would otherwise stay allocated as long as the tunnel.
    let prefix = Bytes::copy_from_slice(&parts.read_buf);
    drop(parts.read_buf);
    let stream = Prefixed::new(prefix, stream);
    // tungstenite zero-fills its read buffer on the first read and keeps it, so its size
    // (`wire::WS_READ_CHUNK`, 4 KiB) is held by every open tunnel, idle or not.
    let ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(websocket_config())).await;
    Some((Box::new(ws), caller))
}

/// A future answering one upgrade request.
type Answering<'a> = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send + 'a>>;

/// One connection's upgrade request as hyper serves it: what is known before it, and the
/// caller it turns into once answered with a 101.
struct Exchange<'a> {
    relay: &'a Relay,
    state: &'a State,
    peer: IpAddr,
    client_cert: bool,
    accepted: Instant,
    caller: Mutex<Option<Caller>>,
}

impl Exchange<'_> {
    /// Checks the request and answers it: a 101 (and the caller kept for after the upgrade),
    /// or a refusal.
    async fn answer(&self, req: Request<Incoming>) -> Answer {
        let head = Head::of(&req);
        let client = client_address(
            &self.state.config.trusted_proxies,
            self.peer,
            head.forwarded_for.as_deref(),
        );
        let token = head
            .authorization
            .as_deref()
            .and_then(authn::bearer)
            .unwrap_or_default()
            .to_owned();
        let (identity, asked, admitted) =
            match check(self.relay, self.state, &head, &token, client).await {
                Ok(checked) => checked,
                Err(refusal) => return refusal.answer(),
            };
        let caller = Caller {
            credential: Credential::of(&identity, &token),
            identity,
            token,
            client,
            client_cert: self.client_cert,
            asked,
            admitted,
            is_gcloud: head.user_agent.as_deref().is_some_and(is_gcloud),
            accepted: self.accepted,
        };
        *self.caller.lock().unwrap_or_else(|p| p.into_inner()) = Some(caller);
        upgrade::switching_protocols(req.headers())
    }
}

/// Waits for the client's first byte, then completes TLS when the relay has a certificate.
async fn secure(
    relay: &Relay,
    state: &State,
    stream: TcpStream,
) -> Option<Either<tokio_rustls::server::TlsStream<TcpStream>, TcpStream>> {
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
        Ok(_) => return None,
        Err(_) => {
            relay.report(Outcome::Silent {
                timeout: first_byte,
            });
            return None;
        }
    }
    match &state.tls {
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(tls) => Some(Either::Left(tls)),
            Err(e) => {
                info!(error = %e, "TLS handshake failed");
                None
            }
        },
        None => Some(Either::Right(stream)),
    }
}

/// Who asks for what, and for a new tunnel its admission. A refusal is reported here and
/// returned for the caller to answer with.
async fn check(
    relay: &Relay,
    state: &State,
    head: &Head,
    token: &str,
    client: IpAddr,
) -> Result<(Identity, Asked, Option<Admitted>), Refusal> {
    let refused = |refusal: Refusal, reason: &str| {
        relay.report(Outcome::UpgradeRefused {
            client,
            status: refusal.status(),
            reason,
        });
        refusal
    };
    if head.path != "/v4/connect" && head.path != "/v4/reconnect" {
        return Err(refused(Refusal::NotFound, "unknown path"));
    }
    // Before authentication: a token is looked at only when it can open a WebSocket.
    if !head.upgrade {
        return Err(refused(Refusal::BadRequest, "not a WebSocket upgrade"));
    }
    let identity = match token {
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
    let identity = identity.map_err(|error| {
        relay.report(Outcome::AuthFailed {
            client,
            error: &error,
        });
        Refusal::Unauthorized
    })?;
    let asked = if head.path == "/v4/connect" {
        target::parse_connect_query(&head.query)
            .map(|(target, port)| Asked::Connect { target, port })
    } else {
        target::parse_reconnect_query(&head.query).map(|q| Asked::Reconnect {
            sid: q.sid,
            ack: q.ack,
        })
    };
    let asked = asked.map_err(|e| refused(Refusal::BadRequest, &e.to_string()))?;
    let admitted = match asked {
        Asked::Connect { .. } => Some(admit(relay, state, &identity.principal, client)?),
        // A resumed session keeps what it was admitted with.
        Asked::Reconnect { .. } => None,
    };
    Ok((identity, asked, admitted))
}

/// Admits a new tunnel: not while draining, within the principal's limit and within the
/// memory budget. What it takes is given back when the session (or the refusal) drops it.
fn admit(
    relay: &Relay,
    state: &State,
    principal: &str,
    client: IpAddr,
) -> Result<Admitted, Refusal> {
    if relay.draining.load(Ordering::SeqCst) {
        relay.report(Outcome::UpgradeRefused {
            client,
            status: Refusal::Draining.status(),
            reason: "draining",
        });
        return Err(Refusal::Draining);
    }
    let limit = state.config.limits.max_connections_per_principal;
    let Some(slot) = relay.principals.try_enter(principal.to_owned(), limit) else {
        relay.report(Outcome::OverPrincipalLimit { client, principal });
        return Err(Refusal::TooManyRequests);
    };
    let Some(reservation) = relay.budget.try_reserve(state.session_reservation()) else {
        relay.report(Outcome::OverMemoryBudget {
            client,
            principal,
            reserved: relay.budget.reserved(),
        });
        return Err(Refusal::Full);
    };
    Ok(Admitted {
        principal: slot,
        reservation,
    })
}

/// Whether a `User-Agent` is gcloud's (`gcloud/528.0.0 command/gcloud.compute.start-iap-tunnel …`).
fn is_gcloud(user_agent: &str) -> bool {
    user_agent.starts_with("gcloud/") || user_agent.contains("command/gcloud.")
}

/// Closes `ws` with `code` and its reason text, and waits briefly for the client's reply so
/// it sees a clean close.
pub(super) async fn close_with<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    code: u16,
) {
    let frame = CloseFrame {
        code: code.into(),
        reason: close::reason_text(code).into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = ws.close(Some(frame)).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcloud_is_recognised_by_its_user_agent() {
        assert!(is_gcloud(
            "gcloud/528.0.0 command/gcloud.compute.start-iap-tunnel"
        ));
        assert!(is_gcloud("Python/3.12 command/gcloud.compute.ssh"));
        assert!(!is_gcloud("iap-ssh/0.1"));
    }
}
