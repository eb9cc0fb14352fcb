//! HTTPS proxies: which one to use (`--proxy`, `HTTPS_PROXY`, `NO_PROXY`) and the HTTP CONNECT
//! exchange that turns a TCP connection to the proxy into one to the relay. TLS to the relay
//! then runs inside it, so the proxy sees only the relay's name and port.

use std::fmt;

use base64::Engine;
use hyper_util::client::proxy::matcher::Matcher;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::Error;

/// Longest CONNECT response head we read; real proxies send a few hundred bytes.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// An HTTP proxy reached with CONNECT. Its credentials never appear in `Debug` or messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    host: String,
    port: u16,
    /// `Basic …` credentials from the URL's user and password.
    authorization: Option<String>,
    /// The user and password themselves, for token clients and gcloud.
    credentials: Option<(String, String)>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = if self.authorization.is_some() {
            " (with credentials)"
        } else {
            ""
        };
        write!(f, "Proxy(http://{}{auth})", self.authority())
    }
}

impl Proxy {
    /// Parses `http://[USER[:PASSWORD]@]HOST[:PORT][/]` (a URL without a scheme is taken as
    /// `http://`, as curl does; the port defaults to 80).
    ///
    /// # Errors
    /// A usage error for other schemes (`https://`, `socks5://`, …), a missing host, or a bad
    /// port. The message never holds the password.
    pub fn parse(url: &str) -> Result<Proxy, Error> {
        let url = url.trim();
        let rest = match url.split_once("://") {
            None => url,
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                let scheme = scheme.to_ascii_lowercase();
                let why = if scheme.starts_with("socks") {
                    "SOCKS proxies are not supported"
                } else if scheme == "https" {
                    "proxies reached over TLS (https://) are not supported"
                } else {
                    "only http:// proxies are supported"
                };
                return Err(Error::usage(format!(
                    "proxy URL scheme {scheme}:// : {why}: use an HTTP proxy that allows CONNECT, as http://HOST:PORT"
                )));
            }
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, tail) = v6.split_once(']').ok_or_else(|| {
                Error::usage(format!("proxy address {hostport:?} has no closing ]"))
            })?;
            (host, tail.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(Error::usage(
                "the proxy URL has no host: use http://HOST:PORT",
            ));
        }
        let port = match port {
            None | Some("") => 80,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                Error::usage(format!("proxy port {p:?} is not a number from 1 to 65535"))
            })?,
        };
        let credentials = userinfo.map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            (percent_decode(user), percent_decode(pass))
        });
        let authorization = credentials.as_ref().map(|(user, pass)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            )
        });
        Ok(Proxy {
            host: host.to_owned(),
            port,
            authorization,
            credentials,
        })
    }

    /// The proxy to use for `relay_host`: `flag` (`--proxy`) if given, else `https_proxy` or
    /// `HTTPS_PROXY` from `env` unless `NO_PROXY`/`no_proxy` lists the host. An empty value
    /// means none.
    ///
    /// # Errors
    /// When the chosen URL does not parse; the message names where it came from.
    pub fn select(
        flag: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        relay_host: &str,
    ) -> Result<Option<Proxy>, Error> {
        Proxy::select_with_gcloud(flag, None, env, relay_host)
    }

    /// [`select`](Self::select) with gcloud's `proxy/*` properties (as a URL) between the flag
    /// and the environment, as gcloud ranks them.
    ///
    /// # Errors
    /// When the chosen URL does not parse; the message names where it came from.
    pub fn select_with_gcloud(
        flag: Option<&str>,
        gcloud: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        relay_host: &str,
    ) -> Result<Option<Proxy>, Error> {
        if let Some(url) = flag {
            return match url.trim() {
                "" | "none" => Ok(None),
                url => Proxy::parse(url)
                    .map(Some)
                    .map_err(|e| e.context("--proxy")),
            };
        }
        if let Some(url) = gcloud {
            return Proxy::parse(url)
                .map(Some)
                .map_err(|e| e.context("gcloud property proxy/address"));
        }
        let Some((name, url)) = ["https_proxy", "HTTPS_PROXY"]
            .into_iter()
            .find_map(|n| env(n).filter(|v| !v.trim().is_empty()).map(|v| (n, v)))
        else {
            return Ok(None);
        };
        let no_proxy = env("no_proxy")
            .or_else(|| env("NO_PROXY"))
            .unwrap_or_default();
        if no_proxy_matches(&no_proxy, relay_host) {
            return Ok(None);
        }
        Proxy::parse(&url).map(Some).map_err(|e| e.context(name))
    }

    /// The proxy's host and port.
    pub fn host_port(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// The user and password from the proxy URL, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The proxy as a URL, `http://[USER:PASSWORD@]HOST:PORT`, for HTTP clients that take one.
    /// It holds the password: never show it.
    pub fn url(&self) -> String {
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let auth = self
            .credentials
            .as_ref()
            .map_or_else(String::new, |(u, p)| format!("{}:{}@", enc(u), enc(p)));
        format!("http://{auth}{}", self.authority())
    }

    /// `host:port` of the proxy, for messages.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The CONNECT request for `host:port`.
    pub fn connect_request(&self, host: &str, port: u16, user_agent: &str) -> String {
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut request =
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: {user_agent}\r\n");
        if let Some(auth) = &self.authorization {
            request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        request.push_str("\r\n");
        request
    }

    /// Connects to the proxy and asks it for a tunnel to `host:port`. The caller bounds the
    /// time this takes.
    ///
    /// # Errors
    /// A one-line [`Error`] for an unreachable proxy or a refused CONNECT (407 and 403 say
    /// what to do).
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        user_agent: &str,
    ) -> Result<TcpStream, Error> {
        let fail = Error::other;
        let proxy = self.authority();
        let mut stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| {
                fail(format!(
                    "connecting to the proxy at {proxy}: {e}: check --proxy or HTTPS_PROXY"
                ))
            })?;
        let request = self.connect_request(host, port, user_agent);
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| fail(format!("sending CONNECT to the proxy at {proxy}: {e}")))?;
        // Read byte by byte up to the blank line: whatever follows belongs to TLS, and a
        // buffered read could swallow it.
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_RESPONSE_HEAD {
                return Err(fail(format!(
                    "the proxy at {proxy} sent an oversized answer to CONNECT"
                )));
            }
            let byte = stream.read_u8().await.map_err(|e| {
                fail(format!(
                    "the proxy at {proxy} closed the connection during CONNECT: {e}"
                ))
            })?;
            head.push(byte);
        }
        let relay = format!("{host}:{port}");
        check_connect_response(&head)
            .map_err(|(status, reason)| fail(self.refusal(status, &reason, &relay)))?;
        Ok(stream)
    }

    fn refusal(&self, status: u16, reason: &str, relay: &str) -> String {
        let proxy = self.authority();
        let reason = crate::close::sanitize_reason(reason);
        match status {
            // 407 is the standard answer; some proxies (tinyproxy) send 401 instead.
            401 | 407 if self.authorization.is_some() => format!(
                "the proxy at {proxy} rejected the user and password in the proxy URL (HTTP {status} {reason}): check them"
            ),
            401 | 407 => format!(
                "the proxy at {proxy} requires authentication (HTTP {status} {reason}): put the user and password in the proxy URL, as http://USER:PASSWORD@HOST:PORT"
            ),
            403 => format!(
                "the proxy at {proxy} refused to connect to the relay {relay} (HTTP 403 {reason}): ask its administrator to allow CONNECT there, or list the relay in NO_PROXY"
            ),
            0 => format!(
                "the proxy at {proxy} did not answer CONNECT with HTTP: check the proxy URL"
            ),
            _ => format!(
                "the proxy at {proxy} refused CONNECT to the relay {relay} (HTTP {status} {reason}): check the proxy settings"
            ),
        }
    }
}

/// Checks a CONNECT response head: `Ok` for 2xx, else the status (0 if not HTTP) and reason.
pub fn check_connect_response(head: &[u8]) -> Result<(), (u16, String)> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().splitn(3, ' ');
    let (version, status, reason) = (parts.next(), parts.next(), parts.next());
    let status = match (version, status.and_then(|s| s.parse::<u16>().ok())) {
        (Some(v), Some(status)) if v.starts_with("HTTP/1.") => status,
        _ => return Err((0, String::new())),
    };
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err((status, reason.unwrap_or_default().to_owned()))
    }
}

/// Whether `host` is listed in a `NO_PROXY` value: `*`, exact names or addresses, address
/// ranges (`10.0.0.0/8`), and domain suffixes (`example.com` and `.example.com` both cover
/// `relay.example.com`), ignoring case. The matching is hyper-util's (curl's rules); around it,
/// entries may also be separated by spaces, ports in entries are ignored, and `*` covers
/// addresses too (hyper-util applies it to names only).
pub fn no_proxy_matches(list: &str, host: &str) -> bool {
    let mut entries = Vec::new();
    for entry in list
        .split([',', ' '])
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        if entry == "*" {
            return true;
        }
        // Strip a port, keeping bare IPv6 addresses whole.
        entries.push(match entry.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None if entry.matches(':').count() == 1 => entry.split(':').next().unwrap_or_default(),
            None => entry,
        });
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let url = if host.contains(':') {
        format!("https://[{host}]/")
    } else {
        format!("https://{host}/")
    };
    let Ok(uri) = url.parse::<hyper::http::Uri>() else {
        return false;
    };
    // Any proxy will do: only whether NO_PROXY lets it intercept the relay matters.
    Matcher::builder()
        .https("http://proxy.invalid")
        .no(entries.join(","))
        .build()
        .intercept(&uri)
        .is_none()
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests;
