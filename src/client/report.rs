//! What a user sees about a tunnel besides its bytes, on stderr (stdout is the tunnel).
//!
//! At the default level only the resume notices: ssh shows our stderr in the user's terminal,
//! so when a session freezes because the connection to the relay was lost, the user reads why
//! and whether it came back. Quick resumes (under [`RESUME_NOTICE_AFTER`]) stay silent. With
//! `-v`, one line when a tunnel opens and one when it ends; those go through `tracing`.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use crate::close::sanitize_reason;

/// A resume that has not succeeded after this long is announced.
pub const RESUME_NOTICE_AFTER: Duration = Duration::from_secs(1);

/// Every notice starts with this; the give-up line (an error) does not.
pub const NOTICE_PREFIX: &str = "iap-ssh: resum";

/// The `-v` line for a tunnel that opened. `credential_source` says where the token came from
/// (e.g. "access token file …", "Application Default Credentials") and `principal` whose it
/// is, when known. Never a token.
pub fn tunnel_opened(
    relay: &str,
    target: &str,
    credential_source: &str,
    principal: Option<&str>,
    sid: &str,
) -> String {
    let who = match principal {
        Some(p) => format!("{credential_source} ({p})"),
        None => credential_source.to_owned(),
    };
    format!(
        "tunnel open: relay {relay}, target {target}, credentials {who}, session {}",
        sanitize_reason(sid)
    )
}

/// The `-v` line for a tunnel that ended.
pub fn tunnel_ended(
    target: &str,
    lasted: Duration,
    sent: u64,
    received: u64,
    resumes: u32,
) -> String {
    format!(
        "tunnel to {target} ended after {:.1}s: {sent} bytes sent, {received} bytes received, {resumes} {}",
        lasted.as_secs_f64(),
        if resumes == 1 { "resume" } else { "resumes" }
    )
}

/// The notice for a resume still under way after [`RESUME_NOTICE_AFTER`].
pub fn resuming(target: &str, why: &str) -> String {
    format!(
        "resuming the tunnel to {target}: the connection to the relay was lost ({})",
        sanitize_reason(why)
    )
}

/// The notice for a resume that succeeded after a [`resuming`] notice.
pub fn resumed(target: &str, after: Duration) -> String {
    format!(
        "resumed the tunnel to {target} after {:.1}s",
        after.as_secs_f64()
    )
}

/// Writes `iap-ssh: <line>` to stderr. On a terminal the line ends in CR LF: ssh puts the
/// terminal in raw mode during an interactive session, where a bare LF would not return the
/// cursor (OpenSSH ends its own messages the same way). A failed write is ignored: the
/// notice is a courtesy, and stderr may be closed.
pub fn notice(line: &str) {
    let end = if std::io::stderr().is_terminal() {
        "\r\n"
    } else {
        "\n"
    };
    let _ = write!(std::io::stderr().lock(), "iap-ssh: {line}{end}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_what_happened() {
        let open = tunnel_opened(
            "relay.example:443",
            "vm-1 port 22 in p/z",
            "access token file /t",
            Some("alice@example.com"),
            "sid\n-1",
        );
        assert_eq!(
            open,
            "tunnel open: relay relay.example:443, target vm-1 port 22 in p/z, credentials access token file /t (alice@example.com), session sid -1"
        );
        let open = tunnel_opened("r:443", "t", "gcp_auth", None, "s");
        assert!(open.ends_with("credentials gcp_auth, session s"), "{open}");
        assert_eq!(
            tunnel_ended("t", Duration::from_millis(12_340), 5, 7, 1),
            "tunnel to t ended after 12.3s: 5 bytes sent, 7 bytes received, 1 resume"
        );
        assert!(tunnel_ended("t", Duration::ZERO, 0, 0, 2).ends_with("2 resumes"));
        let line = format!("iap-ssh: {}", resuming("t", "reset\r\nby peer"));
        assert!(line.starts_with(NOTICE_PREFIX), "{line}");
        assert!(line.ends_with("(reset by peer)"), "{line}");
        let line = format!("iap-ssh: {}", resumed("t", Duration::from_millis(3_050)));
        assert!(line.starts_with(NOTICE_PREFIX), "{line}");
        assert!(
            line.ends_with("after 3.0s") || line.ends_with("after 3.1s"),
            "{line}"
        );
    }
}
