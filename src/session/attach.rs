//! One WebSocket attachment of a session as decisions without I/O: what to send, when to wake
//! and when to stop.
//!
//! [`pump`](super::pump) reads and writes; it feeds each event (a message from the peer, bytes
//! or the end of local input, a timer) to [`AttachState`] with the current time, sends what
//! [`AttachState::next_outgoing`] hands out, sleeps until [`AttachState::next_deadline`] and
//! carries out the [`Action`] an event returns. Time is an argument, so tests run on paused
//! time without sockets. How an attachment closes (after local EOF, or at once on a failure)
//! is in `closing`.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::inbound::{Inbound, classify, merge_long_close};
use super::liveness::{Check, Liveness};
use super::state::SessionState;
use crate::close;
use crate::frame;
use closing::{Closing, Eof, close_message};
use outbox::Outbox;

mod closing;
mod outbox;

pub use super::end::PumpEnd;
pub use super::inbound::Role;
pub use super::liveness::{Flow, Keepalive};

/// Send an idle ACK this long after the last DATA if nothing else acknowledged it.
pub const IDLE_ACK_DELAY: Duration = Duration::from_millis(20);
/// After local end of input, how long to wait for the peer to acknowledge what we sent before
/// closing anyway (gcloud waits 10 s too).
pub const EOF_ACK_WAIT: Duration = Duration::from_secs(10);
/// After sending a close, how long to wait for the peer's close reply.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Messages queued for the WebSocket before we stop taking local input.
const OUTBOX_LIMIT: usize = 16;
/// How often the keepalive and idle-timeout rules are checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The rules one attachment follows.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Which end of the protocol we are.
    pub role: Role,
    /// Close code sent after local input ends.
    pub eof_close: u16,
    /// Dead-path detection (clients only: gcloud fails on pings from a relay).
    pub keepalive: Option<Keepalive>,
    /// Close with [`close::POLICY_VIOLATION`] after this long without DATA either way.
    pub idle_timeout: Option<Duration>,
}

impl Settings {
    /// Closes with [`close::NORMAL`] after local EOF; no keepalive, no idle timeout.
    pub fn new(role: Role) -> Self {
        Settings {
            role,
            eof_close: close::NORMAL,
            keepalive: None,
            idle_timeout: None,
        }
    }
}

/// What the driver must do after an event, beyond sending what is queued.
#[derive(Debug)]
#[must_use]
pub enum Action {
    /// Nothing more.
    Continue,
    /// Hand this received payload to the local side.
    Deliver(Bytes),
    /// The attachment is over.
    Stop(PumpEnd),
    /// The peer closed: the WebSocket has queued its close reply; give it up to
    /// [`CLOSE_WAIT`] to go out, then stop.
    FlushThenStop(PumpEnd),
    /// Send this close, with a short bounded try (the connection may be dead), then stop.
    CloseThenStop(Message, PumpEnd),
}

/// The decisions of one WebSocket attachment of a session.
#[derive(Debug)]
pub struct AttachState<'s> {
    state: &'s mut SessionState,
    settings: Settings,
    /// Messages for the WebSocket, and how far the DATA among them went out.
    outbox: Outbox,
    /// The WebSocket holds an automatic pong that must be flushed.
    flush: bool,
    /// When to send an idle ACK.
    ack_at: Option<Instant>,
    alive: Liveness,
    /// Next keepalive / idle check, when either is on.
    check_at: Option<Instant>,
    last_data: Instant,
    eof: Option<Eof>,
    closing: Option<Closing>,
    long_close: Option<(u32, String)>,
}

impl<'s> AttachState<'s> {
    /// A new attachment of a session whose byte accounting is `state`. `resend` goes out
    /// before anything else (the resend after a resume); `input_ended` says local input
    /// ended on an earlier attachment.
    pub fn new(
        state: &'s mut SessionState,
        settings: Settings,
        resend: Vec<Bytes>,
        input_ended: bool,
        now: Instant,
    ) -> Self {
        let checks = settings.keepalive.is_some() || settings.idle_timeout.is_some();
        let mut attach = AttachState {
            outbox: Outbox::new(resend, state.peer_acked()),
            flush: false,
            // A resumed session owes the peer an ACK for what arrived before the drop.
            ack_at: state.ack_pending().then(|| now + IDLE_ACK_DELAY),
            alive: Liveness::new(state.unacked() > 0, now),
            // The first check runs at once, as a tokio interval's first tick does.
            check_at: checks.then_some(now),
            last_data: now,
            eof: input_ended.then_some(Eof::WaitingUntil(now + EOF_ACK_WAIT)),
            closing: None,
            long_close: None,
            state,
            settings,
        };
        // A session resumed after local EOF may already have nothing left to send.
        attach.close_if_input_done(now);
        attach
    }

    /// The session's byte accounting.
    pub fn state(&self) -> &SessionState {
        self.state
    }

    /// What a relay watches to tell a client that stopped acknowledging.
    pub fn flow(&self) -> Flow {
        self.outbox.flow(self.state)
    }

    /// Whether our close is on its way (nothing but the peer's close reply is awaited).
    pub fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    /// Whether to read local input now: not after its end or our close, and not while the
    /// peer owes too many ACKs or the WebSocket is behind.
    pub fn wants_input(&self) -> bool {
        self.eof.is_none()
            && self.closing.is_none()
            && self.state.can_send()
            && self.outbox.len() < OUTBOX_LIMIT
    }

    /// Whether there is anything to send or flush.
    pub fn wants_send(&self) -> bool {
        !self.outbox.is_empty() || self.flush
    }

    /// Whether a message waits for [`next_outgoing`](Self::next_outgoing).
    pub fn has_outgoing(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// The next message for the WebSocket. Call it only when the WebSocket can take one: the
    /// message leaves the queue here.
    pub fn next_outgoing(&mut self, now: Instant) -> Option<Message> {
        let msg = self.outbox.pop()?;
        if self.outbox.is_empty() {
            self.close_if_input_done(now);
        }
        Some(msg)
    }

    /// Everything handed out was sent and flushed.
    pub fn on_sent(&mut self) {
        self.flush = false;
    }

    /// The earliest instant at which [`on_timer`](Self::on_timer) has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let (close, eof, check) = match (&self.closing, self.eof) {
            (Some(closing), _) => (Some(closing.deadline), None, None),
            (None, Some(Eof::WaitingUntil(at))) => (None, Some(at), self.check_at),
            (None, _) => (None, None, self.check_at),
        };
        [close, self.ack_at, eof, check].into_iter().flatten().min()
    }

    /// Timers that are due at `now`: the close wait, the idle ACK, the EOF wait, the
    /// keepalive and idle checks.
    pub fn on_timer(&mut self, now: Instant) -> Action {
        if self.closing.as_ref().is_some_and(|c| c.deadline <= now) {
            return Action::Stop(self.end_or(PumpEnd::LocalEof));
        }
        if self.ack_at.is_some_and(|at| at <= now) {
            self.ack_at = None;
            if self.closing.is_none()
                && let Some(n) = self.state.idle_ack()
            {
                self.outbox.push(Message::Binary(frame::ack(n)));
            }
        }
        if self.closing.is_some() {
            return Action::Continue;
        }
        if let Some(Eof::WaitingUntil(at)) = self.eof
            && at <= now
        {
            self.eof = Some(Eof::Expired);
            self.close_if_input_done(now);
        }
        match self.check_at {
            Some(at) if at <= now && self.closing.is_none() => {
                // Like a tokio interval that delays missed ticks: keep the beat, never burst.
                let next = at + CHECK_EVERY;
                self.check_at = Some(if next > now { next } else { now + CHECK_EVERY });
                self.check(now)
            }
            _ => Action::Continue,
        }
    }

    fn check(&mut self, now: Instant) -> Action {
        if let Some(limit) = self.settings.idle_timeout
            && now.saturating_duration_since(self.last_data) >= limit
        {
            self.close_now(
                close::POLICY_VIOLATION,
                close::REASON_IDLE_TIMEOUT,
                PumpEnd::IdleTimeout,
                now,
            );
            return Action::Continue;
        }
        if let Some(k) = self.settings.keepalive {
            match self.alive.check(k, self.state.unacked() > 0, now) {
                Check::Fine => {}
                Check::Ping => self.outbox.push(Message::Ping(Bytes::new())),
                Check::Dead(waited) => {
                    return Action::Stop(PumpEnd::TransportLost(format!(
                        "no answer from the relay for {}s",
                        waited.as_secs()
                    )));
                }
            }
        }
        Action::Continue
    }

    /// The stop signal fired: drop what is queued and close. A client stopping (ssh's SIGHUP
    /// at the end of a session) ends the tunnel in order; a relay shutting down is "going
    /// away".
    pub fn on_cancel(&mut self, now: Instant) {
        let (code, reason) = match self.settings.role {
            Role::Client => (close::NORMAL, ""),
            Role::Relay => (close::GOING_AWAY, close::REASON_SHUTTING_DOWN),
        };
        self.close_now(code, reason, PumpEnd::Cancelled, now);
    }

    /// A detach was requested with `code`. Unsent DATA stays in the resend buffer; the old
    /// connection may be dead, so the close is not waited on.
    pub fn on_detach(&mut self, code: u16) -> Action {
        Action::CloseThenStop(
            close_message(code, close::reason_text(code)),
            PumpEnd::Detached { code },
        )
    }

    /// A message arrived from the peer.
    pub fn on_message(&mut self, msg: Message, now: Instant) -> Action {
        self.alive.heard(now);
        let action = match msg {
            Message::Binary(bytes) => self.on_binary(&bytes, now),
            Message::Close(frame) => {
                let (code, reason) = match frame {
                    Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
                    None => (None, String::new()),
                };
                let (code, reason) = merge_long_close(code, reason, self.long_close.take());
                return Action::FlushThenStop(self.end_or(PumpEnd::PeerClosed { code, reason }));
            }
            // The WebSocket queued the pong itself; it must be flushed.
            Message::Ping(_) => {
                self.flush = true;
                Action::Continue
            }
            Message::Pong(_) => {
                self.alive.pong(now);
                Action::Continue
            }
            Message::Text(_) => {
                let code = match self.settings.role {
                    Role::Relay => close::INVALID_WEBSOCKET_OPCODE,
                    Role::Client => close::UNSUPPORTED_DATA,
                };
                let end = PumpEnd::Violation {
                    detail: "peer sent a text message".into(),
                    code,
                };
                self.begin_closing(code, close::reason_text(code), end, now);
                Action::Continue
            }
            Message::Frame(_) => Action::Continue,
        };
        // An ACK may have been the last one the end of local input waited for.
        self.close_if_input_done(now);
        action
    }

    fn on_binary(&mut self, bytes: &Bytes, now: Instant) -> Action {
        match classify(self.settings.role, self.state, bytes) {
            Inbound::Nothing => Action::Continue,
            Inbound::Data { payload, ack_now } => {
                self.last_data = now;
                if let Some(n) = ack_now {
                    self.outbox.push(Message::Binary(frame::ack(n)));
                    self.ack_at = None;
                } else if self.ack_at.is_none() {
                    self.ack_at = Some(now + IDLE_ACK_DELAY);
                }
                Action::Deliver(payload)
            }
            Inbound::LongClose(code, reason) => {
                self.long_close = Some((code, reason));
                Action::Continue
            }
            Inbound::Violation { detail, code } => {
                let end = PumpEnd::Violation { detail, code };
                self.begin_closing(code, close::reason_text(code), end, now);
                Action::Continue
            }
        }
    }

    /// The WebSocket broke (`detail` says how). After our close went out, that is the
    /// expected end, not a loss.
    pub fn on_lost(&mut self, detail: String) -> Action {
        Action::Stop(self.end_or(PumpEnd::TransportLost(detail)))
    }

    /// A DATA message (header included) was read from local input.
    pub fn on_local_data(&mut self, message: Bytes, now: Instant) {
        self.last_data = now;
        if self.state.unacked() == 0 {
            self.alive.waiting(now);
        }
        self.state.record_sent(message.clone());
        self.outbox.push_data(message);
    }

    /// Local input ended: close once the peer has acknowledged everything, or after
    /// [`EOF_ACK_WAIT`].
    pub fn on_local_eof(&mut self, now: Instant) {
        self.eof = Some(Eof::WaitingUntil(now + EOF_ACK_WAIT));
        self.close_if_input_done(now);
    }

    /// Reading local input failed.
    pub fn on_read_failed(&mut self, error: impl std::fmt::Display, now: Instant) {
        let (code, end) =
            self.local_failure(close::DESTINATION_READ_FAILED, "reading local input", error);
        self.begin_closing(code, close::reason_text(code), end, now);
    }

    /// Writing local output failed: what is queued for the WebSocket no longer matters.
    pub fn on_write_failed(&mut self, error: impl std::fmt::Display, now: Instant) {
        let (code, end) = self.local_failure(
            close::DESTINATION_WRITE_FAILED,
            "writing local output",
            error,
        );
        self.close_now(code, close::reason_text(code), end, now);
    }

    /// A relay reports its backend's failure with `relay_code`; a client ends in order.
    fn local_failure(
        &self,
        relay_code: u16,
        what: &str,
        error: impl std::fmt::Display,
    ) -> (u16, PumpEnd) {
        let code = match self.settings.role {
            Role::Relay => relay_code,
            Role::Client => close::NORMAL,
        };
        let error = format!("{what}: {error}");
        (code, PumpEnd::LocalFailed { error, code })
    }
}

#[cfg(test)]
mod tests;
