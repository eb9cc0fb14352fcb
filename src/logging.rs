//! Diagnostics to stderr only: stdout may be the tunnel itself.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::Field;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{Writer, debug_fn};

/// Installs a stderr logger. `RUST_LOG` wins when set; otherwise `default` (e.g. `warn`),
/// raised to `info` by one `-v` and `debug` by two. google-cloud-auth logs retries at warn with
/// details we do not want in an ssh user's terminal, so it is held to errors by default.
///
/// Every field value is escaped (see [`escape_into`]): principals, targets and reasons come
/// from clients and relays, and a newline in one must not start a forged log line.
pub fn init_stderr(verbose: u8, default: &str) {
    let level = match verbose {
        0 => default,
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},google_cloud_auth=error,gcp_auth=error,rustls=error"
        ))
    });
    let fields = debug_fn(write_field).delimited(" ");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(fields)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// One field as `name=value` (the message bare), with the value escaped.
fn write_field(w: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
    let text = format!("{value:?}");
    match field.name() {
        "message" => {}
        // Fields the `log` bridge adds; the default formatter leaves them out too.
        name if name.starts_with("log.") => return Ok(()),
        name => write!(w, "{name}=")?,
    }
    let mut escaped = String::with_capacity(text.len());
    escape_into(&text, &mut escaped);
    w.write_str(&escaped)
}

/// Appends `text` to `out` with every character that could change how a log line reads
/// escaped as `\u{…}`: control characters (newline, carriage return, ESC, …) and the Unicode
/// marks that reorder or hide text (bidirectional overrides and isolates, zero-width marks).
/// A backslash is doubled, so an escape in the output always came from this function.
pub fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if c.is_control() || is_format_mark(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
}

/// Invisible characters that change how surrounding text is shown.
fn is_format_mark(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// Whether `text` holds nothing [`escape_into`] would escape except backslashes: safe to show
/// as is, and what any name a client sends (principal, target) must satisfy.
pub fn is_plain(text: &str) -> bool {
    !text.chars().any(|c| c.is_control() || is_format_mark(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = String::new();
        escape_into(s, &mut out);
        out
    }

    #[test]
    fn controls_and_reordering_marks_are_escaped() {
        assert_eq!(
            escaped("eve@x.io\n2026-01-01 INFO forged"),
            "eve@x.io\\u{a}2026-01-01 INFO forged"
        );
        assert_eq!(escaped("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(escaped("net\u{202e}work"), "net\\u{202e}work");
        assert_eq!(
            escaped("a\\u{a}"),
            "a\\\\u{a}",
            "a literal escape stays visible"
        );
        assert_eq!(escaped("plain vm-1 port 22 é"), "plain vm-1 port 22 é");
        assert!(is_plain("user:alice@example.com"));
        assert!(!is_plain("user:a\r@example.com"));
        assert!(!is_plain("\u{2066}x"));
    }
}
