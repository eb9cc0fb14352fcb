//! One client tunnel: dial, wait for the session id, pump bytes, and turn every way it can
//! end into an exit status and a one-line message.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

use super::auth::Credentials;
use super::dial::{self, Dialer, RelaySocket};
use super::error::{Error, ExitKind};
use super::report;
use crate::close::{self, Disposition};
use crate::frame::Frame;
use crate::session::local::{LocalInput, LocalOutput};
use crate::session::pump::{self, Attach, Keepalive, PumpEnd, Role, Session};
use crate::target::Target;

/// How long to wait for the relay's first message (gcloud waits 60 s too: the relay dials the
/// backend before answering, and a booting VM can be slow).
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(60);

/// How a tunnel survives a lost connection.
#[derive(Clone, Copy, Debug)]
pub struct ResumeSettings {
    /// Give up resuming after this long without a working connection (gcloud: 15 min).
    pub budget: Duration,
    /// Dead-path detection; `None` relies on TCP errors alone.
    pub keepalive: Option<Keepalive>,
}

impl Default for ResumeSettings {
    fn default() -> Self {
        ResumeSettings {
            budget: Duration::from_secs(15 * 60),
            keepalive: Some(Keepalive::default()),
        }
    }
}

/// How long to wait for the close that should follow a LONG_CLOSE before reporting it.
const LONG_CLOSE_WAIT: Duration = Duration::from_secs(2);
/// First retry after a loss: quick, since most drops are one-off resets.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Longest pause between reconnect attempts.
const MAX_RETRY: Duration = Duration::from_secs(20);
/// How long HTTP refusals of a resume (a load balancer with no node for the session) are
/// retried before the tunnel is given up: long enough for a balancer restart, short enough
/// that a user whose relay died is told so quickly.
const REFUSED_RETRY_BUDGET: Duration = Duration::from_secs(30);

/// What a client tunnel needs: where, what, and with which credentials.
#[derive(Debug)]
pub struct TunnelConfig {
    /// How to reach the relay.
    pub dialer: Dialer,
    /// The destination.
    pub target: Target,
    /// The destination port.
    pub port: u16,
    /// Where tokens come from.
    pub credentials: Credentials,
    /// Reconnect behaviour.
    pub resume: ResumeSettings,
    /// `X-Goog-Request-Reason` for every handshake (gcloud's `--request-reason`).
    pub request_reason: Option<HeaderValue>,
    /// The proxy token traffic goes through (the tunnel's choice among `--proxy`, gcloud's
    /// `proxy/*` and `HTTPS_PROXY`), if any.
    pub token_proxy: Option<super::proxy::Proxy>,
    /// Where settings came from, as `(name, "value (source)")`, for `--check`.
    pub origins: Vec<(String, String)>,
}

/// The relay's first message on a new WebSocket.
enum Opened {
    Sid(String),
    ResumedAt(u64),
}

impl TunnelConfig {
    fn close_failure(&self, code: u16, reason: &str) -> Error {
        Error::from_close(code, reason, &self.target.describe(self.port), self.port)
    }

    /// Opens `/v4/<path>` with a token and reads the relay's first message. A token the
    /// relay refuses (HTTP 401 or close 4004) is dropped from the cache and replaced by a
    /// fresh one from the source, once.
    async fn open(&self, path: &str, query: &str) -> Result<(RelaySocket, Opened), Error> {
        match self.try_open(path, query, FIRST_FRAME_TIMEOUT).await {
            Err((_, Retry::FreshToken)) if self.credentials.can_refresh() => {
                tracing::info!(
                    source = %self.credentials.describe(),
                    "the relay refused the token; fetching a fresh one"
                );
                self.credentials.forget_cached();
                self.try_open(path, query, FIRST_FRAME_TIMEOUT)
                    .await
                    .map_err(|(f, _)| self.refused(f))
            }
            other => other.map_err(|(f, _)| self.refused(f)),
        }
    }

    /// A refusal of the token (HTTP 401 at the upgrade) names the source and principal it
    /// came from.
    fn refused(&self, failure: Error) -> Error {
        if failure.http_status != Some(401) {
            return failure;
        }
        Error::auth(format!(
            "the relay at {} refused the token from {} (HTTP 401): check that this identity may use the relay, or choose another source with --credentials or --access-token-file",
            self.dialer.endpoint.authority(),
            self.credentials.describe_with_identity()
        ))
    }

    /// Like [`open`](Self::open), also telling whether a failure is worth retrying during a
    /// resume: network trouble is, refusals by the relay are not, except 4004.
    async fn try_open(
        &self,
        path: &str,
        query: &str,
        first_frame_wait: Duration,
    ) -> Result<(RelaySocket, Opened), (Error, Retry)> {
        let token = self.credentials.token().await.map_err(|e| {
            // A network failure while fetching a token is worth retrying during a resume.
            let retry = if e.kind == ExitKind::Other {
                Retry::Yes
            } else {
                Retry::No
            };
            (e, retry)
        })?;
        let mut ws = self
            .dialer
            .open_with(path, query, &token, self.request_reason.as_ref())
            .await
            .map_err(|e| {
                let retry = match (e.kind, e.http_status) {
                    // The token was refused: a fresh one may do.
                    (ExitKind::Authentication, Some(401)) => Retry::FreshToken,
                    // A relay or load balancer refusing the upgrade (e.g. 503: the node holding
                    // the session is gone) is retried briefly, not for the whole budget.
                    (ExitKind::Other, Some(_)) => Retry::Refused,
                    (ExitKind::Other, None) => Retry::Yes,
                    _ => Retry::No,
                };
                (e, retry)
            })?;
        let waited_from = std::time::Instant::now();
        let opened = self.first_message(&mut ws, path, first_frame_wait).await?;
        tracing::debug!(
            ms = dial::millis(waited_from.elapsed()),
            "handshake: first message from the relay"
        );
        Ok((ws, opened))
    }

    /// Reads the relay's first relay message on a new WebSocket: the session id after a
    /// connect, the resume position after a reconnect, or a close.
    ///
    /// WebSocket pings and pongs may come at any time (tungstenite answers pings itself), so
    /// they are skipped; the deadline covers them too, so a ping flood cannot stall us. As in
    /// gcloud, messages with unknown tags are ignored and trailing bytes after a message are
    /// dropped. A LONG_CLOSE is kept: its code and reason are what the user sees when the close
    /// that follows it carries none (or does not come within [`LONG_CLOSE_WAIT`]).
    async fn first_message(
        &self,
        ws: &mut RelaySocket,
        path: &str,
        first_frame_wait: Duration,
    ) -> Result<Opened, (Error, Retry)> {
        let violation = |m: String| (Error::other(m), Retry::No);
        let mut deadline = tokio::time::Instant::now() + first_frame_wait;
        let mut long_close: Option<(u32, String)> = None;
        loop {
            let next = match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(next) => next,
                Err(_) if long_close.is_some() => None,
                Err(_) => {
                    let failure = Error::other(format!(
                        "the relay at {} did not confirm the tunnel to {} within {}s",
                        self.dialer.endpoint.authority(),
                        self.target.describe(self.port),
                        first_frame_wait.as_secs()
                    ));
                    return Err((failure, Retry::Yes));
                }
            };
            let bytes = match next {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Binary(bytes))) => bytes,
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = match frame {
                        Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
                        None => (None, String::new()),
                    };
                    let (code, reason) = pump::merge_long_close(code, reason, long_close);
                    return Err(self.refusal(code, &reason));
                }
                Some(Ok(other)) => {
                    return Err(violation(format!(
                        "the relay broke the protocol: its first message was a {} message, not a session id",
                        message_kind(&other)
                    )));
                }
                Some(Err(_)) | None if long_close.is_some() => {
                    let (code, reason) = pump::merge_long_close(None, String::new(), long_close);
                    return Err(self.refusal(code, &reason));
                }
                Some(Err(e)) => {
                    let failure = Error::other(format!(
                        "the connection to the relay failed before the tunnel opened: {e}"
                    ));
                    return Err((failure, Retry::Yes));
                }
                None => {
                    let failure =
                        Error::other("the relay closed the connection before the tunnel opened");
                    return Err((failure, Retry::Yes));
                }
            };
            let frame = match Frame::decode_tolerant(&bytes) {
                Ok((frame, extra)) => {
                    if extra > 0 {
                        tracing::debug!(message_kind = ?frame, extra, "ignored trailing bytes after a relay message");
                    }
                    frame
                }
                Err(e) => return Err(violation(format!("the relay broke the protocol: {e}"))),
            };
            match (frame, path) {
                (Frame::ConnectSuccessSid(sid), "connect") => {
                    return Ok(Opened::Sid(String::from_utf8_lossy(sid).into_owned()));
                }
                (Frame::ReconnectSuccessAck(n), "reconnect") => return Ok(Opened::ResumedAt(n)),
                (Frame::Unknown(tag), _) => {
                    tracing::debug!(tag = %format_args!("{tag:#06x}"), "ignored a relay message with an unknown tag");
                }
                (Frame::LongClose { code, reason }, _) => {
                    long_close = Some((code, String::from_utf8_lossy(reason).into_owned()));
                    deadline = deadline.min(tokio::time::Instant::now() + LONG_CLOSE_WAIT);
                }
                (other, _) => {
                    return Err(violation(format!(
                        "the relay broke the protocol: its first message was {other:?}, not a session id"
                    )));
                }
            }
        }
    }

    /// A close received instead of the first message, and whether a resume should try again:
    /// with a fresh token after 4004; at all after 4002, since the relay may still hold the
    /// connection we lost (Google's relay may notice its loss later than we did).
    fn refusal(&self, code: u16, reason: &str) -> (Error, Retry) {
        let retry = match code {
            close::REAUTHENTICATION_REQUIRED => Retry::FreshToken,
            close::SID_IN_USE => Retry::Yes,
            _ => Retry::No,
        };
        (self.close_failure(code, reason), retry)
    }

    /// Opens a new session and waits for its id.
    ///
    /// # Errors
    /// An [`Error`] for a token, dial, or relay refusal (close codes such as 4033).
    pub async fn connect(&self) -> Result<(RelaySocket, String), Error> {
        match self
            .open("connect", &self.target.connect_query(self.port))
            .await?
        {
            (ws, Opened::Sid(sid)) => Ok((ws, sid)),
            (_, Opened::ResumedAt(_)) => Err(Error::other(
                "the relay broke the protocol: it answered a new session with a resume",
            )),
        }
    }

    /// Resumes session `sid` on a new WebSocket, retrying with backoff until the budget runs
    /// out. Returns the socket and the messages to send again.
    ///
    /// Only `/v4/reconnect` is used: opening a new session instead could deliver bytes twice.
    async fn resume<I, O>(
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

    /// Runs a whole tunnel over `session`'s local ends, resuming after connection losses.
    ///
    /// # Errors
    /// An [`Error`] whenever the tunnel did not end in order.
    pub async fn run<I: LocalInput, O: LocalOutput>(
        &self,
        session: &mut Session<I, O>,
        cancel: &CancellationToken,
    ) -> Result<(), Error> {
        let (mut ws, sid) = tokio::select! {
            connected = self.connect() => connected?,
            () = cancel.cancelled() => return Err(Error::other("interrupted before the tunnel opened")),
        };
        let opened_at = Instant::now();
        let target = self.target.describe(self.port);
        tracing::info!(
            "{}",
            report::tunnel_opened(
                &self.dialer.endpoint.authority(),
                &target,
                &self.credentials.describe(),
                self.credentials.identity().as_deref(),
                &sid,
            )
        );
        let mut resumes = 0u32;
        let mut resend = Vec::new();
        let result = loop {
            let mut attach = Attach::new(Role::Client, cancel);
            attach.resend = std::mem::take(&mut resend);
            attach.keepalive = self.resume.keepalive;
            let end = pump::run(session, ws, attach).await;
            tracing::debug!(
                ?end,
                sent = session.state.sent(),
                received = session.state.received(),
                "connection ended"
            );
            if end.resumable() {
                if matches!(
                    end,
                    PumpEnd::PeerClosed {
                        code: close::REAUTHENTICATION_REQUIRED,
                        ..
                    }
                ) {
                    // The relay wants a new token, not the cached copy of the old one.
                    self.credentials.forget_cached();
                }
                let why = match &end {
                    PumpEnd::PeerClosed { code, .. } => format!("close {code}"),
                    PumpEnd::TransportLost(detail) => detail.clone(),
                    other => format!("{other:?}"),
                };
                tracing::info!(sid = %sid, reason = %why, "connection lost, resuming");
                match self.resume(&sid, session, &why, cancel).await {
                    Ok((new_ws, frames)) => {
                        ws = new_ws;
                        resend = frames;
                        resumes += 1;
                        continue;
                    }
                    Err(e) => break Err(e),
                }
            }
            break match end {
                PumpEnd::LocalEof | PumpEnd::Cancelled => Ok(()),
                PumpEnd::PeerClosed { code, reason } => match close::disposition(code) {
                    Disposition::Finished => Ok(()),
                    Disposition::Resumable | Disposition::Fatal => {
                        Err(self.close_failure(code, &reason))
                    }
                },
                PumpEnd::TransportLost(detail) => Err(Error::other(format!(
                    "lost the connection to the relay at {}: {detail}",
                    self.dialer.endpoint.authority()
                ))),
                PumpEnd::LocalFailed { error, .. } => Err(Error::other(error)),
                PumpEnd::Violation { detail, .. } => Err(Error::other(format!(
                    "the relay broke the protocol: {detail}"
                ))),
                PumpEnd::Detached { code } => Err(Error::other(format!(
                    "the tunnel was detached with code {code}"
                ))),
                PumpEnd::IdleTimeout => Err(Error::other("the tunnel was idle too long")),
            };
        };
        // Whatever arrived before the end still belongs to the user.
        let result = match session.drain_output().await {
            Err(e) if result.is_ok() => Err(Error::other(format!("writing local output: {e}"))),
            _ => result,
        };
        tracing::info!(
            "{}",
            report::tunnel_ended(
                &target,
                opened_at.elapsed(),
                session.state.sent(),
                session.state.received(),
                resumes,
            )
        );
        result
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

/// Whether a failed resume attempt is worth another try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Network trouble: try again after a pause.
    Yes,
    /// The relay asked for re-authentication (4004): try again with a fresh token.
    FreshToken,
    /// The upgrade got an HTTP error: try again for [`REFUSED_RETRY_BUDGET`] only.
    Refused,
    /// A refusal or protocol violation: final.
    No,
}

/// `pause` plus up to 25 % random extra, so clients cut off together do not return together.
fn jitter(pause: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte);
    pause + pause.mul_f64(f64::from(byte[0]) / 1024.0)
}

fn message_kind(m: &Message) -> &'static str {
    match m {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::Close(_) => "close",
        Message::Frame(_) => "raw frame",
    }
}
