//! The relay's outbound HTTP: a small HTTPS GET client for its own lookups (JWKS documents,
//! token-info), on the same rustls and ring as everything else. Clients' requests come in
//! through `handshake` and `upgrade`, never through here. Plain `http://` is allowed only to loopback, so a
//! token sent to a token-info endpoint never crosses a network in clear text.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Largest response body accepted (a JWKS or token-info answer is a few KiB).
const MAX_BODY: usize = 256 * 1024;

/// An HTTP client with verified TLS and a per-request timeout.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HttpClient {
    /// A client trusting the system roots plus `ca_file`.
    ///
    /// # Errors
    /// When the CA file cannot be used.
    pub fn new(ca_file: Option<&Path>, timeout: Duration) -> anyhow::Result<HttpClient> {
        let tls = crate::wire::tls_config(ca_file)?;
        let mut tls = (*tls).clone();
        tls.alpn_protocols.clear();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }

    /// Checks that `url` may be used: https, or http to a loopback host.
    ///
    /// # Errors
    /// For anything else.
    pub fn check_url(url: &str) -> anyhow::Result<()> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL"))?;
        match uri.scheme_str() {
            Some("https") => Ok(()),
            Some("http")
                if uri
                    .host()
                    .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
                    .is_some_and(|h| {
                        h == "localhost"
                            || h.parse::<std::net::IpAddr>()
                                .is_ok_and(|ip| ip.is_loopback())
                    }) =>
            {
                Ok(())
            }
            _ => {
                bail!("{url:?} must be an https:// URL (plain http:// only to a loopback address)")
            }
        }
    }

    /// GETs `url`, returning the status and body. `what` names the request in errors; the URL
    /// itself is never put in an error, since it may carry a token.
    ///
    /// # Errors
    /// Network failures, timeouts, and bodies over 256 KiB.
    pub async fn get(&self, url: &str, what: &str) -> anyhow::Result<(u16, Bytes)> {
        let uri: Uri = url.parse().map_err(|_| anyhow!("{what}: bad URL"))?;
        let request = async {
            let response = self
                .inner
                .get(uri)
                .await
                .map_err(|e| anyhow!("{what}: {}", describe(&e)))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| anyhow!("{what}: reading the answer: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| anyhow!("{what}: no answer within {}s", self.timeout.as_secs()))?
    }
}

/// The error chain of a hyper client error, without the request URL.
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
