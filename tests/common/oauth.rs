//! A local OAuth token endpoint (with a token-info stand-in) and service-account keys that
//! point at it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::files::random_hex;
use super::process::{describe, run_with_timeout, tool_path};

/// A tiny HTTP/1.1 server on 127.0.0.1 answering every POST with a fixed access token, like
/// Google's OAuth token endpoint does for a service-account JWT grant.
#[derive(Debug)]
pub struct TokenEndpoint {
    /// `http://127.0.0.1:PORT/token`.
    pub url: String,
    /// The bound address.
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TokenEndpoint {
    /// Its token-info stand-in (`/tokeninfo`: a one-hour expiry for any token), for
    /// `IAP_SSH_TOKENINFO_URL`. Token-info requests are not counted in [`requests`](Self::requests).
    pub fn tokeninfo_url(&self) -> String {
        format!("http://{}/tokeninfo", self.addr)
    }

    /// How many token POST requests it has answered.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The request bodies received so far (form-encoded).
    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().expect("bodies lock").clone()
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a [`TokenEndpoint`] that hands out `token`.
pub fn spawn_token_endpoint(token: &str) -> TokenEndpoint {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding token endpoint");
    let addr = listener.local_addr().expect("token endpoint address");
    let requests = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let body = serde_json::json!({
        "access_token": token,
        "expires_in": 3600,
        "token_type": "Bearer",
    })
    .to_string();
    let thread = {
        let (requests, bodies, stop) = (requests.clone(), bodies.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                serve_token_request(conn, &body, |req_body| {
                    // Recorded before the answer goes out, so a client that has its token
                    // always sees itself counted.
                    bodies.lock().expect("bodies lock").push(req_body);
                    requests.fetch_add(1, Ordering::SeqCst);
                });
            }
        })
    };
    TokenEndpoint {
        url: format!("http://{addr}/token"),
        addr,
        requests,
        bodies,
        stop,
        thread: Some(thread),
    }
}

/// Reads one HTTP/1.1 request (headers, then a Content-Length body, bounded in size and time),
/// answers POST with `body` (after handing the request body to `record`), anything else with 405.
fn serve_token_request(mut conn: TcpStream, body: &str, record: impl FnOnce(String)) -> Option<()> {
    const MAX: usize = 1 << 20;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    conn.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 || buf.len() > MAX {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let headers: BTreeMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(MAX);
    while buf.len() < header_end + len {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let req_body = String::from_utf8_lossy(&buf[header_end..header_end + len]).into_owned();
    let is_post = head.starts_with("POST ");
    let info;
    let (status, payload) = if head.starts_with("POST /tokeninfo") {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 3600;
        info = serde_json::json!({ "exp": exp.to_string(), "expires_in": "3600" }).to_string();
        ("200 OK", info.as_str())
    } else if is_post {
        record(req_body);
        ("200 OK", body)
    } else {
        ("405 Method Not Allowed", "{}")
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    conn.write_all(resp.as_bytes()).ok()?;
    conn.flush().ok()
}

/// The `client_email` of the keys written by [`service_account_key`].
pub fn service_account_email(project_id: &str) -> String {
    format!("iap-ssh-test@{project_id}.iam.gserviceaccount.com")
}

/// Writes a service-account key JSON to `dir/sa-key.json`: a fresh RSA-2048 PKCS#8 key made by
/// `openssl genpkey`, `client_email` = [`service_account_email`], and `token_uri`.
///
/// # Panics
/// If openssl is missing or fails (check `require_tool("openssl")` first).
pub fn service_account_key(dir: &Path, token_uri: &str, project_id: &str) -> PathBuf {
    let pem_path = dir.join("sa-private-key.pem");
    let out = run_with_timeout(
        Command::new(tool_path("openssl").expect("openssl installed"))
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&pem_path),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "openssl genpkey failed\n{}",
        describe(&out)
    );
    let pem = fs::read_to_string(&pem_path).expect("reading generated key");
    assert!(
        pem.contains("BEGIN PRIVATE KEY"),
        "expected a PKCS#8 key from openssl genpkey"
    );
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": random_hex(20),
        "private_key": pem,
        "client_email": service_account_email(project_id),
        "client_id": "100000000000000000001",
        "auth_uri": "http://127.0.0.1/unused-auth-uri",
        "token_uri": token_uri,
    });
    let path = dir.join("sa-key.json");
    fs::write(&path, serde_json::to_vec_pretty(&key).expect("key JSON")).expect("writing key");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod key");
    path
}
