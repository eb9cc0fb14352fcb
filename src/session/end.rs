//! How one WebSocket attachment of a session ended, and whether the session can go on.

use crate::close;

/// Why an attachment ended.
#[derive(Debug)]
pub enum PumpEnd {
    /// Local input ended; everything was delivered and we closed the WebSocket.
    LocalEof,
    /// The peer closed the WebSocket with this code and reason.
    PeerClosed {
        /// The close code ([`close::NO_STATUS`] when the frame had none).
        code: u16,
        /// The reason text (possibly from a LONG_CLOSE message).
        reason: String,
    },
    /// The WebSocket broke without a close frame.
    TransportLost(String),
    /// Reading local input or writing local output failed; we closed with `code`.
    LocalFailed {
        /// Which side failed and why.
        error: String,
        /// The close code we sent.
        code: u16,
    },
    /// The peer broke the protocol; we closed with `code`.
    Violation {
        /// What was wrong.
        detail: String,
        /// The close code we sent.
        code: u16,
    },
    /// The stop signal fired; we closed with [`close::GOING_AWAY`] (a relay) or
    /// [`close::NORMAL`] (a client).
    Cancelled,
    /// A detach was requested: we sent its close code and let go of the WebSocket; the
    /// session can be resumed on another one.
    Detached {
        /// The close code sent.
        code: u16,
    },
    /// No DATA either way for the idle timeout; we closed with [`close::POLICY_VIOLATION`].
    IdleTimeout,
}

impl PumpEnd {
    /// Whether the session may continue on a new WebSocket.
    pub fn resumable(&self) -> bool {
        match self {
            PumpEnd::TransportLost(_) | PumpEnd::Detached { .. } => true,
            PumpEnd::PeerClosed { code, .. } => {
                close::disposition(*code) == close::Disposition::Resumable
            }
            _ => false,
        }
    }
}
