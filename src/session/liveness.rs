//! Dead-path detection for a client (no I/O): when to ping a relay that has gone quiet, and
//! when its silence means the path is gone. Also the numbers by which a relay tells that its
//! client has stopped acknowledging ([`Flow`]).

use std::time::Duration;

use tokio::time::Instant;

/// Dead-path detection for a client: a relay that stops answering is noticed in bounded
/// time even when TCP never reports an error (a black hole). A relay that answers pings is
/// never torn down while it keeps answering, however long it takes to acknowledge our data
/// (see `Liveness`).
#[derive(Clone, Copy, Debug)]
pub struct Keepalive {
    /// Send a WebSocket ping after this long without hearing from the relay (after half of
    /// `timeout` while sent data waits for its acknowledgement).
    pub interval: Duration,
    /// Declare the path dead when a ping stays unanswered this long, once the relay has
    /// answered one on this connection; before that, when the relay is silent this long while
    /// sent data waits for its acknowledgement.
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What the keepalive check found.
pub(super) enum Check {
    Fine,
    Ping,
    Dead(Duration),
}

/// When we last heard from the peer, and whether we are waiting on it.
///
/// Nothing documents how soon Google's relay acknowledges DATA; an interactive session's small
/// writes might wait longer than [`Keepalive::timeout`] for their ACK. So silence while data
/// is outstanding only prompts a ping (after half the timeout), and a path whose relay answers
/// pings is never declared dead while it keeps answering: a pong counts as life. Only a relay
/// that has not answered a ping on this connection is judged by the silence alone, which is
/// what tells a black hole from a slow relay.
#[derive(Debug)]
pub(super) struct Liveness {
    heard: Instant,
    /// Since when we have been waiting for an answer to data (sent data not yet acknowledged).
    waiting_since: Option<Instant>,
    /// The first ping sent since we last heard from the peer.
    unanswered_since: Option<Instant>,
    /// The last ping sent, for pacing.
    last_ping: Option<Instant>,
    answers_pings: bool,
}

impl Liveness {
    pub(super) fn new(waiting: bool, now: Instant) -> Self {
        Liveness {
            heard: now,
            waiting_since: waiting.then_some(now),
            unanswered_since: None,
            last_ping: None,
            answers_pings: false,
        }
    }

    /// Anything arrived from the peer.
    pub(super) fn heard(&mut self, now: Instant) {
        self.heard = now;
        self.unanswered_since = None;
    }

    pub(super) fn pong(&mut self, now: Instant) {
        self.answers_pings = true;
        self.heard(now);
    }

    pub(super) fn waiting(&mut self, now: Instant) {
        self.waiting_since = Some(now);
    }

    fn ping(&mut self, now: Instant) -> Check {
        self.last_ping = Some(now);
        self.unanswered_since.get_or_insert(now);
        Check::Ping
    }

    pub(super) fn check(&mut self, k: Keepalive, data_outstanding: bool, now: Instant) -> Check {
        if !data_outstanding {
            self.waiting_since = None;
        }
        let silent = now - self.heard;
        // A relay that answers pings is dead only once a ping stays unanswered for the timeout.
        if self.answers_pings
            && self
                .unanswered_since
                .is_some_and(|sent| now - sent > k.timeout)
        {
            return Check::Dead(silent);
        }
        if let Some(since) = self.waiting_since {
            let waited = now - since.max(self.heard);
            // A relay that never answered a ping: silence while we wait on it is all we have.
            if !self.answers_pings && waited > k.timeout {
                return Check::Dead(waited);
            }
            if self.unanswered_since.is_none() && waited >= k.timeout / 2 {
                return self.ping(now);
            }
        }
        let ping_due = self.last_ping.is_none_or(|last| now - last >= k.interval);
        if silent >= k.interval && ping_due {
            return self.ping(now);
        }
        Check::Fine
    }
}

/// How far the peer's acknowledgements lag what one attachment handed to its WebSocket. A
/// relay looks at it from outside the pump to tell when a client has stopped acknowledging
/// (`relay::watch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// DATA payload bytes handed to the WebSocket and not yet acknowledged.
    pub unacked: u64,
    /// ACK messages received in the session so far: one repeating a position still counts.
    pub acks: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: Keepalive = Keepalive {
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(10),
    };

    /// Runs the once-a-second keepalive check for `secs` seconds from `start`, with `answer`
    /// deciding whether a ping sent at a given second is answered at once. Returns the checks
    /// that were not `Fine`, by second.
    fn run(
        secs: u64,
        waiting: bool,
        answer: impl Fn(u64) -> bool,
        data_from_peer: &[u64],
    ) -> Vec<(u64, &'static str)> {
        let start = Instant::now();
        let mut alive = Liveness::new(waiting, start);
        let mut seen = Vec::new();
        for s in 1..=secs {
            let now = start + Duration::from_secs(s);
            if data_from_peer.contains(&s) {
                alive.heard(now);
            }
            match alive.check(K, waiting, now) {
                Check::Fine => {}
                Check::Ping => {
                    seen.push((s, "ping"));
                    if answer(s) {
                        alive.pong(now + Duration::from_millis(30));
                    }
                }
                Check::Dead(_) => {
                    seen.push((s, "dead"));
                    break;
                }
            }
        }
        seen
    }

    /// The second at which `run` gave the connection up, if it did.
    fn dead_at(seen: &[(u64, &str)]) -> Option<u64> {
        seen.iter()
            .find(|(_, what)| *what == "dead")
            .map(|(s, _)| *s)
    }

    #[test]
    fn a_relay_that_answers_pings_is_never_torn_down_while_data_waits_for_its_ack() {
        let seen = run(120, true, |_| true, &[]);
        assert!(seen.iter().all(|(_, what)| *what == "ping"), "{seen:?}");
        // Pings go out every half timeout while the data waits.
        assert_eq!(seen.first(), Some(&(5, "ping")));
        assert!(seen.len() >= 20, "{seen:?}");
    }

    #[test]
    fn a_black_hole_is_noticed() {
        // Never answered a ping on this connection: silence while data waits decides.
        assert_eq!(run(60, true, |_| false, &[]), [(5, "ping"), (11, "dead")]);
        // Answered pings until second 30, then nothing: the unanswered ping decides.
        let seen = run(120, true, |s| s < 30, &[]);
        let dead = dead_at(&seen);
        assert!(dead.is_some_and(|s| (30..=47).contains(&s)), "{seen:?}");
        // Idle, pings answered until 30: dead within interval + timeout of the last answer.
        let seen = run(120, false, |s| s < 30, &[]);
        let dead = dead_at(&seen);
        assert!(dead.is_some_and(|s| (30..=52).contains(&s)), "{seen:?}");
    }

    #[test]
    fn an_idle_relay_that_ignores_pings_is_left_alone() {
        let seen = run(120, false, |_| false, &[]);
        assert!(seen.iter().all(|(_, what)| *what == "ping"), "{seen:?}");
        assert_eq!(seen.first(), Some(&(10, "ping")));
    }
}
