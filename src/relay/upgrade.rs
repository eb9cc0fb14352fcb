//! The HTTP side of a client's upgrade request, on hyper's server: what the relay reads from
//! the request ([`Head`]), whether it is a WebSocket upgrade at all, the `101 Switching
//! Protocols` answer, and the short plain-text [`Refusal`]s.
//!
//! hyper parses the request (with the limits in [`builder`]); authentication may need the
//! network (a JWKS refresh, a token-info lookup), so it runs in the service before the answer
//! is written. After a 101, hyper hands back the connection and the bytes it read past the
//! head; [`Prefixed`] replays those to the WebSocket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::wire::SUBPROTOCOL;

/// Largest request head accepted (headers included); larger gets 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines accepted; more gets 431.
const MAX_HEADERS: usize = 64;

/// What a relay's HTTP answer is made of.
pub type Answer = Response<Full<Bytes>>;

/// The HTTP/1.1 server settings for client connections: a bounded head, and no timers of
/// hyper's own (the handshake limit covers the whole exchange). One request per connection:
/// every answer either switches protocols or says `Connection: close`. (Turning keep-alive
/// off instead would make hyper add `close` to a 101's `Connection: Upgrade` too.)
pub fn builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .max_header_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .header_read_timeout(None)
        .title_case_headers(true)
        .auto_date_header(false);
    builder
}

/// What the relay needs from an upgrade request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// The path without the query.
    pub path: String,
    /// The query string, if any.
    pub query: String,
    /// The `Authorization` header, if present.
    pub authorization: Option<String>,
    /// Every `X-Forwarded-For` header, in order, joined with `, `.
    pub forwarded_for: Option<String>,
    /// The `User-Agent` header, if present (only to recognise clients with known quirks).
    pub user_agent: Option<String>,
    /// Whether the request is a WebSocket upgrade (see [`is_upgrade`]).
    pub upgrade: bool,
}

impl Head {
    /// The parts of `req` the relay reads.
    pub fn of<B>(req: &Request<B>) -> Head {
        fn text(v: &HeaderValue) -> Option<&str> {
            std::str::from_utf8(v.as_bytes()).ok()
        }
        let header = |name: header::HeaderName| req.headers().get(name).and_then(text);
        // Every X-Forwarded-For header, in order: a proxy that appends its own header after
        // the client's must not have the client's first one believed instead.
        let forwarded: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(text)
            .collect();
        Head {
            path: req.uri().path().to_owned(),
            query: req.uri().query().unwrap_or_default().to_owned(),
            authorization: header(header::AUTHORIZATION).map(str::to_owned),
            forwarded_for: (!forwarded.is_empty()).then(|| forwarded.join(", ")),
            user_agent: header(header::USER_AGENT).map(str::to_owned),
            upgrade: is_upgrade(req),
        }
    }
}

/// Whether `req` is a WebSocket upgrade (RFC 6455 section 4.2.1): a GET over HTTP/1.1 with
/// `Connection: Upgrade`, `Upgrade: websocket`, version 13 and a well-formed key.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    let value = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    req.method() == Method::GET
        && req.version() >= Version::HTTP_11
        && value(header::CONNECTION).is_some_and(|v| {
            v.split([' ', ','])
                .any(|p| p.eq_ignore_ascii_case("upgrade"))
        })
        && value(header::UPGRADE).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && value(header::SEC_WEBSOCKET_VERSION) == Some("13")
        && value(header::SEC_WEBSOCKET_KEY).is_some_and(|key| {
            base64::engine::general_purpose::STANDARD
                .decode(key)
                .is_ok_and(|k| k.len() == 16)
        })
}

/// The `101 Switching Protocols` answer to `req` (checked by [`is_upgrade`]), with the IAP
/// subprotocol echoed when the client offers it.
pub fn switching_protocols(headers: &HeaderMap) -> Answer {
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(SUBPROTOCOL));
    let mut answer = Response::new(Full::default());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = answer.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&key) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if offered {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    answer
}

/// The HTTP errors an upgrade request may be answered with (hyper itself answers a head it
/// cannot parse with 400, and one over [`MAX_HEAD`] with 431).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 400: not a WebSocket upgrade, or a query that names no target.
    BadRequest,
    /// 401: no bearer token, or one not accepted.
    Unauthorized,
    /// 404: neither `/v4/connect` nor `/v4/reconnect`.
    NotFound,
    /// 429: the principal holds its limit of tunnels.
    TooManyRequests,
    /// 503: the relay is draining; try another node at once.
    Draining,
    /// 503: the memory budget is reached; try again shortly.
    Full,
}

impl Refusal {
    /// The status code.
    pub fn status(self) -> u16 {
        self.parts().0.as_u16()
    }

    /// Status, reason phrase (also the body) and an extra header.
    fn parts(
        self,
    ) -> (
        StatusCode,
        &'static str,
        Option<(&'static str, &'static str)>,
    ) {
        match self {
            Refusal::BadRequest => (StatusCode::BAD_REQUEST, "Bad Request", None),
            Refusal::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                Some(("WWW-Authenticate", "Bearer")),
            ),
            Refusal::NotFound => (StatusCode::NOT_FOUND, "Not Found", None),
            Refusal::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests", None),
            Refusal::Draining => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                Some(("Retry-After", "1")),
            ),
            Refusal::Full => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                Some(("Retry-After", "5")),
            ),
        }
    }

    /// The answer: the status, the reason phrase as a plain-text body, and the connection
    /// closed after it.
    pub fn answer(self) -> Answer {
        let (status, reason, extra) = self.parts();
        let mut answer = plain_text(status, format!("{reason}\n"), "text/plain");
        if let Some((name, value)) = extra {
            answer
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        answer
    }
}

/// A plain-text answer that closes the connection.
pub fn plain_text(status: StatusCode, body: String, content_type: &'static str) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    let h = answer.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    answer
}

/// A stream that first yields `prefix`, then reads from `inner`; writes go to `inner`.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Replays `prefix` before `inner`.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    fn request(extra: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::get("/v4/connect?project=p&port=22");
        for (name, value) in [
            ("Host", "x"),
            ("Connection", "keep-alive, Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]
        .iter()
        .chain(extra)
        {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn the_head_is_read_from_the_request() {
        let req = request(&[
            ("Authorization", "Bearer abc"),
            ("X-Forwarded-For", "10.1.2.3"),
            ("X-Forwarded-For", "10.9.9.9"),
        ]);
        let head = Head::of(&req);
        assert_eq!(head.path, "/v4/connect");
        assert_eq!(head.query, "project=p&port=22");
        assert_eq!(head.authorization.as_deref(), Some("Bearer abc"));
        assert_eq!(head.forwarded_for.as_deref(), Some("10.1.2.3, 10.9.9.9"));
        assert!(head.upgrade);
    }

    #[test]
    fn only_websocket_upgrades_are_upgrades() {
        assert!(is_upgrade(&request(&[])));
        let mut plain = request(&[]);
        plain.headers_mut().remove(header::UPGRADE);
        assert!(!is_upgrade(&plain));
        let mut short_key = request(&[]);
        short_key.headers_mut().insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("c2hvcnQ="),
        );
        assert!(!is_upgrade(&short_key));
        let mut post = request(&[]);
        *post.method_mut() = Method::POST;
        assert!(!is_upgrade(&post));
    }

    #[test]
    fn the_upgrade_answer_accepts_the_key_and_echoes_the_subprotocol() {
        let req = request(&[("Sec-WebSocket-Protocol", SUBPROTOCOL)]);
        let answer = switching_protocols(req.headers());
        assert_eq!(answer.status(), StatusCode::SWITCHING_PROTOCOLS);
        // The example key and accept value of RFC 6455 section 1.3.
        assert_eq!(
            answer.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(
            answer.headers()[header::SEC_WEBSOCKET_PROTOCOL],
            SUBPROTOCOL
        );
        let without = switching_protocols(request(&[]).headers());
        assert!(
            without
                .headers()
                .get(header::SEC_WEBSOCKET_PROTOCOL)
                .is_none()
        );
    }

    #[test]
    fn refusals_keep_their_status_body_and_header() {
        let answer = Refusal::Unauthorized.answer();
        assert_eq!(answer.status(), 401);
        assert_eq!(answer.headers()["www-authenticate"], "Bearer");
        assert_eq!(answer.headers()[header::CONNECTION], "close");
        assert_eq!(Refusal::Full.answer().headers()["retry-after"], "5");
        assert_eq!(Refusal::Draining.answer().headers()["retry-after"], "1");
        assert_eq!(Refusal::TooManyRequests.status(), 429);
    }

    #[tokio::test]
    async fn the_prefix_is_replayed_first() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            a.write_all(b" world").await.unwrap();
        });
        let mut replay = Prefixed::new(Bytes::from_static(b"hello"), b);
        let mut all = Vec::new();
        replay.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello world");
    }
}
