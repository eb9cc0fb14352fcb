//! Resuming a session after a lost connection: `/v4/reconnect` with backoff and jitter until
//! the budget runs out, and the notice shown when that takes a while.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::open::{Opened, Retry};
use super::{FIRST_FRAME_TIMEOUT, TunnelConfig};
use crate::client::dial::RelaySocket;
use crate::client::error::Error;
use crate::client::report;
use crate::session::pump::Session;

/// First retry after a loss: quick, since most drops are one-off resets.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Longest pause between reconnect attempts.
const MAX_RETRY: Duration = Duration::from_secs(20);
/// How long HTTP refusals of a resume (a load balancer with no node for the session) are
/// retried before the tunnel is given up: long enough for a balancer restart, short enough
/// that a user whose relay died is told so quickly.
pub(super) const REFUSED_RETRY_BUDGET: Duration = Duration::from_secs(30);

impl TunnelConfig {
    /// Resumes session `sid` on a new WebSocket, retrying with backoff until the budget runs
    /// out. Returns the socket and the messages to send again.
    ///
    /// Only `/v4/reconnect` is used: opening a new session instead could deliver bytes twice.
    pub(super) async fn resume<I, O>(
        &self,
        sid: &str,
        session: &mut Session<I, O>,
        why: &str,
        cancel: &CancellationToken,
    ) -> Result<(RelaySocket, Vec<bytes::Bytes>), Error> {
        let started = Instant::now();
        let mut pause = FIRST_RETRY;
        let mut attempts = 0u32;
        let mut notice = ResumeNotice {
            due: tokio::time::Instant::now() + report::RESUME_NOTICE_AFTER,
            line: report::resuming(&self.target.describe(self.port), why),
            shown: false,
        };
        let interrupted = || Error::other("interrupted while resuming the tunnel");
        loop {
            attempts += 1;
            let query = self.target.reconnect_query(sid, session.state.received());
            // A resume attempt never waits past the budget for the relay's answer.
            let wait = FIRST_FRAME_TIMEOUT.min(
                self.resume
                    .budget
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_secs(1)),
            );
            let attempt = notice
                .during(cancel, self.try_open("reconnect", &query, wait))
                .await
                .ok_or_else(interrupted)?;
            match attempt {
                Ok((ws, Opened::ResumedAt(relay_has))) => {
                    let resend = session.state.resume(relay_has).map_err(|e| {
                        Error::other(format!("the relay cannot resume the tunnel: {e}"))
                    })?;
                    tracing::info!(
                        sid = %sid,
                        attempts,
                        resent_bytes = session.state.unacked(),
                        after_ms = started.elapsed().as_millis() as u64,
                        "tunnel resumed"
                    );
                    if notice.shown {
                        report::notice(&report::resumed(
                            &self.target.describe(self.port),
                            started.elapsed(),
                        ));
                    }
                    return Ok((ws, resend));
                }
                Ok((_, Opened::Sid(_))) => {
                    return Err(Error::other(
                        "the relay broke the protocol: it answered a resume with a new session",
                    ));
                }
                Err((failure, Retry::No)) => return Err(self.refused(failure)),
                // A relay that keeps asking for a fresh token is not going to take ours.
                Err((failure, Retry::FreshToken))
                    if attempts > 3 || !self.credentials.can_refresh() =>
                {
                    return Err(self.refused(failure));
                }
                Err((_, Retry::FreshToken)) => {
                    // Refused (401 or 4004): the next attempt needs a new token, not the
                    // cached copy of this one.
                    self.credentials.forget_cached();
                }
                Err((failure, Retry::Refused))
                    if started.elapsed() + pause >= REFUSED_RETRY_BUDGET =>
                {
                    return Err(Error::other(format!(
                        "lost the connection to the relay at {} ({why}) and it refused to resume the session: {}",
                        self.dialer.endpoint.authority(),
                        failure.message
                    )));
                }
                Err((failure, _)) => {
                    if started.elapsed() + pause > self.resume.budget {
                        return Err(Error::other(format!(
                            "lost the connection to the relay at {} ({why}) and could not resume within {}s: {}",
                            self.dialer.endpoint.authority(),
                            self.resume.budget.as_secs(),
                            failure.message
                        )));
                    }
                    tracing::debug!(attempts, error = %failure.message, "resume attempt failed");
                }
            }
            notice
                .during(cancel, tokio::time::sleep(jitter(pause)))
                .await
                .ok_or_else(interrupted)?;
            pause = (pause * 2).min(MAX_RETRY);
        }
    }
}

/// The resume notice: shown once the resume has taken [`report::RESUME_NOTICE_AFTER`].
struct ResumeNotice {
    due: tokio::time::Instant,
    line: String,
    shown: bool,
}

impl ResumeNotice {
    /// Runs `fut` to completion, showing the notice when it falls due meanwhile. `None` when
    /// `cancel` fired first.
    async fn during<F: std::future::Future>(
        &mut self,
        cancel: &CancellationToken,
        fut: F,
    ) -> Option<F::Output> {
        tokio::pin!(fut);
        // Bounded: the notice arm fires at most once, then only the other two remain.
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep_until(self.due), if !self.shown => {
                    self.shown = true;
                    report::notice(&self.line);
                }
            }
        }
    }
}

/// `pause` plus up to 25 % random extra, so clients cut off together do not return together.
fn jitter(pause: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte);
    pause + pause.mul_f64(f64::from(byte[0]) / 1024.0)
}
