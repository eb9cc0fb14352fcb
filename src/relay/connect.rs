//! A new session (`/v4/connect`): where the target leads, whether the policy allows it, the
//! backend dial, the session id, and its first attachment.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use tracing::info;

use super::attach::{Attachment, Lease};
use super::dial;
use super::handshake::{Asked, Caller, ServerSocket, close_with};
use super::locate::{self, Way};
use super::policy::Decision;
use super::report::Outcome;
use super::serve::Relay;
use super::sessions::{Grant, Parked, SessionInfo};
use super::state::State;
use crate::close;
use crate::frame::Frame;
use crate::session::local::{TcpInput, TcpOutput};
use crate::session::pump::Session;

/// Opens the session `caller` asked for and returns its first attachment, for
/// [`drive`](super::attach::drive), or refuses it with a close code (`None`). Nothing is resolved or
/// dialled before the policy allows the request.
pub(super) async fn open(
    relay: &Arc<Relay>,
    state: &Arc<State>,
    mut ws: ServerSocket,
    mut caller: Caller,
) -> Option<Attachment> {
    let admitted = caller.admitted.take()?;
    let Asked::Connect { target, port } = &caller.asked else {
        return None;
    };
    let port = *port;
    let described = target.describe(port);
    let refuse = |code: u16, reason: &str, result: &'static str| {
        relay.report(Outcome::Denied {
            caller: &caller,
            target: &described,
            port,
            code,
            reason,
            result,
        });
    };
    let inventory = &state.config.inventory;
    let route = match locate::locate(inventory, target) {
        Ok(route) => route,
        Err(no) => {
            refuse(no.code, no.reason, no.result);
            close_with(&mut ws, no.code).await;
            return None;
        }
    };
    let grant = Grant {
        principal: caller.identity.principal.clone(),
        target: target.clone(),
        port,
        group: route.group.clone(),
        client_cert: caller.client_cert,
    };
    let (binding, until) = match state.decide(&grant, grant.client_cert) {
        Decision::Allow { binding, until } => (binding, until),
        Decision::Deny { reason } => {
            refuse(close::NOT_AUTHORIZED, &reason, "denied");
            close_with(&mut ws, close::NOT_AUTHORIZED).await;
            return None;
        }
    };
    let resolved = match &route.way {
        Way::Resolve(host) => dial::resolve(host, port).await,
        Way::Address(_) | Way::NotListed => Vec::new(),
    };
    let addrs = match locate::addresses(inventory, target, &route, &resolved) {
        Ok(addrs) => addrs,
        Err(no) => {
            refuse(no.code, no.reason, no.result);
            close_with(&mut ws, no.code).await;
            return None;
        }
    };
    let dial_limit = Duration::from_secs(state.config.limits.backend_connect_timeout_secs);
    let backend = match dial::dial(&addrs, port, dial_limit).await {
        Ok(backend) => backend,
        Err(error) => {
            let code = close::FAILED_TO_CONNECT_TO_BACKEND;
            refuse(code, &format!("backend: {error}"), "backend_failed");
            close_with(&mut ws, code).await;
            return None;
        }
    };
    let sid = new_session_id(state.config.node_id.as_deref());
    let principal = &grant.principal;
    if let Err(e) = ws
        .send(Message::Binary(
            Frame::ConnectSuccessSid(sid.as_bytes()).to_bytes(),
        ))
        .await
    {
        info!(%principal, sid = %sid, error = %e, "client went away before the session started");
        return None;
    }
    let info = SessionInfo {
        sid,
        principal: principal.clone(),
        target: described,
        port,
        started: Instant::now(),
        resumes: 0,
    };
    relay.report(Outcome::Connected {
        caller: &caller,
        info: &info,
        binding: &binding,
    });
    let detach = relay
        .sessions
        .attach_new(&info.sid, grant.clone(), caller.credential.clone());
    let (read, write) = backend.into_split();
    let parked = Parked {
        session: Session::new(
            TcpInput::new(read),
            TcpOutput::new(write),
            state.config.limits.max_unacked_bytes,
        ),
        info,
        admitted,
    };
    Some(Attachment {
        ws,
        parked,
        detach,
        resend: Vec::new(),
        lease: Lease::new(grant, &caller, until, state),
    })
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
