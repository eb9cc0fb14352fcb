//! One WebSocket attachment of a session: the pump, with the session's timers beside it
//! (re-authentication, maximum length, the expiry of the binding that allowed it, the stall
//! check), then parking the session for a resume or ending it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::authn::Credential;
use super::handshake::{Caller, ServerSocket};
use super::report::Outcome;
use super::resume::{self, COMPLETE_WITHOUT_CLOSE};
use super::serve::Relay;
use super::sessions::{Grant, Parked};
use super::state::State;
use super::watch::Stall;
use crate::close;
use crate::close::POLICY_VIOLATION;
use crate::session::pump::{self, Attach, Detach, PumpEnd, Role, SharedFlow};

/// How long to wait for the backend to take the bytes a client sent before it closed.
const BACKEND_DRAIN_WAIT: Duration = Duration::from_secs(10);
/// How often an attachment is checked for a stall (see `watch::Stall`).
const STALL_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Why a session may run, and until when.
pub(super) struct Lease {
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
    pub(super) is_gcloud: bool,
}

impl Lease {
    /// The lease of `caller`'s attachment to a session granted `grant`, allowed by `state`
    /// until `authorized_until`.
    pub(super) fn new(
        grant: Grant,
        caller: &Caller,
        authorized_until: Option<SystemTime>,
        state: &Arc<State>,
    ) -> Lease {
        Lease {
            grant,
            credential: caller.credential.clone(),
            credential_expires: caller.identity.expires_at,
            authorized_until,
            decided_with: state.clone(),
            is_gcloud: caller.is_gcloud,
        }
    }

    /// Whether the session may go on under the configuration in force now, and for how long.
    async fn recheck(&self, relay: &Relay) -> Result<Option<Duration>, String> {
        let state = relay.state();
        // Boxed, and only while it runs: the check may ask a token-info endpoint over HTTPS,
        // a future of several kilobytes that would otherwise sit inline in every tunnel's
        // task for its whole life.
        Box::pin(state.still_allowed(&self.grant, &self.credential))
            .await
            .map(until_now)
    }
}

/// A session and the WebSocket it is attached to.
pub(super) struct Attachment {
    pub(super) ws: ServerSocket,
    pub(super) parked: Parked,
    /// Lets the session's registry entry ask this attachment to let go.
    pub(super) detach: Arc<Detach>,
    /// What the client has not acknowledged, sent again first (a resume).
    pub(super) resend: Vec<Bytes>,
    pub(super) lease: Lease,
}

/// Runs one WebSocket attachment of a session, then parks it or ends it.
pub(super) async fn drive(relay: &Arc<Relay>, attachment: Attachment, cancel: &CancellationToken) {
    let Attachment {
        ws,
        mut parked,
        detach,
        resend,
        lease,
    } = attachment;
    let state = &lease.decided_with;
    let limits = &state.config.limits;
    let mut attach = Attach::new(Role::Relay, cancel);
    attach.resend = resend;
    attach.detach = Some(&detach);
    attach.idle_timeout = limits.idle_timeout_secs.map(Duration::from_secs);
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
    let mut authorized_for = if Arc::ptr_eq(&relay.state(), state) {
        Ok(until_now(lease.authorized_until))
    } else {
        lease.recheck(relay).await
    };
    let mut recheck_at = deadline_of(&authorized_for);
    let mut revoked: Option<String> = None;
    let flow = SharedFlow::default();
    attach.flow = Some(&flow);
    let mut stall = Stall::new();
    let mut stall_tick = tokio::time::interval(STALL_CHECK_EVERY);
    stall_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = {
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
                    let seen = flow.get();
                    if let Some(stalled) = stall.check(seen, Instant::now()) {
                        let (info, unacked) = (&parked.info, seen.unacked);
                        relay.report(Outcome::Stalled { info, unacked, stalled });
                    }
                }
                // The binding that allowed the session expires: decide again against the
                // configuration in force (another binding may still allow it).
                () = tokio::time::sleep_until(recheck.unwrap_or_else(tokio::time::Instant::now)), if recheck.is_some() => {
                    authorized_for = lease.recheck(relay).await;
                    recheck_at = deadline_of(&authorized_for);
                }
            }
        }
    };
    // Boxed: settling runs once, at the end, and inline its room would be added to the
    // running attachment's for the tunnel's whole life.
    Box::pin(settle(relay, parked, end, revoked, &lease, cancel)).await;
}

/// After an attachment: parks a session that may be resumed, or ends it.
async fn settle(
    relay: &Arc<Relay>,
    mut parked: Parked,
    end: PumpEnd,
    revoked: Option<String>,
    lease: &Lease,
    cancel: &CancellationToken,
) {
    let sid = parked.info.sid.clone();
    let final_detach = matches!(end, PumpEnd::Detached { code } if code == close::NOT_AUTHORIZED || code == POLICY_VIOLATION);
    if end.resumable() && !final_detach && !cancel.is_cancelled() {
        if matches!(end, PumpEnd::TransportLost(_))
            && resume::finished_without_close(&mut parked.session, lease.is_gcloud).await
        {
            relay.sessions.remove(&sid);
            debug!(sid = %sid, end = ?end, unacked = parked.session.state.unacked(), "client left without a close after the backend closed");
            relay.report(Outcome::Closed {
                parked: &parked,
                code: close::NORMAL,
                detail: COMPLETE_WITHOUT_CLOSE,
                result: "complete",
            });
            return;
        }
        info!(sid = %sid, end = ?end, backend_closed = parked.session.input_ended(), unacked = parked.session.state.unacked(), "connection lost; session parked for resume");
        resume::park(relay, &lease.decided_with, parked);
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
    let (code, detail, result) = ending(&end, revoked);
    relay.report(Outcome::Closed {
        parked: &parked,
        code,
        detail: &detail,
        result,
    });
}

/// How a session that is not parked ended: its close code, the audit reason and the counter
/// label.
fn ending(end: &PumpEnd, revoked: Option<String>) -> (u16, String, &'static str) {
    match end {
        PumpEnd::LocalEof => (close::NORMAL, "backend closed".to_owned(), "closed"),
        PumpEnd::PeerClosed { code, .. } => (*code, "client closed".to_owned(), "closed"),
        PumpEnd::TransportLost(d) => (close::ABNORMAL_CLOSURE, d.clone(), "lost"),
        PumpEnd::LocalFailed { error, code } => (*code, error.clone(), "backend_error"),
        PumpEnd::Violation { detail, code } => (*code, detail.clone(), "protocol_error"),
        PumpEnd::Cancelled => (
            close::GOING_AWAY,
            "relay shutting down".to_owned(),
            "shutdown",
        ),
        PumpEnd::IdleTimeout => (POLICY_VIOLATION, "idle timeout".to_owned(), "idle"),
        PumpEnd::Detached { code } if *code == close::NOT_AUTHORIZED => match revoked {
            Some(reason) => (*code, reason, "revoked"),
            None => (*code, "binding revoked".to_owned(), "revoked"),
        },
        PumpEnd::Detached { code } if *code == POLICY_VIOLATION => {
            (*code, "maximum session length".to_owned(), "too_long")
        }
        PumpEnd::Detached { code } => (*code, "detached during shutdown".to_owned(), "shutdown"),
    }
}

/// How long from now until `t`, if there is a `t` (zero once it has passed).
fn until_now(t: Option<SystemTime>) -> Option<Duration> {
    t.map(|e| e.duration_since(SystemTime::now()).unwrap_or_default())
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
