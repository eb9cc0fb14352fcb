//! WebSocket close codes of the IAP relay protocol (`protocol.md` §6): their numbers, which
//! end sends each and the reason text it carries, what each means for a session (finished,
//! resumable or fatal), and how a reason from an untrusted peer is made safe to print.
//!
//! What a close means for the user, the exit status and the one-line message, is the
//! client's: [`client::error`](crate::client::error).

// Re-exported for code and tests written against this path; defined in `client::error`.
pub use crate::client::error::{ExitKind, exit_kind};

/// Normal closure.
pub const NORMAL: u16 = 1000;
/// The sender is going away: `iap-relay` shutting down.
pub const GOING_AWAY: u16 = 1001;
/// The peer broke the protocol: a client closing on a relay that sent a malformed message.
pub const PROTOCOL_ERROR: u16 = 1002;
/// The peer sent a kind of message we do not take: a client closing on a text message.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// The code a WebSocket reports for a close frame without a status code (RFC 6455 §7.1.5).
/// Reported locally; it never travels on the wire.
pub const NO_STATUS: u16 = 1005;
/// The connection dropped without a close frame. WebSocket libraries report
/// this locally; it never travels on the wire.
pub const ABNORMAL_CLOSURE: u16 = 1006;
/// A limit of the relay ended the session (idle timeout, maximum session length).
pub const POLICY_VIOLATION: u16 = 1008;
/// The server failed. `iap-relay` does not send it; a relay's front end may.
pub const INTERNAL_ERROR: u16 = 1011;
/// The relay failed for a reason it does not name.
pub const ERROR_UNKNOWN: u16 = 4000;
/// A reconnect named a session id the relay does not know.
pub const SID_UNKNOWN: u16 = 4001;
/// A reconnect named a session that is still attached to another WebSocket.
pub const SID_IN_USE: u16 = 4002;
/// The relay could not open a TCP connection to the target.
pub const FAILED_TO_CONNECT_TO_BACKEND: u16 = 4003;
/// The session may continue on `/v4/reconnect` with a fresh token.
pub const REAUTHENTICATION_REQUIRED: u16 = 4004;
/// An acknowledgement went backwards (lower than one the peer sent before); `iap-relay`
/// sends this, as gcloud's `SubprotocolOutOfOrderAckError` names the case.
pub const BAD_ACK: u16 = 4005;
/// An acknowledgement for bytes that were never sent; `iap-relay` sends this, as gcloud's
/// `SubprotocolInvalidAckError` names the case.
pub const INVALID_ACK: u16 = 4006;
/// The client sent a WebSocket message that is not binary.
pub const INVALID_WEBSOCKET_OPCODE: u16 = 4007;
/// The client sent a message with an unknown tag.
pub const INVALID_TAG: u16 = 4008;
/// Writing to the target failed, usually because the target closed.
pub const DESTINATION_WRITE_FAILED: u16 = 4009;
/// Reading from the target failed, usually because the target closed.
pub const DESTINATION_READ_FAILED: u16 = 4010;
/// The client sent a malformed DATA message.
pub const INVALID_DATA: u16 = 4013;
/// The caller may not reach the target.
pub const NOT_AUTHORIZED: u16 = 4033;
/// The target (instance, zone or project) was not found.
pub const LOOKUP_FAILED: u16 = 4047;
/// The target was not found again while resuming a session.
pub const LOOKUP_FAILED_RECONNECT: u16 = 4051;
/// The relay cannot resume from the position the client asked for.
pub const FAILED_TO_REWIND: u16 = 4074;

/// Reason `iap-relay` gives with [`GOING_AWAY`] when it shuts down.
pub const REASON_SHUTTING_DOWN: &str = "shutting down";
/// Reason `iap-relay` gives with [`POLICY_VIOLATION`] when a session carried no data for its
/// idle timeout.
pub const REASON_IDLE_TIMEOUT: &str = "idle timeout";

/// Which end of a session puts a close code on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SentBy {
    /// `iap-ssh` (or gcloud).
    Client,
    /// A relay: Google's or `iap-relay`.
    Relay,
    /// Either end.
    Both,
    /// Neither: a WebSocket library reports it locally.
    Local,
}

/// One row of [`CODES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownCode {
    /// The close code.
    pub code: u16,
    /// Its name (IAP Desktop's for the 4000 range, RFC 6455's below).
    pub name: &'static str,
    /// Which end sends it.
    pub sent_by: SentBy,
    /// The reason text sent with it, as [`reason_text`] returns it; empty where the reason
    /// depends on the case ([`REASON_SHUTTING_DOWN`], [`REASON_IDLE_TIMEOUT`]) or is none.
    pub reason: &'static str,
}

/// A row of [`CODES`], named after its constant.
macro_rules! row {
    ($code:ident, $sent_by:ident, $reason:expr) => {
        KnownCode {
            code: $code,
            name: stringify!($code),
            sent_by: SentBy::$sent_by,
            reason: $reason,
        }
    };
}

/// Every close code either end sends or receives, with its name, sender and reason text.
///
/// Where Google's relay is known to send a text (4003, 4010, 4033, 4047) the reason is that
/// text, byte for byte, so that `iap-relay` looks the same to clients and to people searching
/// for the error. Other codes of the 4000 range get a short lowercase phrase of our own.
#[rustfmt::skip] // one row per line, so it reads as a table
pub const CODES: &[KnownCode] = &[
    row!(NORMAL,                       Both,   "normal closure"),
    row!(GOING_AWAY,                   Relay,  ""),
    row!(PROTOCOL_ERROR,               Client, ""),
    row!(UNSUPPORTED_DATA,             Client, ""),
    row!(NO_STATUS,                    Local,  ""),
    row!(ABNORMAL_CLOSURE,             Local,  "connection dropped"),
    row!(POLICY_VIOLATION,             Relay,  ""),
    row!(INTERNAL_ERROR,               Relay,  ""),
    row!(ERROR_UNKNOWN,                Relay,  "unknown error"),
    row!(SID_UNKNOWN,                  Relay,  "unknown session id"),
    row!(SID_IN_USE,                   Relay,  "session id in use"),
    row!(FAILED_TO_CONNECT_TO_BACKEND, Relay,  "failed to connect to backend"),
    row!(REAUTHENTICATION_REQUIRED,    Relay,  "reauthentication required"),
    row!(BAD_ACK,                      Relay,  "bad ack"),
    row!(INVALID_ACK,                  Relay,  "invalid ack"),
    row!(INVALID_WEBSOCKET_OPCODE,     Relay,  "invalid websocket opcode"),
    row!(INVALID_TAG,                  Relay,  "invalid tag"),
    row!(DESTINATION_WRITE_FAILED,     Relay,  "destination write failed"),
    row!(DESTINATION_READ_FAILED,      Relay,  "destination read failed"),
    row!(INVALID_DATA,                 Relay,  "invalid data"),
    row!(NOT_AUTHORIZED,               Relay,  "not authorized"),
    // Capitalised on purpose: this is the text Google's relay sends.
    row!(LOOKUP_FAILED,                Relay,  "Failed to lookup instance"),
    row!(LOOKUP_FAILED_RECONNECT,      Relay,  "failed to lookup instance on reconnect"),
    row!(FAILED_TO_REWIND,             Relay,  "failed to rewind"),
];

/// Longest relay reason, in characters, that goes into a user message.
pub const MAX_REASON_CHARS: usize = 200;

/// The row of [`CODES`] for `code`, if it is one we know.
pub fn known(code: u16) -> Option<&'static KnownCode> {
    CODES.iter().find(|known| known.code == code)
}

/// The reason text we put in the close frame for `code` (see [`CODES`]); unknown codes, and
/// codes whose reason depends on the case, get an empty string.
pub fn reason_text(code: u16) -> &'static str {
    known(code).map_or("", |known| known.reason)
}

#[cfg(test)]
mod table_tests {
    use super::*;

    #[test]
    fn the_table_has_each_code_once_with_a_name_and_a_reason_that_fits() {
        // Sorted by code, so each code appears once and a reader finds it.
        assert!(CODES.windows(2).all(|w| w[0].code < w[1].code));
        for known in CODES {
            assert!(!known.name.is_empty(), "{known:?}");
            // A close frame's reason must fit in 123 bytes.
            assert!(known.reason.len() <= 123, "{known:?}");
            assert_eq!(reason_text(known.code), known.reason);
        }
        let names: Vec<(u16, &str)> = CODES.iter().map(|k| (k.code, k.name)).collect();
        assert_eq!(names.len(), 24);
        assert_eq!(
            names[..8],
            [
                (1000, "NORMAL"),
                (1001, "GOING_AWAY"),
                (1002, "PROTOCOL_ERROR"),
                (1003, "UNSUPPORTED_DATA"),
                (1005, "NO_STATUS"),
                (1006, "ABNORMAL_CLOSURE"),
                (1008, "POLICY_VIOLATION"),
                (1011, "INTERNAL_ERROR"),
            ]
        );
        assert!(
            names[8..]
                .iter()
                .all(|(code, _)| (4000..5000).contains(code))
        );
        assert_eq!(known(4080), None);
        assert_eq!(reason_text(4080), "");
    }
}

/// What a close means for a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The target or the peer ended the stream in order; not an error.
    Finished,
    /// The session can continue on `/v4/reconnect`.
    Resumable,
    /// The session is over and the close is an error.
    Fatal,
}

/// What the close `code` means for a client.
///
/// Only 4004 is resumable by the relay's own account (gcloud resumes on 4004
/// alone). 1006 is resumable too: it is how a dropped connection shows up
/// locally, and a relay keeps the session alive for a while after a drop.
/// 4009/4010 are how the relay reports that the target closed its end, which
/// is an ordinary end of stream for the client.
pub fn disposition(code: u16) -> Disposition {
    match code {
        NORMAL | DESTINATION_WRITE_FAILED | DESTINATION_READ_FAILED => Disposition::Finished,
        REAUTHENTICATION_REQUIRED | ABNORMAL_CLOSURE => Disposition::Resumable,
        _ => Disposition::Fatal,
    }
}

/// Makes an untrusted close reason safe to print on one terminal line.
///
/// Control characters become spaces and runs of whitespace collapse, so the
/// reason cannot move the cursor or forge extra lines. Words that look like
/// credentials are replaced, because a misbehaving relay might echo a request
/// header. The result has at most [`MAX_REASON_CHARS`] characters.
pub fn sanitize_reason(reason: &str) -> String {
    let cleaned: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let words: Vec<&str> = cleaned
        .split_whitespace()
        .map(|w| if looks_like_token(w) { "[redacted]" } else { w })
        .collect();
    let joined = words.join(" ");
    if joined.chars().count() <= MAX_REASON_CHARS {
        return joined;
    }
    let mut capped: String = joined.chars().take(MAX_REASON_CHARS - 1).collect();
    capped.push('…');
    capped
}

/// True for OAuth access tokens (`ya29.` prefix), JWTs and other long
/// base64-like runs; ordinary reason words are short.
fn looks_like_token(word: &str) -> bool {
    let token_char = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    word.starts_with("ya29.")
        || word.starts_with("eyJ")
        || (word.len() >= 32 && word.chars().all(token_char))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_disposition_exit_kind_and_reason() {
        // code, disposition, exit kind, reason text ("-" for none).
        let cases = "\
            1000 Finished Other normal closure
            1006 Resumable Other connection dropped
            4000 Fatal Other unknown error
            4001 Fatal Other unknown session id
            4002 Fatal Other session id in use
            4003 Fatal BackendUnreachable failed to connect to backend
            4004 Resumable Authentication reauthentication required
            4005 Fatal Other bad ack
            4006 Fatal Other invalid ack
            4007 Fatal Other invalid websocket opcode
            4008 Fatal Other invalid tag
            4009 Finished Other destination write failed
            4010 Finished Other destination read failed
            4013 Fatal Other invalid data
            4033 Fatal NotAuthorized not authorized
            4047 Fatal NotFound Failed to lookup instance
            4051 Fatal NotFound failed to lookup instance on reconnect
            4074 Fatal Other failed to rewind
            4080 Fatal Other -
            1001 Fatal Other -
            0 Fatal Other -";
        for line in cases.lines() {
            let mut words = line.split_whitespace();
            let code: u16 = words
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(u16::MAX);
            let got = format!("{:?} {:?}", disposition(code), exit_kind(code));
            let want: Vec<&str> = words.collect();
            assert_eq!(got, want[..2].join(" "), "{line}");
            let text = match reason_text(code) {
                "" => "-",
                text => text,
            };
            assert_eq!(text, want[2..].join(" "), "{line}");
            // A close frame's reason must fit in 123 bytes.
            assert!(text.len() <= 123);
        }
    }

    #[test]
    fn reasons_are_sanitized() {
        let cases = [
            ("plain", "plain"),
            ("a\nb\r\nc\u{1b}[2Jd", "a b c [2Jd"),
            ("  tabs\t\tand\u{7f}del  ", "tabs and del"),
            ("token ya29.a0AfH6SM", "token [redacted]"),
            ("bearer eyJhbGciOiJSUzI1NiJ9.e30.sig", "bearer [redacted]"),
            ("key AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "key [redacted]"),
            (
                "failed to connect to backend",
                "failed to connect to backend",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize_reason(input), want, "{input:?}");
        }
        let long = "x ".repeat(300);
        let capped = sanitize_reason(&long);
        assert_eq!(capped.chars().count(), MAX_REASON_CHARS);
        assert!(capped.ends_with('…'));
        let wide = "é".repeat(500);
        assert_eq!(sanitize_reason(&wide).chars().count(), MAX_REASON_CHARS);
    }
}
