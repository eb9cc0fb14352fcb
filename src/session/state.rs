//! Byte accounting of one relay session, shared by client and relay (no I/O).
//!
//! Each side counts the DATA payload bytes it has sent and received since the session began.
//! ACK values are absolute positions in those streams (protocol.md §5.1). Bytes sent but not
//! yet acknowledged stay in a bounded buffer so they can be sent again after a reconnect; when
//! the buffer is full the caller stops reading local input, which is what bounds memory.

use std::collections::VecDeque;
use std::fmt;

use bytes::{Bytes, BytesMut};

use crate::frame::{self, DATA_HEADER_LEN};

/// Acknowledge once more than this many received bytes are unacknowledged, as gcloud does
/// (twice the 16 KiB frame size); an idle timer covers the remainder.
pub const ACK_THRESHOLD: u64 = 2 * frame::MAX_ARRAY_LEN as u64;

/// Default bound on sent-but-unacknowledged bytes. Google's relay stalls a peer that leaves
/// about 1–1.5 MB unacknowledged, so we hold ourselves to the same order of magnitude.
pub const DEFAULT_MAX_UNACKED: usize = 1024 * 1024;

/// A peer broke the acknowledgement rules; the session cannot continue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AckError {
    /// An ACK lower than one already received.
    Backwards {
        /// The value received.
        ack: u64,
        /// The highest value received before.
        previous: u64,
    },
    /// An ACK (or resume position) for bytes that were never sent.
    BeyondSent {
        /// The value received.
        ack: u64,
        /// Bytes sent so far.
        sent: u64,
    },
    /// A resume position before bytes the peer had already acknowledged (we dropped them).
    Rewind {
        /// The position the peer asked to resume from.
        position: u64,
        /// The oldest position still buffered.
        oldest: u64,
    },
}

impl fmt::Display for AckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AckError::Backwards { ack, previous } => {
                write!(
                    f,
                    "peer acknowledged {ack} bytes after acknowledging {previous}"
                )
            }
            AckError::BeyondSent { ack, sent } => {
                write!(f, "peer acknowledged {ack} bytes but only {sent} were sent")
            }
            AckError::Rewind { position, oldest } => write!(
                f,
                "peer asked to resume from byte {position} but bytes before {oldest} are gone"
            ),
        }
    }
}

impl std::error::Error for AckError {}

/// Counters and the resend buffer of one session.
#[derive(Debug)]
pub struct SessionState {
    /// DATA payload bytes sent (handed to a transport) since the session began.
    sent: u64,
    /// Highest ACK the peer sent: it holds every byte before this position.
    peer_acked: u64,
    /// Whole DATA messages not yet acknowledged, oldest first. The first one starts at
    /// `peer_acked - front_acked`.
    unacked: VecDeque<Bytes>,
    /// Payload bytes of `unacked[0]` the peer has already acknowledged.
    front_acked: usize,
    /// DATA payload bytes received since the session began.
    received: u64,
    /// The last ACK value we sent.
    ack_sent: u64,
    /// ACK messages received, valid or not: one repeating a position still shows the peer
    /// is acknowledging.
    acks_received: u64,
    max_unacked: usize,
}

impl Default for SessionState {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_UNACKED)
    }
}

impl SessionState {
    /// A fresh session that buffers at most about `max_unacked` unacknowledged bytes.
    pub fn new(max_unacked: usize) -> Self {
        SessionState {
            sent: 0,
            peer_acked: 0,
            unacked: VecDeque::new(),
            front_acked: 0,
            received: 0,
            ack_sent: 0,
            acks_received: 0,
            max_unacked,
        }
    }

    /// Total payload bytes sent.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Total payload bytes received.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Highest position the peer acknowledged.
    pub fn peer_acked(&self) -> u64 {
        self.peer_acked
    }

    /// How many ACK messages the peer has sent since the session began.
    pub fn acks_received(&self) -> u64 {
        self.acks_received
    }

    /// Bytes sent and not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        self.sent - self.peer_acked
    }

    /// Whether another DATA message may be sent. When this is false the caller stops reading
    /// its local input until an ACK arrives: back-pressure instead of an unbounded buffer.
    pub fn can_send(&self) -> bool {
        self.unacked() < self.max_unacked as u64
    }

    /// Records a DATA message (header included) as sent, keeping it for a possible resend.
    /// The buffer holds the same allocation the transport sends, so this costs no copy.
    pub fn record_sent(&mut self, data_message: Bytes) {
        let payload = data_message.len().saturating_sub(DATA_HEADER_LEN);
        self.sent += payload as u64;
        self.unacked.push_back(data_message);
    }

    /// Applies an ACK from the peer.
    ///
    /// # Errors
    /// [`AckError`] when the value goes backwards or exceeds what was sent.
    pub fn on_ack(&mut self, ack: u64) -> Result<(), AckError> {
        self.acks_received += 1;
        if ack < self.peer_acked {
            return Err(AckError::Backwards {
                ack,
                previous: self.peer_acked,
            });
        }
        self.within_sent(ack)?;
        self.release(ack);
        Ok(())
    }

    /// A position the peer claims to hold must not be past what we sent.
    fn within_sent(&self, ack: u64) -> Result<(), AckError> {
        if ack > self.sent {
            return Err(AckError::BeyondSent {
                ack,
                sent: self.sent,
            });
        }
        Ok(())
    }

    /// Counts `len` received payload bytes. Returns the ACK to send now, if the unacknowledged
    /// amount crossed [`ACK_THRESHOLD`].
    pub fn on_data(&mut self, len: usize) -> Option<u64> {
        self.received += len as u64;
        (self.received - self.ack_sent > ACK_THRESHOLD).then(|| self.mark_ack(self.received))
    }

    /// The ACK to send when the connection goes idle, if anything is unacknowledged.
    pub fn idle_ack(&mut self) -> Option<u64> {
        (self.received > self.ack_sent).then(|| self.mark_ack(self.received))
    }

    /// Whether received bytes are waiting for an idle ACK.
    pub fn ack_pending(&self) -> bool {
        self.received > self.ack_sent
    }

    fn mark_ack(&mut self, n: u64) -> u64 {
        self.ack_sent = n;
        n
    }

    /// Resumes after a reconnect at which the peer says it holds `position` of our bytes.
    /// Returns the DATA messages to send again, in order, before any new data. Our own
    /// received count does not change: the peer resumes its stream from there.
    ///
    /// The ACK the peer sees next must be re-sent, since the last one may have been lost with
    /// the old connection, so `ack_sent` is reset to force an idle ACK.
    ///
    /// # Errors
    /// [`AckError::Rewind`] when `position` is before bytes already dropped, and
    /// [`AckError::BeyondSent`] when it is after what was sent.
    pub fn resume(&mut self, position: u64) -> Result<Vec<Bytes>, AckError> {
        if position < self.peer_acked {
            return Err(AckError::Rewind {
                position,
                oldest: self.peer_acked,
            });
        }
        self.within_sent(position)?;
        self.release(position);
        self.ack_sent = 0;
        let mut resend: Vec<Bytes> = self.unacked.iter().cloned().collect();
        if let Some(first) = resend.first_mut()
            && self.front_acked > 0
        {
            *first = data_message(
                first
                    .get(DATA_HEADER_LEN + self.front_acked..)
                    .unwrap_or_default(),
            );
        }
        Ok(resend)
    }

    /// Drops buffered messages wholly before `position` and remembers a partly acknowledged
    /// front message. `peer_acked <= position <= sent` holds on entry.
    fn release(&mut self, position: u64) {
        let mut to_drop = position - self.peer_acked;
        while to_drop > 0 {
            let Some(front) = self.unacked.front() else {
                break;
            };
            let left = (front.len() - DATA_HEADER_LEN - self.front_acked) as u64;
            if to_drop >= left {
                self.unacked.pop_front();
                self.front_acked = 0;
                to_drop -= left;
            } else {
                self.front_acked += to_drop as usize;
                to_drop = 0;
            }
        }
        self.peer_acked = position;
    }
}

/// Builds a DATA message carrying a copy of `payload` (used only for the rare partial resend).
pub fn data_message(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(DATA_HEADER_LEN + payload.len());
    frame::Frame::Data(payload).encode(&mut out);
    out.freeze()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod properties;
