//! WebSocket close codes of the IAP relay protocol: their numbers, the reason
//! texts a relay sends, what each means for a client, and the one-line message
//! a user sees (`protocol.md` §6).

/// Exit status categories of the iap-ssh process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// Any failure without a more specific category (exit status 1).
    Other,
    /// Bad command line or configuration (exit status 2).
    Usage,
    /// No usable credentials, or the relay asked for new ones (exit status 3).
    Authentication,
    /// The relay refused access to the target, close 4033 (exit status 4).
    NotAuthorized,
    /// The relay could not find the target, close 4047/4051 (exit status 5).
    NotFound,
    /// The relay could not open TCP to the target, close 4003 (exit status 6).
    BackendUnreachable,
}

impl ExitKind {
    /// The process exit status for this category.
    pub fn code(self) -> u8 {
        match self {
            ExitKind::Other => 1,
            ExitKind::Usage => 2,
            ExitKind::Authentication => 3,
            ExitKind::NotAuthorized => 4,
            ExitKind::NotFound => 5,
            ExitKind::BackendUnreachable => 6,
        }
    }
}

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

/// The exit status category for a session that ended with close `code`.
///
/// Finished closes map to [`ExitKind::Other`]; callers check
/// [`disposition`] first and exit successfully for those.
pub fn exit_kind(code: u16) -> ExitKind {
    match code {
        NOT_AUTHORIZED => ExitKind::NotAuthorized,
        LOOKUP_FAILED | LOOKUP_FAILED_RECONNECT => ExitKind::NotFound,
        FAILED_TO_CONNECT_TO_BACKEND => ExitKind::BackendUnreachable,
        // Reaching the user means resuming with a fresh token failed too.
        REAUTHENTICATION_REQUIRED => ExitKind::Authentication,
        _ => ExitKind::Other,
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

/// One-line user-facing message for close `code` with `reason` from the relay.
///
/// `target` describes what was being reached (see
/// `crate::target::Target::describe`) and `port` is the target port. The
/// message says what failed, the code, the relay's reason when it adds
/// something to the known text, and what to do.
pub fn user_message(code: u16, reason: &str, target: &str, port: u16) -> String {
    let reason = sanitize_reason(reason);
    let known = reason_text(code);
    let relay_says = !reason.is_empty() && !reason.eq_ignore_ascii_case(known);
    // Codes whose known text is what people search for (4003, 4047) or the
    // only clue to a protocol bug keep it even when the relay sent nothing.
    let keep_known = matches!(
        code,
        FAILED_TO_CONNECT_TO_BACKEND | LOOKUP_FAILED | BAD_ACK..=INVALID_TAG | INVALID_DATA
    );
    let tag = match (relay_says, keep_known) {
        (true, _) => format!("{code} {reason}"),
        (false, true) => format!("{code} {known}"),
        (false, false) => code.to_string(),
    };
    let resume = |why: &str| {
        format!("the session to {target} could not be resumed: {why} ({tag}): connect again")
    };
    match code {
        NOT_AUTHORIZED => format!(
            "not authorized to reach {target} ({tag}): grant your account \
             roles/iap.tunnelResourceAccessor on the instance or project, \
             and check the project name"
        ),
        FAILED_TO_CONNECT_TO_BACKEND => format!(
            "the relay could not connect to {target} ({tag}): check that the VM is running, \
             that something listens on port {port}, and that the firewall admits \
             35.235.240.0/20 (IPv6: 2600:2d00:1:7::/64) on port {port}"
        ),
        LOOKUP_FAILED => {
            format!("{target} was not found ({tag}): check the instance name, zone and project")
        }
        LOOKUP_FAILED_RECONNECT => {
            resume("the relay could not find the target again; check that it still exists")
        }
        SID_UNKNOWN => resume("the relay no longer knows the session"),
        SID_IN_USE => resume("the session is still attached to another connection"),
        FAILED_TO_REWIND => resume("the relay no longer holds the data to resend"),
        REAUTHENTICATION_REQUIRED => format!(
            "the relay asked for re-authentication on the tunnel to {target} ({tag}): \
             refresh your credentials (for example gcloud auth application-default login) \
             and connect again"
        ),
        NORMAL | DESTINATION_WRITE_FAILED | DESTINATION_READ_FAILED => {
            format!("the tunnel to {target} was closed ({tag})")
        }
        ABNORMAL_CLOSURE => format!(
            "the connection to the relay dropped while tunneling to {target} ({tag}): \
             check the network and connect again"
        ),
        ERROR_UNKNOWN => {
            format!("the relay failed while tunneling to {target} ({tag}): try again later")
        }
        BAD_ACK | INVALID_ACK | INVALID_WEBSOCKET_OPCODE | INVALID_TAG | INVALID_DATA => {
            format!(
                "the relay rejected a message on the tunnel to {target} ({tag}): \
                 this is a protocol bug in iap-ssh or the relay; please report it"
            )
        }
        _ if reason.is_empty() => {
            format!("the relay closed the tunnel to {target} with code {code}")
        }
        _ => format!("the relay closed the tunnel to {target} with code {code} ({reason})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "vm-1 port 22 in my-project/us-central1-a";

    #[test]
    fn exit_codes() {
        use ExitKind::*;
        let kinds = [
            Other,
            Usage,
            Authentication,
            NotAuthorized,
            NotFound,
            BackendUnreachable,
        ];
        assert_eq!(kinds.map(ExitKind::code), [1, 2, 3, 4, 5, 6]);
    }

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
    fn messages_name_the_cause_and_the_fix() {
        // code | reason from the relay | parts the message must contain.
        let cases = "\
            4033 | not authorized | not authorized to reach vm-1 port 22 in my-project/us-central1-a (4033): ; roles/iap.tunnelResourceAccessor ; project name
            4033 | Not Authorized | (4033):
            4033 | org policy says no | (4033 org policy says no)
            4003 | failed to connect to backend | could not connect to vm-1 ; (4003 failed to connect to backend) ; 35.235.240.0/20 ; port 22
            4003 |  | (4003 failed to connect to backend)
            4003 | connection refused | (4003 connection refused)
            4047 | Failed to lookup instance | vm-1 port 22 in my-project/us-central1-a was not found (4047 Failed to lookup instance) ; name, zone and project
            4051 |  | could not be resumed ; could not find the target again ; (4051) ; connect again
            4001 |  | could not be resumed ; no longer knows ; (4001)
            4002 |  | could not be resumed ; still attached ; (4002)
            4074 |  | could not be resumed ; (4074)
            4004 |  | re-authentication ; (4004) ; credentials
            4000 |  | relay failed ; (4000)
            4008 |  | (4008 invalid tag) ; report
            4013 | bad frame | (4013 bad frame) ; report
            1000 |  | closed (1000)
            4010 | destination read failed | closed (4010)
            4009 |  | closed (4009)
            1006 |  | dropped ; (1006)
            4321 |  | closed the tunnel to vm-1 port 22 in my-project/us-central1-a with code 4321
            4321 | mystery | with code 4321 (mystery)";
        for line in cases.lines() {
            let cols: Vec<&str> = line.trim().split(" | ").collect();
            let [code, reason, parts] = cols[..] else {
                panic!("bad row {line}")
            };
            let msg = user_message(code.parse().unwrap_or(0), reason.trim(), T, 22);
            for part in parts.split(" ; ") {
                assert!(msg.contains(part), "{msg:?} lacks {part:?}");
            }
            assert!(!msg.contains('\n'), "{msg:?}");
        }
        let msg = user_message(FAILED_TO_CONNECT_TO_BACKEND, "", T, 2222);
        assert!(
            msg.contains("listens on port 2222") && msg.contains("/20 (IPv6: "),
            "{msg}"
        );
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
        let msg = user_message(4321, &format!("evil\n{long}"), T, 22);
        assert!(!msg.contains('\n') && msg.chars().count() < MAX_REASON_CHARS + 100);
    }
}
