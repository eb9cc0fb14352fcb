//! Opening a WebSocket to the relay: TCP, TLS (always verified), and the HTTP upgrade with the
//! headers Google's relay expects (protocol.md §3).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::either::Either;

use super::auth::Token;
use crate::close::ExitKind;
use crate::frame::MAX_MESSAGE_LEN;

/// The WebSocket subprotocol of the IAP relay.
pub const SUBPROTOCOL: &str = "relay.tunnel.cloudproxy.app";
/// The `Origin` every IAP client sends; not a URL.
pub const ORIGIN: &str = "bot:iap-tunneler";
/// Google's relay, as gcloud and IAP Desktop use it.
pub const DEFAULT_ENDPOINT: &str = "wss://tunnel.cloudproxy.app/v4";
/// Google's relay for clients presenting a device certificate.
pub const DEFAULT_MTLS_ENDPOINT: &str = "wss://mtls.tunnel.cloudproxy.app/v4";

/// Bound on each network wait the relay controls during a dial: TCP connect, TLS handshake,
/// HTTP upgrade. Generous for slow links, short enough that a black hole is reported.
pub const DIAL_STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// The byte stream under the WebSocket: TLS, or plain TCP to a loopback relay.
pub type RelayStream = Either<TlsStream<TcpStream>, TcpStream>;
/// An open WebSocket to the relay.
pub type RelaySocket = WebSocketStream<RelayStream>;

/// A dial failure with the exit status it should produce.
#[derive(Debug)]
pub struct DialError {
    /// Exit status category.
    pub kind: ExitKind,
    /// One line: what failed and what to do.
    pub message: String,
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DialError {}

fn dial_error(kind: ExitKind, message: String) -> DialError {
    DialError { kind, message }
}

/// Where the relay is: scheme, authority and path root (gcloud's `--iap-tunnel-url-override`
/// semantics: an empty or `/` path means `/v4`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    root: String,
}

impl Endpoint {
    /// Parses `wss://host[:port][/path]` (or `ws://` for a relay on a loopback address).
    ///
    /// # Errors
    /// For other schemes, a missing host, or plain `ws://` to a non-loopback host (which would
    /// send the bearer token in clear text).
    pub fn parse(url: &str) -> anyhow::Result<Endpoint> {
        let uri: Uri = url.parse().with_context(|| {
            format!("relay endpoint {url:?} is not a URL (expected wss://HOST[:PORT][/PATH])")
        })?;
        let tls = match uri.scheme_str() {
            Some("wss" | "https") => true,
            Some("ws" | "http") => false,
            _ => bail!("relay endpoint {url:?} must start with wss://"),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| anyhow!("relay endpoint {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if uri.query().is_some() {
            bail!("relay endpoint {url:?} must not have a query string");
        }
        if !tls && !is_loopback(&host) {
            bail!(
                "refusing to send credentials over plain ws:// to {host}: use wss:// (plain ws:// is allowed only to a loopback relay)"
            );
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let root = match uri.path().trim_end_matches('/') {
            "" => "/v4".to_owned(),
            path => path.to_owned(),
        };
        Ok(Endpoint {
            tls,
            host,
            port,
            root,
        })
    }

    /// The URL of `endpoint` (`connect` or `reconnect`) with `query`.
    pub fn url(&self, endpoint: &str, query: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "{scheme}://{host}:{}{}/{endpoint}?{query}",
            self.port, self.root
        )
    }

    /// `host:port`, for messages.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The TLS settings for talking to relays: system roots plus `ca_file`, ring crypto, HTTP/1.1.
///
/// # Errors
/// When `ca_file` cannot be read or holds no certificate, or no trusted root is found at all.
pub fn tls_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = RootCertStore::empty();
    // The platform's roots (honours SSL_CERT_FILE / SSL_CERT_DIR); unreadable entries are
    // skipped, as browsers do.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading CA file {}", path.display()))?
        {
            let cert = cert.with_context(|| format!("parsing CA file {}", path.display()))?;
            roots.add(cert).with_context(|| {
                format!("CA file {} holds an unusable certificate", path.display())
            })?;
            added += 1;
        }
        if added == 0 {
            bail!("CA file {} holds no PEM certificate", path.display());
        }
    }
    if roots.is_empty() {
        bail!("no trusted root certificates found: install ca-certificates or pass --ca-file");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("configuring TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// WebSocket limits for relay traffic: one relay message per WebSocket message, 16 KiB
/// payloads, so anything much larger is refused before it is buffered.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_LEN + 1024))
        .max_frame_size(Some(MAX_MESSAGE_LEN + 1024))
}

/// Everything a handshake needs besides the token.
#[derive(Debug)]
pub struct Dialer {
    /// Where the relay is.
    pub endpoint: Endpoint,
    /// TLS settings.
    pub tls: Arc<rustls::ClientConfig>,
    /// Our `User-Agent`.
    pub user_agent: String,
}

impl Dialer {
    /// Opens `/v4/<endpoint>?<query>` with `token`.
    ///
    /// # Errors
    /// A [`DialError`] whose kind tells authentication failures (HTTP 401) from others.
    pub async fn open(
        &self,
        endpoint: &str,
        query: &str,
        token: &Token,
    ) -> Result<RelaySocket, DialError> {
        let relay = self.endpoint.authority();
        let other = |message: String| dial_error(ExitKind::Other, message);
        let tcp = step(
            TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port)),
            || format!("connecting to the relay at {relay}"),
        )
        .await?
        .map_err(|e| other(format!("connecting to the relay at {relay}: {e}: check --endpoint, the network, and any proxy settings")))?;
        // Interactive sessions send small writes; Nagle's delay would add latency to each keystroke.
        let _ = tcp.set_nodelay(true);

        let stream = if self.endpoint.tls {
            let name = ServerName::try_from(self.endpoint.host.clone()).map_err(|_| {
                other(format!(
                    "relay host {:?} is not a valid TLS server name",
                    self.endpoint.host
                ))
            })?;
            let tls = step(TlsConnector::from(self.tls.clone()).connect(name, tcp), || {
                format!("TLS handshake with the relay at {relay}")
            })
            .await?
            .map_err(|e| {
                other(format!(
                    "TLS handshake with the relay at {relay} failed: {e}: if the relay uses a private CA, pass it with --ca-file"
                ))
            })?;
            Either::Left(tls)
        } else {
            Either::Right(tcp)
        };

        let url = self.endpoint.url(endpoint, query);
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| other(format!("building the request for {relay}: {e}")))?;
        let headers = request.headers_mut();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
        headers.insert(header::ORIGIN, HeaderValue::from_static(ORIGIN));
        headers.insert(header::AUTHORIZATION, token.authorization());
        if let Ok(ua) = HeaderValue::from_str(&self.user_agent) {
            headers.insert(header::USER_AGENT, ua);
        }

        let (ws, _response) = step(
            tokio_tungstenite::client_async_with_config(request, stream, Some(websocket_config())),
            || format!("WebSocket upgrade at the relay {relay}"),
        )
        .await?
        .map_err(|e| upgrade_error(&relay, e))?;
        Ok(ws)
    }
}

async fn step<F: Future>(fut: F, what: impl FnOnce() -> String) -> Result<F::Output, DialError> {
    tokio::time::timeout(DIAL_STEP_TIMEOUT, fut)
        .await
        .map_err(|_| {
            dial_error(
                ExitKind::Other,
                format!(
                    "{} took longer than {}s: check the network path to the relay",
                    what(),
                    DIAL_STEP_TIMEOUT.as_secs()
                ),
            )
        })
}

fn upgrade_error(relay: &str, e: tokio_tungstenite::tungstenite::Error) -> DialError {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(response) => {
            let status = response.status();
            let (kind, hint) = match status.as_u16() {
                401 => (
                    ExitKind::Authentication,
                    "the relay did not accept the credentials: check the token source (--access-token-file, --credentials-file, or `gcloud auth application-default login`)",
                ),
                403 => (
                    ExitKind::NotAuthorized,
                    "the relay refused access: ask for roles/iap.tunnelResourceAccessor, or check that a proxy allows WebSocket upgrades",
                ),
                404 => (
                    ExitKind::NotFound,
                    "the relay has no such endpoint: check --endpoint (its path should end in /v4)",
                ),
                _ => (ExitKind::Other, "check --endpoint and the relay's logs"),
            };
            dial_error(
                kind,
                format!(
                    "the relay at {relay} answered the WebSocket upgrade with HTTP {status}: {hint}"
                ),
            )
        }
        other => dial_error(
            ExitKind::Other,
            format!("WebSocket upgrade at the relay {relay} failed: {other}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_like_gcloud_overrides() {
        let cases = [
            (
                "wss://tunnel.cloudproxy.app/v4",
                "wss://tunnel.cloudproxy.app:443/v4/connect?q",
            ),
            ("wss://127.0.0.1:8443", "wss://127.0.0.1:8443/v4/connect?q"),
            ("wss://127.0.0.1:8443/", "wss://127.0.0.1:8443/v4/connect?q"),
            (
                "wss://relay.example/custom/",
                "wss://relay.example:443/custom/connect?q",
            ),
            ("wss://[::1]:9000", "wss://[::1]:9000/v4/connect?q"),
            ("ws://127.0.0.1:80", "ws://127.0.0.1:80/v4/connect?q"),
            ("ws://localhost:8080/v4", "ws://localhost:8080/v4/connect?q"),
        ];
        for (input, url) in cases {
            let endpoint = Endpoint::parse(input).unwrap();
            assert_eq!(endpoint.url("connect", "q"), url, "{input}");
        }
    }

    #[test]
    fn bad_endpoints_are_clear_errors() {
        let cases = [
            ("ftp://x", "must start with wss://"),
            (
                "ws://relay.example",
                "refusing to send credentials over plain ws://",
            ),
            ("wss://x/v4?a=b", "must not have a query"),
            ("not a url", "is not a URL"),
        ];
        for (input, expected) in cases {
            let err = Endpoint::parse(input).unwrap_err().to_string();
            assert!(err.contains(expected), "{input}: {err}");
        }
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here").unwrap();
        let err = format!("{:#}", tls_config(Some(&empty)).unwrap_err());
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let missing = dir.path().join("missing.pem");
        let err = format!("{:#}", tls_config(Some(&missing)).unwrap_err());
        assert!(err.contains("reading CA file"), "{err}");
    }
}
