//! Whether a client has stopped acknowledging, decided from its attachment's [`Flow`] as the
//! pump publishes it (no I/O).
//!
//! gcloud 528 can stop acknowledging for good (a deadlock inside its own send thread, see
//! README "Compatibility"). It happens exactly when gcloud wants to acknowledge, that is with
//! more than [`ACK_THRESHOLD`] bytes unacknowledged, and the session then stops: at the
//! relay's unacknowledged bound, or earlier when the backend's own flow control (ssh's channel
//! window) runs out first. The relay cannot repair it, but it can say so: [`Stall`] decides
//! when a session has held more than a conforming client leaves unacknowledged, with no ACK,
//! long enough to be reported.

use std::time::{Duration, Instant};

use crate::session::pump::Flow;
use crate::session::state::ACK_THRESHOLD;

/// How long a session may hold more than [`ACK_THRESHOLD`] unacknowledged bytes with no ACK
/// before it is reported as stalled. A healthy client acknowledges within milliseconds (gcloud
/// and iap-ssh at once beyond the threshold; iap-ssh also after 20 ms idle).
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// Decides, from periodic looks at an attachment's [`Flow`], when a session has stalled: more
/// than [`ACK_THRESHOLD`] bytes handed to the client unacknowledged and no ACK for
/// [`STALL_AFTER`]. A client whose own reader is blocked (a paused terminal) is reported too:
/// it has stopped acknowledging as well. Reported once per stall; an ACK ends it.
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
    pub fn check(&mut self, flow: Flow, now: Instant) -> Option<Duration> {
        let acks = flow.acks;
        let full = flow.unacked > self.threshold;
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

    fn flow(unacked: u64, acks: u64) -> Flow {
        Flow { unacked, acks }
    }

    #[test]
    fn a_session_past_the_ack_threshold_without_acks_is_reported_once() {
        let mut stall = Stall::new();
        let t0 = Instant::now();
        let full = flow(48 * 1024, 0);
        assert_eq!(stall.check(full, t0), None);
        assert_eq!(stall.check(full, t0 + Duration::from_secs(9)), None);
        assert_eq!(
            stall.check(full, t0 + STALL_AFTER),
            Some(STALL_AFTER),
            "stalled"
        );
        assert_eq!(stall.check(full, t0 + Duration::from_secs(30)), None);
        // An ACK ends the stall, even one that repeats the position.
        let acked = flow(48 * 1024, 1);
        assert_eq!(stall.check(acked, t0 + Duration::from_secs(31)), None);
        assert_eq!(stall.check(acked, t0 + Duration::from_secs(40)), None);
        assert!(stall.check(acked, t0 + Duration::from_secs(41)).is_some());
    }

    #[test]
    fn a_session_within_the_ack_threshold_is_never_stalled() {
        let mut stall = Stall::new();
        let t0 = Instant::now();
        assert_eq!(stall.check(flow(ACK_THRESHOLD, 0), t0), None);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(stall.check(flow(ACK_THRESHOLD, 0), later), None);
    }
}
