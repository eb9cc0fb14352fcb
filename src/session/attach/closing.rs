//! How an attachment closes: after local input ends and the peer has acknowledged it, or at
//! once on a failure, waiting a bounded time for the peer's reply either way.

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{AttachState, CLOSE_WAIT, PumpEnd};

/// Local input has ended; the close waits for the peer's ACK of everything, but not forever.
#[derive(Clone, Copy, Debug)]
pub(super) enum Eof {
    WaitingUntil(Instant),
    Expired,
}

/// Our close is queued; the peer has until `deadline` to answer it.
#[derive(Debug)]
pub(super) struct Closing {
    pub(super) deadline: Instant,
    pub(super) end: PumpEnd,
}

impl AttachState<'_> {
    /// Closes after local EOF once everything queued went out and the peer acknowledged all
    /// we sent, or the wait for that ran out.
    pub(super) fn close_if_input_done(&mut self, now: Instant) {
        let expired = match self.eof {
            None => return,
            Some(Eof::Expired) => true,
            Some(Eof::WaitingUntil(at)) => at <= now,
        };
        if self.outbox.is_empty() && (self.state.unacked() == 0 || expired) {
            self.begin_closing(self.settings.eof_close, "", PumpEnd::LocalEof, now);
        }
    }

    /// Queues our close and starts waiting for the peer's reply; only the first call counts.
    pub(super) fn begin_closing(&mut self, code: u16, reason: &str, end: PumpEnd, now: Instant) {
        if self.closing.is_some() {
            return;
        }
        self.outbox.push(close_message(code, reason));
        self.closing = Some(Closing {
            deadline: now + CLOSE_WAIT,
            end,
        });
    }

    /// Begins closing, dropping what is still queued: none of it matters any more.
    pub(super) fn close_now(&mut self, code: u16, reason: &str, end: PumpEnd, now: Instant) {
        if self.closing.is_none() {
            self.outbox.clear();
        }
        self.begin_closing(code, reason, end, now);
    }

    /// How the attachment ends: as our close said, if we sent one, or as `otherwise`.
    pub(super) fn end_or(&mut self, otherwise: PumpEnd) -> PumpEnd {
        self.closing.take().map_or(otherwise, |c| c.end)
    }
}

/// A WebSocket close message with `code` and `reason`.
pub(super) fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    }))
}
