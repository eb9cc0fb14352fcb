//! The gcloud account as a token source, through `gcloud config config-helper --format=json`:
//! gcloud's documented interface for other tools. Its answer holds the active account's token
//! with its real expiry (after any `auth/impersonate_service_account`), and every active
//! property, which gcloud has already merged from the environment, the configuration and the
//! installation.
//!
//! gcloud takes about a second to start, and iap-ssh runs once per ssh connection, so the
//! caller keeps the answer in the disk cache and calls gcloud only when no cached token has
//! [`REFRESH_MARGIN`](super::cache::REFRESH_MARGIN) left to live.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::auth::Token;
use super::error::Error;
use super::gcloud_properties::GcloudProperties;

/// Upper bound on one gcloud run: its start-up plus one token refresh over a slow network.
pub const GCLOUD_TIMEOUT: Duration = Duration::from_secs(60);

/// `--min-expiry` asked of gcloud: a little more than our cache's refresh margin, so that what
/// gcloud hands back is worth caching.
const MIN_EXPIRY: &str = "6m";

/// How to run gcloud.
#[derive(Clone, Debug)]
pub struct GcloudRunner {
    /// The `gcloud` executable.
    pub program: PathBuf,
    /// `http://[USER:PASSWORD@]HOST:PORT` when `--proxy` chose a proxy gcloud does not know
    /// of; passed to it as `CLOUDSDK_PROXY_*`.
    pub proxy_override: Option<String>,
}

/// What `config-helper` answered.
#[derive(Clone, Debug)]
pub struct GcloudAnswer {
    /// The active account's token (or the impersonated service account's).
    pub token: Token,
    /// `credential.token_expiry`, Unix seconds.
    pub expires_at: Option<u64>,
    /// `configuration.properties`.
    pub properties: GcloudProperties,
}

#[derive(serde::Deserialize)]
struct Answer {
    #[serde(default)]
    configuration: Configuration,
    credential: Credential,
}

#[derive(Default, serde::Deserialize)]
struct Configuration {
    #[serde(default)]
    properties: serde_json::Value,
}

#[derive(serde::Deserialize)]
struct Credential {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    token_expiry: Option<String>,
}

impl GcloudRunner {
    fn command(&self, force_refresh: bool) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(["config", "config-helper", "--format=json"]);
        if force_refresh {
            // After the relay refused gcloud's cached token: ask for a new one.
            cmd.arg("--force-auth-refresh");
        } else {
            cmd.arg(format!("--min-expiry={MIN_EXPIRY}"));
        }
        cmd.env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(url) = &self.proxy_override
            && let Ok(proxy) = super::proxy::Proxy::parse(url)
        {
            let (host, port) = proxy.host_port();
            cmd.env("CLOUDSDK_PROXY_TYPE", "http")
                .env("CLOUDSDK_PROXY_ADDRESS", host)
                .env("CLOUDSDK_PROXY_PORT", port.to_string());
            if let Some((user, pass)) = proxy.credentials() {
                cmd.env("CLOUDSDK_PROXY_USERNAME", user)
                    .env("CLOUDSDK_PROXY_PASSWORD", pass);
            }
        }
        cmd
    }

    /// Runs `gcloud config config-helper` and reads its answer. Blocks for up to
    /// [`GCLOUD_TIMEOUT`]; async callers run it on a blocking thread.
    ///
    /// # Errors
    /// An [`Error`] when gcloud cannot be run, fails, or answers without a token: network
    /// trouble exits 1, the rest 3. The message carries gcloud's own last error line (never a
    /// token: gcloud prints none there).
    pub fn run(&self, force_refresh: bool) -> Result<GcloudAnswer, Error> {
        let program = self.program.display().to_string();
        let auth = Error::auth;
        tracing::info!(program = %program, "asking gcloud for the active account's token (gcloud config config-helper)");
        let mut child = self
            .command(force_refresh)
            .spawn()
            .map_err(|e| auth(format!("running {program}: {e}: install the Google Cloud SDK, or choose another source with --credentials")))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let out = std::thread::spawn(move || read_all(stdout));
        let err = std::thread::spawn(move || read_all(stderr));
        let deadline = Instant::now() + GCLOUD_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::other(format!(
                        "gcloud config config-helper took longer than {}s: check the network and gcloud's proxy settings",
                        GCLOUD_TIMEOUT.as_secs()
                    )));
                }
                Err(e) => return Err(auth(format!("waiting for {program}: {e}"))),
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
        if !status.success() {
            return Err(explain_failure(&stderr));
        }
        parse_answer(&stdout)
    }
}

fn read_all(stream: Option<impl Read>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut s) = stream {
        // gcloud's answer is a few KiB; a bound keeps a confused program from filling memory.
        let _ = s.by_ref().take(1 << 20).read_to_end(&mut buf);
    }
    buf
}

/// Parses `config-helper --format=json` output.
///
/// # Errors
/// An authentication error when it is not the expected JSON or holds no usable token (the
/// message never holds one).
pub fn parse_answer(stdout: &[u8]) -> Result<GcloudAnswer, Error> {
    let answer: Answer = serde_json::from_slice(stdout).map_err(|e| {
        Error::auth(format!("gcloud config config-helper answered something other than its JSON ({e}): check that `gcloud` is the Google Cloud SDK"))
    })?;
    let token = answer
        .credential
        .access_token
        .as_deref()
        .ok_or_else(|| {
            Error::auth(
                "gcloud config config-helper answered without an access token: run `gcloud auth login`",
            )
        })
        .and_then(|t| Token::new(t).map_err(|e| e.context("gcloud config config-helper")))?;
    let expires_at = answer
        .credential
        .token_expiry
        .as_deref()
        .and_then(parse_rfc3339);
    Ok(GcloudAnswer {
        token,
        expires_at,
        properties: GcloudProperties::from_config_helper(&answer.configuration.properties),
    })
}

/// `2026-12-03T10:18:47Z` (gcloud's `token_expiry`, also with fractions or an offset) as Unix
/// seconds.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let ts: jiff::Timestamp = text.trim().parse().ok()?;
    u64::try_from(ts.as_second()).ok()
}

/// Turns gcloud's stderr into one line: a network failure (exit 1, naming the host gcloud
/// could not reach) or an authentication failure (exit 3).
pub fn explain_failure(stderr: &str) -> Error {
    let last = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| l.starts_with("ERROR:"))
        .or_else(|| stderr.lines().map(str::trim).rfind(|l| !l.is_empty()))
        .unwrap_or("no error message")
        .trim_start_matches("ERROR:")
        .trim();
    let last = crate::close::sanitize_reason(last);
    let network_words = [
        "Failed to establish a new connection",
        "Max retries exceeded",
        "Connection refused",
        "Name or service not known",
        "Temporary failure in name resolution",
        "timed out",
        "Unable to connect to proxy",
        "ProxyError",
        "ConnectionError",
    ];
    if network_words.iter().any(|w| stderr.contains(w)) {
        let host = network_host(stderr).map_or_else(String::new, |h| format!(" {h}"));
        return Error::other(format!(
            "network error: gcloud could not reach{host} to refresh the active account's token: {last}: check the network and gcloud's proxy settings"
        ));
    }
    Error::auth(format!(
        "the gcloud account gave no token (gcloud config config-helper: {last}): run `gcloud auth login`, or choose another source with --credentials"
    ))
}

/// The host in urllib3's `host='…'` or a URL in gcloud's error text.
fn network_host(stderr: &str) -> Option<String> {
    if let Some(rest) = stderr.split("host='").nth(1) {
        return rest.split('\'').next().map(str::to_owned);
    }
    let url = stderr.split("://").nth(1)?;
    url.split(['/', ' ', '\'', '"', ')'])
        .next()
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
}

/// `gcloud` on `path` (a `PATH` value), if any.
pub fn find_program(path: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join("gcloud"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ExitKind;

    #[test]
    fn answers_parse_with_their_real_expiry() {
        let json = br#"{"configuration": {"active_configuration": "default", "properties": {
            "core": {"account": "alice@example.com", "project": "p"},
            "auth": {"impersonate_service_account": "sa@p.iam.gserviceaccount.com"}}},
            "credential": {"access_token": "ya29.x", "id_token": null,
            "token_expiry": "2026-12-03T10:18:47Z"}, "sentinels": {}}"#;
        let a = parse_answer(json).unwrap();
        assert_eq!(a.token.authorization(), "Bearer ya29.x");
        assert_eq!(a.expires_at, Some(1_796_293_127));
        assert_eq!(a.properties.account.as_deref(), Some("alice@example.com"));
        assert_eq!(
            a.properties.impersonate.as_deref(),
            Some("sa@p.iam.gserviceaccount.com")
        );
        let err = parse_answer(br#"{"credential": {"access_token": null}}"#).unwrap_err();
        assert!(err.message.contains("gcloud auth login"), "{err}");
        assert!(parse_answer(b"not json").is_err());
    }

    #[test]
    fn failures_tell_network_from_authentication() {
        let net = explain_failure(
            "ERROR: (gcloud.config.config-helper) There was a problem refreshing your current auth tokens: HTTPSConnectionPool(host='oauth2.googleapis.com', port=443): Max retries exceeded with url: /token (Caused by NewConnectionError('Failed to establish a new connection: [Errno 111] Connection refused'))",
        );
        assert_eq!(net.kind, ExitKind::Other);
        assert!(
            net.message.starts_with("network error")
                && net.message.contains("oauth2.googleapis.com"),
            "{}",
            net.message
        );
        let auth = explain_failure(
            "ERROR: (gcloud.config.config-helper) You do not currently have an active account selected.\n",
        );
        assert_eq!(auth.kind, ExitKind::Authentication);
        assert!(
            auth.message.contains("gcloud auth login"),
            "{}",
            auth.message
        );
    }
}
