//! Watching one attachment's flow control from outside the pump: how far the client has
//! acknowledged, and whether it has stopped acknowledging.
//!
//! gcloud 528 can stop acknowledging for good (a deadlock inside its own send thread, see
//! README "Compatibility"). It happens exactly when gcloud wants to acknowledge, that is with
//! more than [`ACK_THRESHOLD`] bytes unacknowledged, and the session then stops: at the
//! relay's unacknowledged bound, or earlier when the backend's own flow control (ssh's channel
//! window) runs out first. The relay cannot repair it, but it can say so: [`Stall`] decides
//! when a session has held more than a conforming client leaves unacknowledged, with no ACK,
//! long enough to be reported.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{Sink, Stream};
use tokio_tungstenite::tungstenite::Message;

use crate::frame::Frame;
use crate::session::state::ACK_THRESHOLD;

/// How long a session may hold more than [`ACK_THRESHOLD`] unacknowledged bytes with no ACK
/// before it is reported as stalled. A healthy client acknowledges within milliseconds (gcloud
/// and iap-ssh at once beyond the threshold; iap-ssh also after 20 ms idle).
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// Counters shared between the watched socket and the code that checks them.
#[derive(Debug, Default)]
pub struct Flow {
    /// Stream position just past the last DATA handed to the WebSocket.
    sent: AtomicU64,
    /// The client's last acknowledged position.
    acked: AtomicU64,
    /// ACK messages seen, so that an ACK repeating the same position still counts as life.
    acks: AtomicU64,
}

impl Flow {
    /// Counters for an attachment whose client has acknowledged up to `acked`.
    pub fn starting_at(acked: u64) -> Arc<Flow> {
        Arc::new(Flow {
            sent: AtomicU64::new(acked),
            acked: AtomicU64::new(acked),
            acks: AtomicU64::new(0),
        })
    }

    /// Bytes handed to the client and not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        self.sent
            .load(Ordering::Relaxed)
            .saturating_sub(self.acked.load(Ordering::Relaxed))
    }

    fn on_outgoing(&self, msg: &Message) {
        if let Message::Binary(bytes) = msg
            && let Ok(Frame::Data(payload)) = Frame::decode(bytes)
        {
            self.sent.fetch_add(payload.len() as u64, Ordering::Relaxed);
        }
    }

    fn on_incoming(&self, msg: &Message) {
        if let Message::Binary(bytes) = msg
            && let Ok(Frame::Ack(n)) = Frame::decode(bytes)
        {
            self.acked.fetch_max(n, Ordering::Relaxed);
            self.acks.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A WebSocket whose DATA out and ACKs in are counted in a [`Flow`]; otherwise unchanged.
#[derive(Debug)]
pub struct Watched<W> {
    inner: W,
    flow: Arc<Flow>,
}

impl<W> Watched<W> {
    /// Wraps `inner`, counting into `flow`.
    pub fn new(inner: W, flow: Arc<Flow>) -> Self {
        Watched { inner, flow }
    }
}

impl<W, E> Stream for Watched<W>
where
    W: Stream<Item = Result<Message, E>> + Unpin,
{
    type Item = Result<Message, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(msg))) = &polled {
            self.flow.on_incoming(msg);
        }
        polled
    }
}

impl<W> Sink<Message> for Watched<W>
where
    W: Sink<Message> + Unpin,
{
    type Error = W::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.flow.on_outgoing(&item);
        Pin::new(&mut self.inner).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Decides, from periodic looks at a [`Flow`], when a session has stalled: more than
/// [`ACK_THRESHOLD`] bytes unacknowledged and no ACK for [`STALL_AFTER`]. A client whose own
/// reader is blocked (a paused terminal) is reported too: it has stopped acknowledging as
/// well. Reported once per stall; an ACK ends it.
#[derive(Debug)]
pub struct Stall {
    threshold: u64,
    acks_seen: u64,
    full_since: Option<Instant>,
    reported: bool,
}

impl Stall {
    /// A detector for one attachment.
    pub fn new() -> Self {
        Stall {
            threshold: ACK_THRESHOLD,
            acks_seen: 0,
            full_since: None,
            reported: false,
        }
    }

    /// Looks at `flow` at `now`; returns how long the session has been stalled when it is
    /// newly found stalled.
    pub fn check(&mut self, flow: &Flow, now: Instant) -> Option<Duration> {
        let acks = flow.acks.load(Ordering::Relaxed);
        let full = flow.unacked() > self.threshold;
        if acks != self.acks_seen || !full {
            self.acks_seen = acks;
            self.full_since = full.then_some(now);
            self.reported = false;
            return None;
        }
        let since = *self.full_since.get_or_insert(now);
        let stalled = now.saturating_duration_since(since);
        if stalled >= STALL_AFTER && !self.reported {
            self.reported = true;
            return Some(stalled);
        }
        None
    }
}

impl Default for Stall {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Message {
        Message::Binary(crate::session::state::data_message(&vec![0u8; len]))
    }

    #[test]
    fn a_session_past_the_ack_threshold_without_acks_is_reported_once() {
        let flow = Flow::starting_at(1000);
        let mut stall = Stall::new();
        let t0 = Instant::now();
        for _ in 0..3 {
            flow.on_outgoing(&data(16 * 1024));
        }
        flow.on_outgoing(&Message::Ping(Vec::new().into()));
        assert_eq!(flow.unacked(), 48 * 1024);
        assert_eq!(stall.check(&flow, t0), None);
        assert_eq!(stall.check(&flow, t0 + Duration::from_secs(9)), None);
        assert_eq!(
            stall.check(&flow, t0 + STALL_AFTER),
            Some(STALL_AFTER),
            "stalled"
        );
        assert_eq!(stall.check(&flow, t0 + Duration::from_secs(30)), None);
        // An ACK ends the stall, even one that repeats the position.
        flow.on_incoming(&Message::Binary(crate::frame::ack(1000)));
        assert_eq!(stall.check(&flow, t0 + Duration::from_secs(31)), None);
        assert_eq!(stall.check(&flow, t0 + Duration::from_secs(40)), None);
        assert!(stall.check(&flow, t0 + Duration::from_secs(41)).is_some());
    }

    #[test]
    fn a_session_within_the_ack_threshold_is_never_stalled() {
        let flow = Flow::starting_at(0);
        let mut stall = Stall::new();
        flow.on_outgoing(&data(16 * 1024));
        flow.on_outgoing(&data(16 * 1024));
        let t0 = Instant::now();
        assert_eq!(stall.check(&flow, t0), None);
        assert_eq!(stall.check(&flow, t0 + Duration::from_secs(60)), None);
        flow.on_incoming(&Message::Binary(crate::frame::ack(32 * 1024)));
        assert_eq!(flow.unacked(), 0);
    }
}
