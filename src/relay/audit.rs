//! The audit log: one JSON object per line for every connect, refusal, reconnect and close,
//! with who, from where, to what, and how much. Never a token or anything derived from one:
//! the event type has no field that could hold one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::Context;
use serde::Serialize;

/// One audit event. Fields that do not apply are left out of the line.
#[derive(Debug, Default, Serialize)]
pub struct Event<'a> {
    /// `connect`, `deny`, `auth_failure`, `reconnect`, `reconnect_refused`, `close`.
    pub event: &'a str,
    /// Who (after authentication).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<&'a str>,
    /// How the caller was authenticated (`static`, `jwt`, `tokeninfo`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<&'a str>,
    /// The client's address (from a trusted proxy's X-Forwarded-For when behind one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<IpAddr>,
    /// The target, described.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<&'a str>,
    /// The target port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<&'a str>,
    /// The binding that allowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binding: Option<&'a str>,
    /// Why it was refused or ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// Close code sent or received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// DATA bytes from the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_from_client: Option<u64>,
    /// DATA bytes to the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_to_client: Option<u64>,
    /// Session length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Resumes so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumes: Option<u32>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a Event<'a>,
}

/// Where audit lines go.
#[derive(Debug)]
pub struct AuditLog {
    file: Option<Mutex<File>>,
}

impl AuditLog {
    /// Appends to `path` (created with mode 0600), or discards lines when `None`.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: Option<&Path>) -> anyhow::Result<AuditLog> {
        let file = match path {
            Some(path) => {
                use std::os::unix::fs::OpenOptionsExt;
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("opening audit log {}", path.display()))?;
                Some(Mutex::new(file))
            }
            None => None,
        };
        Ok(AuditLog { file })
    }

    /// Writes one event as one line. A failed write is reported on stderr, not fatal: the
    /// relay keeps serving, and the operator sees the error in its log.
    pub fn record(&self, event: &Event<'_>) {
        let Some(file) = &self.file else { return };
        let line = Line {
            time: rfc3339(SystemTime::now()),
            event,
        };
        let Ok(mut text) = serde_json::to_string(&line) else {
            return;
        };
        text.push('\n');
        let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(text.as_bytes()) {
            tracing::error!(error = %e, "writing the audit log failed");
        }
    }
}

/// `2026-11-28T18:04:05.123Z`: UTC to the millisecond (truncated), the form of every audit
/// line's `time`. A clock before 1970 is written as the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let t = t.max(SystemTime::UNIX_EPOCH);
    // Only a time past the year 9999 does not convert.
    let at = jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::MAX);
    format!("{at:.3}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, "2000-02-29T00:00:00.000Z"),
            (1_795_000_000, "2026-11-18T11:06:40.000Z"),
            (4_102_444_799, "2099-12-31T23:59:59.000Z"),
        ];
        for (secs, want) in cases {
            assert_eq!(
                rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
                want
            );
        }
        let late = SystemTime::UNIX_EPOCH + Duration::new(1_795_000_000, 999_999_999);
        assert_eq!(rfc3339(late), "2026-11-18T11:06:40.999Z", "truncated");
        let early = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(rfc3339(early), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn lines_are_json_without_empty_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(Some(&path)).unwrap();
        log.record(&Event {
            event: "deny",
            principal: Some("user:a@x.io"),
            port: Some(22),
            reason: Some("no binding"),
            code: Some(4033),
            ..Event::default()
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["event"], "deny");
        assert_eq!(v["code"], 4033);
        assert!(v.get("sid").is_none());
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
