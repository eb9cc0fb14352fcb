//! Opening one WebSocket to the relay: a token, the upgrade, and the relay's first message
//! (a session id, a resume position, or a close), with what each failure means for a retry.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use super::{FIRST_FRAME_TIMEOUT, TunnelConfig};
use crate::client::dial::{self, RelaySocket};
use crate::client::error::{Error, ExitKind};
use crate::close;
use crate::frame::Frame;
use crate::session::pump;

/// How long to wait for the close that should follow a LONG_CLOSE before reporting it.
const LONG_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The relay's first message on a new WebSocket.
pub(super) enum Opened {
    Sid(String),
    ResumedAt(u64),
}

impl TunnelConfig {
    /// Opens `/v4/<path>` with a token and reads the relay's first message. A token the
    /// relay refuses (HTTP 401 or close 4004) is dropped from the cache and replaced by a
    /// fresh one from the source, once.
    pub(super) async fn open(
        &self,
        path: &str,
        query: &str,
    ) -> Result<(RelaySocket, Opened), Error> {
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
    pub(super) fn refused(&self, failure: Error) -> Error {
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
    pub(super) async fn try_open(
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
}

/// Whether a failed resume attempt is worth another try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Retry {
    /// Network trouble: try again after a pause.
    Yes,
    /// The relay asked for re-authentication (4004): try again with a fresh token.
    FreshToken,
    /// The upgrade got an HTTP error: try again for
    /// [`REFUSED_RETRY_BUDGET`](super::resume::REFUSED_RETRY_BUDGET) only.
    Refused,
    /// A refusal or protocol violation: final.
    No,
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
