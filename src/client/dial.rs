//! Opening a WebSocket to the relay: TCP, TLS (always verified), and the HTTP upgrade with the
//! headers Google's relay expects (protocol.md §3).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri, header};
use tokio_util::either::Either;

use super::auth::Token;
use super::error::Error;
use super::proxy::Proxy;
use crate::wire::{SUBPROTOCOL, websocket_config};
use failure::{tls_alert_hint, upgrade_error};

mod failure;

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

/// Where the relay is: scheme, authority and path root (gcloud's `--iap-tunnel-url-override`
/// semantics: an empty or `/` path means `/v4`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    root: String,
    /// An HTTP proxy on the way to the relay (`wss://` only).
    proxy: Option<Proxy>,
}

impl Endpoint {
    /// Parses `wss://host[:port][/path]` (or `ws://` for a relay on a loopback address).
    ///
    /// # Errors
    /// A usage error for other schemes, a missing host, or plain `ws://` to a non-loopback host
    /// (which would send the bearer token in clear text).
    pub fn parse(url: &str) -> Result<Endpoint, Error> {
        let uri: Uri = url.parse().map_err(|e| {
            Error::usage(format!(
                "relay endpoint {url:?} is not a URL (expected wss://HOST[:PORT][/PATH]): {e}"
            ))
        })?;
        let tls = match uri.scheme_str() {
            Some("wss" | "https") => true,
            Some("ws" | "http") => false,
            _ => {
                return Err(Error::usage(format!(
                    "relay endpoint {url:?} must start with wss://"
                )));
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::usage(format!("relay endpoint {url:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if uri.query().is_some() {
            return Err(Error::usage(format!(
                "relay endpoint {url:?} must not have a query string"
            )));
        }
        if !tls && !is_loopback(&host) {
            return Err(Error::usage(format!(
                "refusing to send credentials over plain ws:// to {host}: use wss:// (plain ws:// is allowed only to a loopback relay)"
            )));
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
            proxy: None,
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
        // Like gcloud (and browsers), leave the scheme's default port out: the URL's authority
        // becomes the Host header, and gcloud sends `Host: tunnel.cloudproxy.app`.
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            format!("{scheme}://{host}{}/{endpoint}?{query}", self.root)
        } else {
            format!(
                "{scheme}://{host}:{}{}/{endpoint}?{query}",
                self.port, self.root
            )
        }
    }

    /// The same endpoint reached through `proxy`. Plain `ws://` is only for a loopback relay,
    /// which is never behind a proxy, so the proxy is ignored there.
    pub fn with_proxy(mut self, proxy: Option<Proxy>) -> Endpoint {
        self.proxy = proxy.filter(|_| self.tls);
        self
    }

    /// The proxy in use, if any.
    pub fn proxy(&self) -> Option<&Proxy> {
        self.proxy.as_ref()
    }

    /// The relay's host name or address.
    pub fn host(&self) -> &str {
        &self.host
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
    /// An [`Error`] whose kind tells authentication failures (HTTP 401) from others, with the
    /// HTTP status when the relay refused the upgrade.
    pub async fn open(
        &self,
        endpoint: &str,
        query: &str,
        token: &Token,
    ) -> Result<RelaySocket, Error> {
        self.open_with(endpoint, query, token, None).await
    }

    /// [`open`](Self::open), also sending `X-Goog-Request-Reason: <request_reason>` when given
    /// (gcloud's `--request-reason`). Each step's time is logged at debug level (`-vv`).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub async fn open_with(
        &self,
        endpoint: &str,
        query: &str,
        token: &Token,
        request_reason: Option<&HeaderValue>,
    ) -> Result<RelaySocket, Error> {
        let relay = self.endpoint.authority();
        let other = Error::other;
        let (host, port) = (self.endpoint.host.as_str(), self.endpoint.port);
        let mut clock = StepClock::new();
        let tcp = match &self.endpoint.proxy {
            Some(proxy) => {
                let tcp = step(proxy.connect(host, port, &self.user_agent), || {
                    format!("connecting to the relay at {relay} through the proxy at {}", proxy.authority())
                })
                .await??;
                clock.done(&format!("proxy CONNECT to {relay} through {}", proxy.authority()));
                tcp
            }
            _ => step(connect_tcp(host, port, &mut clock), || {
                format!("connecting to the relay at {relay}")
            })
            .await?
            .map_err(|e| other(format!("connecting to the relay at {relay}: {e}: check --endpoint, the network, and any proxy settings")))?,
        };
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
                other(tls_alert_hint(&e, &relay).unwrap_or_else(|| format!(
                    "TLS handshake with the relay at {relay} failed: {e}: if the relay uses a private CA, pass it with --ca-file"
                )))
            })?;
            clock.done("TLS handshake");
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
        if let Some(reason) = request_reason {
            headers.insert(REQUEST_REASON_HEADER, reason.clone());
        }

        let (ws, _response) = step(
            tokio_tungstenite::client_async_with_config(request, stream, Some(websocket_config())),
            || format!("WebSocket upgrade at the relay {relay}"),
        )
        .await?
        .map_err(|e| upgrade_error(&relay, e))?;
        clock.done(&format!("WebSocket upgrade (/{endpoint})"));
        Ok(ws)
    }
}

/// The header gcloud sends with the value of `--request-reason` (`core/request_reason`).
pub const REQUEST_REASON_HEADER: &str = "x-goog-request-reason";

/// Resolves `host` and connects to its addresses in turn (as `TcpStream::connect` does), timing
/// the two steps apart.
async fn connect_tcp(host: &str, port: u16, clock: &mut StepClock) -> std::io::Result<TcpStream> {
    let addrs: Vec<_> = tokio::net::lookup_host((host, port)).await?.collect();
    let n = addrs.len();
    clock.done(&format!(
        "DNS lookup of {host} ({n} address{})",
        if n == 1 { "" } else { "es" }
    ));
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                clock.done(&format!("TCP connect to {addr}"));
                return Ok(tcp);
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "TCP connect failed");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host} resolved to no address"),
        )
    }))
}

/// Logs how long each handshake step took, at debug level (`-vv`).
struct StepClock {
    started: std::time::Instant,
    last: std::time::Instant,
}

impl StepClock {
    fn new() -> StepClock {
        let now = std::time::Instant::now();
        StepClock {
            started: now,
            last: now,
        }
    }

    fn done(&mut self, what: &str) {
        let now = std::time::Instant::now();
        tracing::debug!(
            ms = millis(now - self.last),
            total_ms = millis(now - self.started),
            "handshake: {what}"
        );
        self.last = now;
    }
}

/// Milliseconds with one decimal, for timing lines.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

async fn step<F: Future>(fut: F, what: impl FnOnce() -> String) -> Result<F::Output, Error> {
    tokio::time::timeout(DIAL_STEP_TIMEOUT, fut)
        .await
        .map_err(|_| {
            Error::other(format!(
                "{} took longer than {}s: check the network path to the relay",
                what(),
                DIAL_STEP_TIMEOUT.as_secs()
            ))
        })
}

#[cfg(test)]
mod tests;
