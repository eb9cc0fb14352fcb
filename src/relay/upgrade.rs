//! Reading a client's HTTP upgrade request before answering it.
//!
//! Authentication may need the network (a JWKS refresh, a token-info lookup), so the request
//! head is read and checked here, asynchronously, and only then handed to tungstenite to finish
//! the upgrade. [`Prefixed`] replays the bytes already read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

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

/// Writes a short HTTP error response and closes.
pub async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    reason: &str,
    extra_header: Option<&str>,
) {
    let extra = extra_header.map(|h| format!("{h}\r\n")).unwrap_or_default();
    let body = format!("{reason}\n");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
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
