//! The client's one error type: an exit status and one line for the user, built where the
//! failure happens and printed once by `main`. Also what a close code means for the user:
//! its exit status and its message (`protocol.md` §6).

use std::fmt;

use crate::close::{
    ABNORMAL_CLOSURE, BAD_ACK, DESTINATION_READ_FAILED, DESTINATION_WRITE_FAILED, ERROR_UNKNOWN,
    FAILED_TO_CONNECT_TO_BACKEND, FAILED_TO_REWIND, INVALID_ACK, INVALID_DATA, INVALID_TAG,
    INVALID_WEBSOCKET_OPCODE, LOOKUP_FAILED, LOOKUP_FAILED_RECONNECT, NORMAL, NOT_AUTHORIZED,
    REAUTHENTICATION_REQUIRED, SID_IN_USE, SID_UNKNOWN, reason_text, sanitize_reason,
};

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

/// A client failure: the exit status it leads to and one line naming what failed and what to
/// do (never a token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// Exit status category.
    pub kind: ExitKind,
    /// What failed and what to do.
    pub message: String,
    /// The HTTP status when the relay (or a load balancer in front of it) answered the
    /// WebSocket upgrade with an error; the tunnel's retry rules look at it.
    pub http_status: Option<u16>,
}

impl Error {
    /// An error of `kind`.
    pub fn new(kind: ExitKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            http_status: None,
        }
    }

    /// A bad command line or configuration (exit status 2).
    pub fn usage(message: impl Into<String>) -> Error {
        Error::new(ExitKind::Usage, message)
    }

    /// No usable credentials (exit status 3).
    pub fn auth(message: impl Into<String>) -> Error {
        Error::new(ExitKind::Authentication, message)
    }

    /// Any other failure, network trouble included (exit status 1).
    pub fn other(message: impl Into<String>) -> Error {
        Error::new(ExitKind::Other, message)
    }

    /// The error for a tunnel the relay closed with `code` and `reason`; `target` describes
    /// what was being reached (see `crate::target::Target::describe`).
    pub fn from_close(code: u16, reason: &str, target: &str, port: u16) -> Error {
        Error::new(exit_kind(code), user_message(code, reason, target, port))
    }

    /// The same error with `what: ` in front of its message, saying where a value came from.
    #[must_use]
    pub fn context(mut self, what: &str) -> Error {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The exit status category for a session that ended with close `code`.
///
/// Finished closes map to [`ExitKind::Other`]; callers check
/// [`disposition`](crate::close::disposition) first and exit successfully for those.
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
        let table = [
            (Other, 1),
            (Usage, 2),
            (Authentication, 3),
            (NotAuthorized, 4),
            (NotFound, 5),
            (BackendUnreachable, 6),
        ];
        for (kind, code) in table {
            assert_eq!(kind.code(), code, "{kind:?}");
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
        // An untrusted reason stays on one short line.
        let long = "x ".repeat(300);
        let msg = user_message(4321, &format!("evil\n{long}"), T, 22);
        assert!(!msg.contains('\n') && msg.chars().count() < crate::close::MAX_REASON_CHARS + 100);
    }
}
