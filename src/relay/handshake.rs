//! From an accepted TCP connection to an authenticated WebSocket: the first-byte limit, TLS,
//! the upgrade request, the client's address behind trusted proxies, authentication, and the
//! admission of a new tunnel (drain, per-principal limit, memory budget).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_util::either::Either;
use tracing::info;

use super::admission::{Admitted, HandshakeSlot};
use super::authn::{self, AuthError, Credential, Identity};
use super::inventory::Cidr;
use super::report::Outcome;
use super::serve::Relay;
use super::state::State;
use super::upgrade::{self, Head, HeadError, Prefixed, Refusal};
use crate::close;
use crate::target::{self, Target};

type ServerStream = Prefixed<Either<tokio_rustls::server::TlsStream<TcpStream>, TcpStream>>;
/// A client's WebSocket, after the upgrade.
pub(super) type ServerSocket = WebSocketStream<ServerStream>;

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
    let mut stream = secure(relay, state, stream).await?;
    let client_cert = super::tls::stream_has_client_cert(&stream);
    let (head, bytes) = match upgrade::read_head(&mut stream).await {
        Ok(read) => read,
        Err(HeadError::TooLarge) => {
            upgrade::refuse(&mut stream, Refusal::TooLarge).await;
            return None;
        }
        Err(HeadError::Malformed) => {
            upgrade::refuse(&mut stream, Refusal::BadRequest).await;
            return None;
        }
        Err(HeadError::Io(_)) => return None,
    };
    let client = client_address(
        &state.config.trusted_proxies,
        peer,
        head.forwarded_for.as_deref(),
    );
    let token = head
        .authorization
        .as_deref()
        .and_then(authn::bearer)
        .unwrap_or_default()
        .to_owned();
    let (identity, asked, admitted) = match check(relay, state, &head, &token, client).await {
        Ok(checked) => checked,
        Err(refusal) => {
            upgrade::refuse(&mut stream, refusal).await;
            return None;
        }
    };
    let caller = Caller {
        credential: Credential::of(&identity, &token),
        identity,
        token,
        client,
        client_cert,
        asked,
        admitted,
        is_gcloud: head.user_agent.as_deref().is_some_and(is_gcloud),
        accepted,
    };
    match upgrade::accept_websocket(Prefixed::new(bytes, stream)).await {
        Ok(ws) => Some((ws, caller)),
        Err(e) => {
            info!(error = %e, "WebSocket upgrade failed");
            None
        }
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

/// The client's address: the peer, or the nearest untrusted address in `X-Forwarded-For`
/// when the peer is a trusted proxy.
fn client_address(trusted: &[Cidr], peer: IpAddr, forwarded: Option<&str>) -> IpAddr {
    let trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
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
    fn the_client_is_the_nearest_untrusted_hop() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases = [
            // An untrusted peer is the client, whatever it forwards.
            ("192.0.2.1", Some("203.0.113.9"), "192.0.2.1"),
            ("10.0.0.1", None, "10.0.0.1"),
            ("10.0.0.1", Some("203.0.113.9"), "203.0.113.9"),
            // Hops are read from the right; trusted ones are skipped.
            (
                "10.0.0.1",
                Some("198.51.100.7, 203.0.113.9, 10.0.0.2"),
                "203.0.113.9",
            ),
            // Garbage stops the walk at the last address believed.
            ("10.0.0.1", Some("203.0.113.9, junk, 10.0.0.2"), "10.0.0.2"),
            ("10.0.0.1", Some("10.0.0.3, 10.0.0.2"), "10.0.0.3"),
        ];
        for (peer, forwarded, want) in cases {
            assert_eq!(
                client_address(&trusted, ip(peer), forwarded),
                ip(want),
                "{peer} {forwarded:?}"
            );
        }
    }

    #[test]
    fn gcloud_is_recognised_by_its_user_agent() {
        assert!(is_gcloud(
            "gcloud/528.0.0 command/gcloud.compute.start-iap-tunnel"
        ));
        assert!(is_gcloud("Python/3.12 command/gcloud.compute.ssh"));
        assert!(!is_gcloud("iap-ssh/0.1"));
    }
}
