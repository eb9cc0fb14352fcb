//! Reading a client's HTTP upgrade request before answering it.
//!
//! Authentication may need the network (a JWKS refresh, a token-info lookup), so the request
//! head is read and checked here, asynchronously, and only then handed to tungstenite to finish
//! the upgrade. [`Prefixed`] replays the bytes already read. A request refused before that is
//! answered with a short plain-text [`Refusal`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};

use crate::wire::{SUBPROTOCOL, websocket_config};

/// Largest request head accepted (headers included); larger gets 431.
pub const MAX_HEAD: usize = 16 * 1024;

/// What the relay needs from an upgrade request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// The method.
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The query string, if any.
    pub query: String,
    /// The `Authorization` header, if present.
    pub authorization: Option<String>,
    /// The `X-Forwarded-For` header, if present.
    pub forwarded_for: Option<String>,
    /// The `User-Agent` header, if present (only to recognise clients with known quirks).
    pub user_agent: Option<String>,
}

/// Why a request head could not be read.
#[derive(Debug)]
pub enum HeadError {
    /// The connection failed or closed early.
    Io(io::Error),
    /// More than [`MAX_HEAD`] bytes without the end of the head.
    TooLarge,
    /// Not HTTP/1.1.
    Malformed,
}

/// Reads and parses the request head from `stream`; returns it and every byte read (to
/// replay for the WebSocket handshake).
///
/// # Errors
/// [`HeadError`].
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Head, BytesMut), HeadError> {
    let mut buf = BytesMut::with_capacity(2048);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let target = req.path.unwrap_or("");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .map(str::to_owned)
                };
                // Every X-Forwarded-For header, in order: a proxy that appends its own header
                // after the client's must not have the client's first one believed instead.
                let forwarded: Vec<&str> = req
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
                    .filter_map(|h| std::str::from_utf8(h.value).ok())
                    .collect();
                let head = Head {
                    method: req.method.unwrap_or("").to_owned(),
                    path: path.to_owned(),
                    query: query.to_owned(),
                    authorization: header("authorization"),
                    forwarded_for: (!forwarded.is_empty()).then(|| forwarded.join(", ")),
                    user_agent: header("user-agent"),
                };
                return Ok((head, buf));
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Malformed),
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        buf.reserve(2048);
        let n = stream.read_buf(&mut buf).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// The HTTP errors an upgrade request may be answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 400: not HTTP/1.1, or a query that names no target.
    BadRequest,
    /// 401: no bearer token, or one not accepted.
    Unauthorized,
    /// 404: neither `/v4/connect` nor `/v4/reconnect`.
    NotFound,
    /// 429: the principal holds its limit of tunnels.
    TooManyRequests,
    /// 431: a head over [`MAX_HEAD`].
    TooLarge,
    /// 503: the relay is draining; try another node at once.
    Draining,
    /// 503: the memory budget is reached; try again shortly.
    Full,
}

impl Refusal {
    /// The status code.
    pub fn status(self) -> u16 {
        self.parts().0
    }

    /// Status, reason phrase (also the body) and an extra header.
    fn parts(self) -> (u16, &'static str, Option<&'static str>) {
        match self {
            Refusal::BadRequest => (400, "Bad Request", None),
            Refusal::Unauthorized => (401, "Unauthorized", Some("WWW-Authenticate: Bearer")),
            Refusal::NotFound => (404, "Not Found", None),
            Refusal::TooManyRequests => (429, "Too Many Requests", None),
            Refusal::TooLarge => (431, "Request Header Fields Too Large", None),
            Refusal::Draining => (503, "Service Unavailable", Some("Retry-After: 1")),
            Refusal::Full => (503, "Service Unavailable", Some("Retry-After: 5")),
        }
    }
}

/// Writes a short HTTP error response and closes.
pub async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, refusal: Refusal) {
    let (status, reason, extra_header) = refusal.parts();
    let extra = extra_header.map(|h| format!("{h}\r\n")).unwrap_or_default();
    let body = format!("{reason}\n");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Finishes the WebSocket handshake on `stream` (which replays the head already read),
/// echoing the IAP subprotocol when the client offers it.
///
/// # Errors
/// When the request is not a valid WebSocket upgrade, or the connection fails.
pub async fn accept_websocket<S: AsyncRead + AsyncWrite + Unpin>(
    stream: Prefixed<S>,
) -> Result<WebSocketStream<Prefixed<S>>, tungstenite::Error> {
    // tungstenite fixes the callback's error type; this callback never fails.
    #[allow(clippy::result_large_err)]
    let echo_subprotocol = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let offered = req
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case(SUBPROTOCOL));
        if offered {
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        Ok(resp)
    };
    tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        echo_subprotocol,
        Some(websocket_config()),
    )
    .await
}

/// A stream that first yields `prefix`, then reads from `inner`; writes go to `inner`.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Replays `prefix` before `inner`.
    pub fn new(prefix: BytesMut, inner: S) -> Self {
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
    use super::*;

    #[tokio::test]
    async fn head_is_parsed_and_replayed() {
        let request = b"GET /v4/connect?project=p&port=22 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc\r\nX-Forwarded-For: 10.1.2.3\r\nX-Forwarded-For: 10.9.9.9\r\n\r\nrest";
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            a.write_all(request).await.unwrap();
        });
        let (head, buf) = read_head(&mut b).await.unwrap();
        assert_eq!(head.path, "/v4/connect");
        assert_eq!(head.query, "project=p&port=22");
        assert_eq!(head.authorization.as_deref(), Some("Bearer abc"));
        assert_eq!(head.forwarded_for.as_deref(), Some("10.1.2.3, 10.9.9.9"));
        let mut replay = Prefixed::new(buf, b);
        let mut all = Vec::new();
        replay.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, request);
    }

    #[tokio::test]
    async fn oversized_and_garbage_heads_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let _ = a.write_all(b"GET / HTTP/1.1\r\n").await;
            let line = format!("X-Big: {}\r\n", "a".repeat(1000));
            for _ in 0..20 {
                if a.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        assert!(matches!(read_head(&mut b).await, Err(HeadError::TooLarge)));
        let (mut a, mut b) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let _ = a.write_all(b"\x16\x03\x01 not http\r\n\r\n").await;
        });
        assert!(matches!(read_head(&mut b).await, Err(HeadError::Malformed)));
    }
}
