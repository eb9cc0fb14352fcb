//! The messages an attachment has queued for its WebSocket, and how far the DATA among them
//! has been handed over: a relay compares that, not what is merely queued, with the peer's
//! ACKs to tell a client that stopped acknowledging.

use std::collections::VecDeque;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Message;

use super::Flow;
use crate::frame::DATA_HEADER_LEN;
use crate::session::state::SessionState;

/// Messages for the WebSocket, oldest first, each with the DATA payload bytes it carries.
#[derive(Debug)]
pub(super) struct Outbox {
    queue: VecDeque<(Message, u64)>,
    /// Stream position just past the last DATA handed to the WebSocket.
    handed: u64,
}

impl Outbox {
    /// The outbox of an attachment whose peer holds everything before `acked`, starting with
    /// the DATA messages `resend`.
    pub(super) fn new(resend: Vec<Bytes>, acked: u64) -> Self {
        let mut outbox = Outbox {
            queue: VecDeque::with_capacity(resend.len()),
            handed: acked,
        };
        resend.into_iter().for_each(|m| outbox.push_data(m));
        outbox
    }

    /// Queues a message that carries no DATA (an ACK, a ping, a close).
    pub(super) fn push(&mut self, msg: Message) {
        self.queue.push_back((msg, 0));
    }

    /// Queues a DATA message (header included).
    pub(super) fn push_data(&mut self, message: Bytes) {
        let payload = message.len().saturating_sub(DATA_HEADER_LEN) as u64;
        self.queue.push_back((Message::Binary(message), payload));
    }

    /// The oldest message, now handed to the WebSocket.
    pub(super) fn pop(&mut self) -> Option<Message> {
        let (msg, data) = self.queue.pop_front()?;
        self.handed += data;
        Some(msg)
    }

    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Drops what is queued; none of it was handed over.
    pub(super) fn clear(&mut self) {
        self.queue.clear();
    }

    /// What was handed over and `state`'s peer has not acknowledged, and its ACKs so far.
    pub(super) fn flow(&self, state: &SessionState) -> Flow {
        Flow {
            unacked: self.handed.saturating_sub(state.peer_acked()),
            acks: state.acks_received(),
        }
    }
}
