//! One client tunnel: dial, wait for the session id, pump bytes, and turn every way it can
//! end into an exit status and a one-line message. Opening a WebSocket and reading the relay's
//! first message is in `open`; resuming after a lost connection is in `resume`.

use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

use super::auth::Credentials;
use super::dial::{Dialer, RelaySocket};
use super::error::Error;
use super::report;
use crate::close::{self, Disposition};
use crate::session::local::{LocalInput, LocalOutput};
use crate::session::pump::{self, Attach, Keepalive, PumpEnd, Role, Session};
use crate::target::Target;
use open::Opened;

mod open;
mod resume;

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

impl TunnelConfig {
    fn close_failure(&self, code: u16, reason: &str) -> Error {
        Error::from_close(code, reason, &self.target.describe(self.port), self.port)
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
