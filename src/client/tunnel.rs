//! One client tunnel: dial, wait for the session id, pump bytes, and turn every way it can
//! end into an exit status and a one-line message.

use std::fmt;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::auth::Credentials;
use super::dial::{Dialer, RelaySocket};
use crate::close::{self, Disposition, ExitKind};
use crate::frame::Frame;
use crate::session::local::{LocalInput, LocalOutput};
use crate::session::pump::{self, PumpEnd, Role, Session};
use crate::target::Target;

/// How long to wait for the relay's first message (gcloud waits 60 s too: the relay dials the
/// backend before answering, and a booting VM can be slow).
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(60);

/// A tunnel failure: the exit status category and one line for the user.
#[derive(Debug)]
pub struct Failure {
    /// Exit status category.
    pub kind: ExitKind,
    /// What failed and what to do.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    fn other(message: String) -> Failure {
        Failure {
            kind: ExitKind::Other,
            message,
        }
    }
}

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
}

impl TunnelConfig {
    fn close_failure(&self, code: u16, reason: &str) -> Failure {
        Failure {
            kind: close::exit_kind(code),
            message: close::user_message(code, reason, &self.target.describe(self.port), self.port),
        }
    }

    /// Opens a new session and waits for its id.
    ///
    /// # Errors
    /// A [`Failure`] for a token, dial, or relay refusal (close codes such as 4033).
    pub async fn connect(&self) -> Result<(RelaySocket, String), Failure> {
        let token = self.credentials.token().await.map_err(|e| Failure {
            kind: ExitKind::Authentication,
            message: format!("{e:#}"),
        })?;
        let query = self.target.connect_query(self.port);
        let mut ws = self
            .dialer
            .open("connect", &query, &token)
            .await
            .map_err(|e| Failure {
                kind: e.kind,
                message: e.message,
            })?;
        let first = tokio::time::timeout(FIRST_FRAME_TIMEOUT, ws.next())
            .await
            .map_err(|_| {
                Failure::other(format!(
                    "the relay at {} did not confirm the tunnel to {} within {}s",
                    self.dialer.endpoint.authority(),
                    self.target.describe(self.port),
                    FIRST_FRAME_TIMEOUT.as_secs()
                ))
            })?;
        match first {
            Some(Ok(Message::Binary(bytes))) => match Frame::decode(&bytes) {
                Ok(Frame::ConnectSuccessSid(sid)) => {
                    Ok((ws, String::from_utf8_lossy(sid).into_owned()))
                }
                Ok(other) => Err(Failure::other(format!(
                    "the relay broke the protocol: its first message was {other:?}, not a session id"
                ))),
                Err(e) => Err(Failure::other(format!("the relay broke the protocol: {e}"))),
            },
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                Err(self.close_failure(code, &reason))
            }
            Some(Ok(other)) => Err(Failure::other(format!(
                "the relay broke the protocol: its first message was a {} message, not a session id",
                message_kind(&other)
            ))),
            Some(Err(e)) => Err(Failure::other(format!(
                "the connection to the relay failed before the tunnel opened: {e}"
            ))),
            None => Err(Failure::other(
                "the relay closed the connection before the tunnel opened".to_owned(),
            )),
        }
    }

    /// Runs a whole tunnel over `session`'s local ends.
    ///
    /// # Errors
    /// A [`Failure`] whenever the tunnel did not end in order.
    pub async fn run<I: LocalInput, O: LocalOutput>(
        &self,
        session: &mut Session<I, O>,
        cancel: &CancellationToken,
    ) -> Result<(), Failure> {
        let (ws, sid) = tokio::select! {
            connected = self.connect() => connected?,
            () = cancel.cancelled() => return Err(Failure::other("interrupted before the tunnel opened".to_owned())),
        };
        tracing::debug!(sid = %sid, target = %self.target.describe(self.port), "tunnel open");
        let end = pump::run(session, ws, Role::Client, close::NORMAL, cancel).await;
        tracing::debug!(
            ?end,
            sent = session.state.sent(),
            received = session.state.received(),
            "tunnel ended"
        );
        let result = match end {
            PumpEnd::LocalEof | PumpEnd::Cancelled => Ok(()),
            PumpEnd::PeerClosed { code, reason } => match close::disposition(code) {
                Disposition::Finished => Ok(()),
                Disposition::Resumable | Disposition::Fatal => {
                    Err(self.close_failure(code, &reason))
                }
            },
            PumpEnd::TransportLost(detail) => Err(Failure::other(format!(
                "lost the connection to the relay at {}: {detail}",
                self.dialer.endpoint.authority()
            ))),
            PumpEnd::LocalFailed { error, .. } => Err(Failure::other(error)),
            PumpEnd::Violation { detail, .. } => Err(Failure::other(format!(
                "the relay broke the protocol: {detail}"
            ))),
        };
        // Whatever arrived before the end still belongs to the user.
        if let Err(e) = session.drain_output().await
            && result.is_ok()
        {
            return Err(Failure::other(format!("writing local output: {e}")));
        }
        result
    }
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
