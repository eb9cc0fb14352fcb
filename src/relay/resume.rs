//! Resuming sessions: a reconnect (`/v4/reconnect`) takes its session back and rewinds it;
//! a session whose WebSocket was lost is parked, with a tracked timer that ends it when its
//! resume window closes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use tracing::info;

use super::attach::{Attachment, Lease};
use super::handshake::{Asked, Caller, ServerSocket, close_with};
use super::policy::Decision;
use super::report::Outcome;
use super::serve::Relay;
use super::sessions::{Grant, Parked, RelaySession};
use super::state::State;
use crate::close;
use crate::frame::Frame;
use crate::session::pump::CLOSE_WAIT;
use crate::session::state::ACK_THRESHOLD;

/// How long a reconnect waits for the WebSocket that still holds its session to let go.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);
/// After a WebSocket dropped without a close, how long the backend may take to close too for
/// the session to count as complete rather than lost (see [`finished_without_close`]).
const COMPLETE_WAIT: Duration = Duration::from_secs(1);
/// Audit reason of a session that ended without a close after its backend closed.
pub const COMPLETE_WITHOUT_CLOSE: &str = "complete; client left without a close";

/// Resumes the session `caller` asked for on `ws` and returns the attachment, for
/// [`drive`](super::attach::drive), or refuses with a close code (`None`).
pub(super) async fn reconnect(
    relay: &Arc<Relay>,
    state: &Arc<State>,
    mut ws: ServerSocket,
    caller: Caller,
) -> Option<Attachment> {
    let Asked::Reconnect { sid, ack } = &caller.asked else {
        return None;
    };
    let (sid, ack) = (sid.as_str(), *ack);
    let principal = caller.identity.principal.as_str();
    let claimed = relay
        .sessions
        .claim(sid, principal, &caller.credential, TAKEOVER_WAIT)
        .await;
    let (mut parked, detach, grant) = match claimed {
        Ok(claimed) => claimed,
        Err(error) => {
            relay.report(Outcome::ReconnectRefused {
                caller: &caller,
                sid,
                error,
            });
            close_with(&mut ws, error.close_code()).await;
            return None;
        }
    };
    // The grant is decided again, for this attachment's client: a binding may have expired
    // while the client was away.
    let until = match state.decide(&grant, caller.client_cert) {
        Decision::Allow { until, .. } => until,
        Decision::Deny { reason } => {
            end(
                relay,
                &mut ws,
                &parked,
                close::NOT_AUTHORIZED,
                &reason,
                "revoked",
            )
            .await;
            return None;
        }
    };
    let resend = match parked.session.state.resume(ack) {
        Ok(resend) => resend,
        Err(e) => {
            // The client asks for bytes we no longer hold (or never sent): the stream cannot
            // continue intact, so the session ends.
            let code = close::FAILED_TO_REWIND;
            end(
                relay,
                &mut ws,
                &parked,
                code,
                &e.to_string(),
                "rewind_failed",
            )
            .await;
            return None;
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
        return None;
    }
    parked.info.resumes += 1;
    relay.report(Outcome::Reconnected {
        caller: &caller,
        info: &parked.info,
        client_has: ack,
        relay_has: received,
        resent_bytes: parked.session.state.unacked(),
    });
    Some(Attachment {
        ws,
        parked,
        detach,
        resend,
        lease: Lease::new(Grant::clone(&grant), &caller, until, state),
    })
}

/// Ends a claimed session that cannot go on: forgets it, closes the client's WebSocket with
/// `code`, and reports the end.
async fn end(
    relay: &Relay,
    ws: &mut ServerSocket,
    parked: &Parked,
    code: u16,
    detail: &str,
    result: &'static str,
) {
    relay.sessions.remove(&parked.info.sid);
    close_with(ws, code).await;
    relay.report(Outcome::Closed {
        parked,
        code,
        detail,
        result,
    });
}

/// Parks a session and arms the end of its resume window. The timer is tracked: at shutdown
/// it stops, and the sessions still parked are ended by `serve`.
pub(super) fn park(relay: &Arc<Relay>, state: &State, parked: Parked) {
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
            relay.report(Outcome::Closed {
                parked: &expired,
                code: close::ABNORMAL_CLOSURE,
                detail: "resume window ended",
                result: "expired",
            });
        }
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
pub(super) async fn finished_without_close(session: &mut RelaySession, is_gcloud: bool) -> bool {
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
