//! A stand-in for Google's credential endpoints on 127.0.0.1, for offline tests of every
//! credential shape through the real libraries: the OAuth token endpoint (refresh and
//! JWT-bearer grants), STS (external accounts), IAM Credentials `generateAccessToken`
//! (impersonation), a URL subject-token source, the metadata server, and token-info.
//!
//! Tokens are `ya29.<kind>-<generation>`, kind being `oauth`, `sts`, `iam` or `mds`;
//! [`FakeGoogle::set_generation`] makes every later answer a new token.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The email token-info gives for `oauth` tokens.
pub const USER_EMAIL: &str = "alice@example.com";
/// The email token-info gives for metadata-server tokens.
pub const VM_EMAIL: &str = "vm-sa@test-proj.iam.gserviceaccount.com";
/// The service account impersonation targets.
pub const IMPERSONATED: &str = "deploy@test-proj.iam.gserviceaccount.com";
/// The subject token the URL source serves and the executable prints.
pub const SUBJECT: &str = "subject-token-from-the-ci";

/// One request as the stand-in saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Method and path, e.g. `POST /token`.
    pub line: String,
    /// Lowercased header names and values.
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub body: String,
}

/// The running stand-in; stops on drop.
pub struct FakeGoogle {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    addr: SocketAddr,
    generation: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for FakeGoogle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix seconds as RFC 3339 (UTC), as IAM Credentials writes `expireTime`.
fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl FakeGoogle {
    /// Starts one on a free loopback port.
    pub fn start() -> FakeGoogle {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake Google");
        let addr = listener.local_addr().expect("address");
        let generation = Arc::new(AtomicU64::new(1));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (generation, seen, stop) = (generation.clone(), seen.clone(), stop.clone());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (generation, seen) = (generation.clone(), seen.clone());
                    thread::spawn(move || serve(conn, &generation, &seen));
                }
            });
        }
        FakeGoogle {
            base: format!("http://{addr}"),
            addr,
            generation,
            seen,
            stop,
        }
    }

    /// `host:port`.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// The token this stand-in issues for `kind` now.
    pub fn token(&self, kind: &str) -> String {
        format!("ya29.{kind}-{}", self.generation.load(Ordering::SeqCst))
    }

    /// The generation counter, for a test server that must move it on by itself.
    pub fn generation_handle(&self) -> Arc<AtomicU64> {
        self.generation.clone()
    }

    /// Makes later answers hand out generation `n`.
    pub fn set_generation(&self, n: u64) {
        self.generation.store(n, Ordering::SeqCst);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// How many requests were `line` (e.g. `POST /token`), with any query string.
    pub fn hits(&self, line: &str) -> usize {
        let with_query = format!("{line}?");
        self.seen()
            .iter()
            .filter(|s| s.line == line || s.line.starts_with(&with_query))
            .count()
    }

    /// The token endpoint URL (`token_uri`, gcloud's `auth/token_host`).
    pub fn token_url(&self) -> String {
        format!("{}/token", self.base)
    }

    /// The STS endpoint URL (`token_url` of external accounts).
    pub fn sts_url(&self) -> String {
        format!("{}/sts", self.base)
    }

    /// The impersonation URL for [`IMPERSONATED`].
    pub fn impersonation_url(&self) -> String {
        format!(
            "{}/v1/projects/-/serviceAccounts/{IMPERSONATED}:generateAccessToken",
            self.base
        )
    }

    /// The token-info URL (for `IAP_SSH_TOKENINFO_URL`).
    pub fn tokeninfo_url(&self) -> String {
        format!("{}/tokeninfo", self.base)
    }
}

fn serve(mut conn: TcpStream, generation: &AtomicU64, seen: &Mutex<Vec<Seen>>) {
    const MAX: usize = 1 << 20;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > MAX {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(MAX);
    while buf.len() < header_end + len {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[header_end..header_end + len]).into_owned();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    // Through an HTTP proxy the target is absolute: keep only the path.
    let target = parts.next().unwrap_or_default();
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]).to_owned(),
        None => target.to_owned(),
    };
    let line = format!("{method} {path}");
    seen.lock().expect("seen lock").push(Seen {
        line: line.clone(),
        headers: headers.clone(),
        body: body.clone(),
    });
    let g = generation.load(Ordering::SeqCst);
    let exp = now() + 3600;
    let ok = |json: serde_json::Value| ("200 OK", "application/json", json.to_string());
    let (status, kind, payload) = if line == "POST /token" {
        ok(serde_json::json!({
            "access_token": format!("ya29.oauth-{g}"), "expires_in": 3600, "token_type": "Bearer",
            "scope": "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email"
        }))
    } else if line.starts_with("POST /sts") {
        ok(serde_json::json!({
            "access_token": format!("ya29.sts-{g}"), "expires_in": 3600, "token_type": "Bearer",
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"
        }))
    } else if line.starts_with("POST /v1/projects/-/serviceAccounts/") {
        ok(
            serde_json::json!({ "accessToken": format!("ya29.iam-{g}"), "expireTime": rfc3339(exp) }),
        )
    } else if line.starts_with("GET /subject") {
        if headers.get("x-test").map(String::as_str) == Some("yes") {
            ok(serde_json::json!({ "value": SUBJECT }))
        } else {
            ("403 Forbidden", "text/plain", "missing header".to_owned())
        }
    } else if line.starts_with("GET /computeMetadata/v1/instance/service-accounts/default/token") {
        if headers.get("metadata-flavor").map(String::as_str) == Some("Google") {
            ok(serde_json::json!({
                "access_token": format!("ya29.mds-{g}"), "expires_in": 3600, "token_type": "Bearer"
            }))
        } else {
            (
                "403 Forbidden",
                "text/plain",
                "no Metadata-Flavor".to_owned(),
            )
        }
    } else if line.starts_with("GET /computeMetadata/") {
        ("404 Not Found", "text/plain", String::new())
    } else if line.starts_with("POST /tokeninfo") || line.starts_with("GET /tokeninfo") {
        let token = body
            .split('&')
            .chain(path.split(['?', '&']))
            .find_map(|kv| kv.strip_prefix("access_token="))
            .unwrap_or_default()
            .to_owned();
        let email = if token.starts_with("ya29.oauth-") {
            Some(USER_EMAIL)
        } else if token.starts_with("ya29.mds-") {
            Some(VM_EMAIL)
        } else if token.starts_with("ya29.iam-") {
            Some(IMPERSONATED)
        } else {
            None
        };
        if token.starts_with("ya29.") {
            let mut info = serde_json::json!({ "exp": exp.to_string(), "expires_in": "3600" });
            if let Some(email) = email {
                info["email"] = email.into();
            }
            ok(info)
        } else {
            (
                "400 Bad Request",
                "application/json",
                r#"{"error":"invalid_token"}"#.to_owned(),
            )
        }
    } else {
        ("404 Not Found", "text/plain", String::new())
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    let _ = conn.flush();
}
