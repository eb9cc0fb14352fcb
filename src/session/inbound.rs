//! What a binary message from the peer means in an established session, for each role (no
//! I/O), and how a LONG_CLOSE fills in the close that follows it.

use bytes::Bytes;

use super::state::{AckError, SessionState};
use crate::close;
use crate::frame::Frame;

/// Which end of the protocol this session plays; they differ in what a peer may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `iap-ssh` (or gcloud): the peer is a relay.
    Client,
    /// `iap-relay`: the peer is a client; stricter, and its violations get relay close codes.
    Relay,
}

/// The meaning of one binary message, once its bytes are counted in the [`SessionState`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Inbound {
    /// Nothing to do (an ACK, or something a tolerant client ignores).
    Nothing,
    /// A DATA payload for the local side, and the ACK to send at once if one is due.
    Data {
        payload: Bytes,
        ack_now: Option<u64>,
    },
    /// The relay's LONG_CLOSE: code and reason for the close that follows.
    LongClose(u32, String),
    /// The peer broke the protocol; close with `code`.
    Violation { detail: String, code: u16 },
}

fn violation(role: Role, relay_code: u16, detail: String) -> Inbound {
    // A client closing on a broken relay uses the generic protocol-error code.
    let code = match role {
        Role::Relay => relay_code,
        Role::Client => close::PROTOCOL_ERROR,
    };
    Inbound::Violation { detail, code }
}

/// Decodes `bytes` and applies it to `state`: received DATA is counted, an ACK is checked.
pub(super) fn classify(role: Role, state: &mut SessionState, bytes: &Bytes) -> Inbound {
    // A client is as tolerant as gcloud (protocol.md §4): trailing bytes after a message and
    // empty DATA are dropped with a debug line, unknown tags ignored. The relay stays strict
    // toward clients and answers with its close codes.
    let decoded = match role {
        Role::Client => Frame::decode_tolerant(bytes),
        Role::Relay => Frame::decode(bytes).map(|f| (f, 0)),
    };
    let frame = match decoded {
        Ok((frame, extra)) => {
            if extra > 0 {
                tracing::debug!(message_kind = ?frame, extra, "ignored trailing bytes after a relay message");
            }
            frame
        }
        Err(e) => return violation(role, close::INVALID_DATA, e.to_string()),
    };
    match frame {
        Frame::Data([]) => {
            tracing::debug!("ignored an empty DATA message from the relay");
            Inbound::Nothing
        }
        Frame::Data(payload) => Inbound::Data {
            ack_now: state.on_data(payload.len()),
            // A slice of the received message: no copy on the way to the local side.
            payload: bytes.slice_ref(payload),
        },
        Frame::Ack(n) => match state.on_ack(n) {
            Ok(()) => Inbound::Nothing,
            Err(e @ AckError::Backwards { .. }) => violation(role, close::BAD_ACK, e.to_string()),
            Err(e) => violation(role, close::INVALID_ACK, e.to_string()),
        },
        Frame::LongClose { code, reason } if role == Role::Client => {
            Inbound::LongClose(code, String::from_utf8_lossy(reason).into_owned())
        }
        Frame::Unknown(tag) if role == Role::Client => {
            tracing::debug!(tag = %format_args!("{tag:#06x}"), "ignored a relay message with an unknown tag");
            Inbound::Nothing
        }
        other => violation(
            role,
            close::INVALID_TAG,
            format!("unexpected {other:?} in an established session"),
        ),
    }
}

/// The code and reason a close reports, filling in from a LONG_CLOSE the peer sent before it:
/// its reason when the close frame has none, and its code when the close frame has no code
/// ([`close::NO_STATUS`]) or the connection ended without one.
pub fn merge_long_close(
    close_code: Option<u16>,
    close_reason: String,
    long_close: Option<(u32, String)>,
) -> (u16, String) {
    let Some((long_code, long_reason)) = long_close else {
        return (close_code.unwrap_or(close::NO_STATUS), close_reason);
    };
    let code = match (close_code, u16::try_from(long_code)) {
        (Some(code), _) if code != close::NO_STATUS => code,
        (_, Ok(long_code)) => long_code,
        (code, Err(_)) => code.unwrap_or(close::NO_STATUS),
    };
    let reason = if close_reason.is_empty() {
        long_reason
    } else {
        close_reason
    };
    (code, reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::close::NO_STATUS;
    use crate::frame;

    #[test]
    fn each_role_reads_the_peer_as_it_should() {
        let mut state = SessionState::new(1024);
        let data = Frame::Data(b"hi").to_bytes();
        assert_eq!(
            classify(Role::Relay, &mut state, &data),
            Inbound::Data {
                payload: Bytes::from_static(b"hi"),
                ack_now: None
            }
        );
        assert_eq!(state.received(), 2);
        // An ACK for bytes never sent: the relay names the case, a client uses 1002.
        let ack = frame::ack(5);
        let code = |i: Inbound| match i {
            Inbound::Violation { code, .. } => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            code(classify(Role::Relay, &mut state, &ack)),
            close::INVALID_ACK
        );
        assert_eq!(
            code(classify(Role::Client, &mut state, &ack)),
            close::PROTOCOL_ERROR
        );
        let long = Frame::LongClose {
            code: 4033,
            reason: b"no",
        }
        .to_bytes();
        assert_eq!(
            classify(Role::Client, &mut state, &long),
            Inbound::LongClose(4033, "no".into())
        );
        assert_eq!(
            code(classify(Role::Relay, &mut state, &long)),
            close::INVALID_TAG
        );
    }

    #[test]
    fn long_close_fills_in_the_close() {
        let long = || Some((4033, "not authorized".to_owned()));
        let cases = [
            (Some(4033), "", long(), (4033, "not authorized")),
            (None, "", long(), (4033, "not authorized")),
            (Some(NO_STATUS), "", long(), (4033, "not authorized")),
            (Some(1000), "", long(), (1000, "not authorized")),
            (Some(4003), "own", long(), (4003, "own")),
            (Some(4003), "own", None, (4003, "own")),
            (None, "", None, (NO_STATUS, "")),
            (
                None,
                "",
                Some((70_000, "big".to_owned())),
                (NO_STATUS, "big"),
            ),
        ];
        for (code, reason, long_close, (want_code, want_reason)) in cases {
            let got = merge_long_close(code, reason.to_owned(), long_close);
            assert_eq!(
                got,
                (want_code, want_reason.to_owned()),
                "{code:?} {reason}"
            );
        }
    }
}
