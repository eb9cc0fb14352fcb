//! Relay messages of the IAP TCP-forwarding subprotocol (`relay.tunnel.cloudproxy.app`).
//!
//! Every relay message travels as exactly one binary WebSocket message, so there is no
//! partial-frame state here: one `&[u8]` in, one [`Frame`] out. Integers are big-endian and
//! arrays carry a `u32` length prefix (protocol.md §4). No I/O happens in this module.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// Tag of CONNECT_SUCCESS_SID (relay → client, first message after `/v4/connect`).
pub const TAG_CONNECT_SUCCESS_SID: u16 = 0x0001;
/// Tag of RECONNECT_SUCCESS_ACK (relay → client, first message after `/v4/reconnect`).
pub const TAG_RECONNECT_SUCCESS_ACK: u16 = 0x0002;
/// Tag of DATA (both directions).
pub const TAG_DATA: u16 = 0x0004;
/// Tag of ACK (both directions).
pub const TAG_ACK: u16 = 0x0007;
/// Tag of LONG_CLOSE (relay → client; only IAP Desktop knows it, and ignores it).
pub const TAG_LONG_CLOSE: u16 = 0x000A;

/// Largest array (session id or DATA payload) either side may send: 16 KiB, as in every
/// reference client.
pub const MAX_ARRAY_LEN: usize = 16 * 1024;
/// Bytes in front of a DATA payload: tag and length.
pub const DATA_HEADER_LEN: usize = 6;
/// Largest relay message we accept; anything bigger is hostile or broken.
pub const MAX_MESSAGE_LEN: usize = 10 + MAX_ARRAY_LEN;

/// One decoded relay message. Arrays borrow from the input so DATA is never copied here.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// The session id the relay assigned; needed to resume.
    ConnectSuccessSid(&'a [u8]),
    /// How many DATA bytes the relay holds from us when a session is resumed.
    ReconnectSuccessAck(u64),
    /// Tunnel payload, 1 to [`MAX_ARRAY_LEN`] bytes.
    Data(&'a [u8]),
    /// Total DATA bytes received by the sender since the session began.
    Ack(u64),
    /// A close code and reason sent ahead of the WebSocket close.
    LongClose {
        /// The close code.
        code: u32,
        /// The reason text, as sent (not trusted to be UTF-8).
        reason: &'a [u8],
    },
    /// A tag this implementation does not know; peers must ignore these.
    Unknown(u16),
}

/// Why a relay message could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer than the two bytes of a tag.
    MissingTag,
    /// The message ended before the body of `tag` was complete.
    Truncated {
        /// The tag whose body was cut short.
        tag: u16,
    },
    /// An array longer than [`MAX_ARRAY_LEN`].
    TooLong {
        /// The tag carrying the array.
        tag: u16,
        /// The announced length.
        len: usize,
    },
    /// A DATA message with no payload, or an empty session id.
    Empty {
        /// The tag with the empty array.
        tag: u16,
    },
    /// Bytes left over after a complete body.
    TrailingBytes {
        /// The tag followed by extra bytes.
        tag: u16,
        /// How many extra bytes.
        extra: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::MissingTag => write!(f, "relay message shorter than its 2-byte tag"),
            FrameError::Truncated { tag } => {
                write!(f, "relay message with tag {tag:#06x} is truncated")
            }
            FrameError::TooLong { tag, len } => write!(
                f,
                "relay message with tag {tag:#06x} announces {len} bytes (limit {MAX_ARRAY_LEN})"
            ),
            FrameError::Empty { tag } => {
                write!(f, "relay message with tag {tag:#06x} has an empty array")
            }
            FrameError::TrailingBytes { tag, extra } => {
                write!(
                    f,
                    "relay message with tag {tag:#06x} has {extra} trailing bytes"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

impl<'a> Frame<'a> {
    /// Decodes one relay message.
    ///
    /// # Errors
    /// A [`FrameError`] for a short, oversized, empty or over-long message. Unknown tags are
    /// not an error: they decode to [`Frame::Unknown`] so that callers can ignore them.
    pub fn decode(msg: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let (frame, extra) = Self::decode_parts(msg, false)?;
        if extra > 0 {
            let tag = msg.first_chunk::<2>().map_or(0, |t| u16::from_be_bytes(*t));
            return Err(FrameError::TrailingBytes { tag, extra });
        }
        Ok(frame)
    }

    /// Decodes one relay message as gcloud does on the client side: bytes after a complete
    /// body are not an error but are counted in the second value, and a DATA message with no
    /// payload decodes to an empty [`Frame::Data`]. Callers discard both with a debug line.
    /// The relay keeps using the strict [`decode`](Self::decode) toward clients.
    ///
    /// # Errors
    /// A [`FrameError`] for a short or oversized message, or an empty session id.
    pub fn decode_tolerant(msg: &'a [u8]) -> Result<(Frame<'a>, usize), FrameError> {
        Self::decode_parts(msg, true)
    }

    fn decode_parts(msg: &'a [u8], tolerant: bool) -> Result<(Frame<'a>, usize), FrameError> {
        let (tag, body) = match msg {
            [hi, lo, body @ ..] => (u16::from_be_bytes([*hi, *lo]), body),
            _ => return Err(FrameError::MissingTag),
        };
        let (frame, rest) = match tag {
            TAG_CONNECT_SUCCESS_SID => {
                let (sid, rest) = array(tag, body)?;
                (Frame::ConnectSuccessSid(sid), rest)
            }
            TAG_RECONNECT_SUCCESS_ACK => {
                let (n, rest) = u64_be(tag, body)?;
                (Frame::ReconnectSuccessAck(n), rest)
            }
            TAG_DATA if tolerant => {
                let (payload, rest) = array_allow_empty(tag, body)?;
                (Frame::Data(payload), rest)
            }
            TAG_DATA => {
                let (payload, rest) = array(tag, body)?;
                (Frame::Data(payload), rest)
            }
            TAG_ACK => {
                let (n, rest) = u64_be(tag, body)?;
                (Frame::Ack(n), rest)
            }
            TAG_LONG_CLOSE => {
                let (code, rest) = u32_be(tag, body)?;
                let (reason, rest) = array_allow_empty(tag, rest)?;
                (Frame::LongClose { code, reason }, rest)
            }
            other => return Ok((Frame::Unknown(other), 0)),
        };
        Ok((frame, rest.len()))
    }

    /// Appends the encoded message to `out`.
    ///
    /// # Panics
    /// Never for frames built from decoded input or from [`MAX_ARRAY_LEN`]-bounded buffers;
    /// an array longer than `u32::MAX` cannot be encoded and is a caller bug.
    pub fn encode(&self, out: &mut BytesMut) {
        match *self {
            Frame::ConnectSuccessSid(sid) => put_array(out, TAG_CONNECT_SUCCESS_SID, sid),
            Frame::ReconnectSuccessAck(n) => {
                out.put_u16(TAG_RECONNECT_SUCCESS_ACK);
                out.put_u64(n);
            }
            Frame::Data(payload) => put_array(out, TAG_DATA, payload),
            Frame::Ack(n) => {
                out.put_u16(TAG_ACK);
                out.put_u64(n);
            }
            Frame::LongClose { code, reason } => {
                out.put_u16(TAG_LONG_CLOSE);
                out.put_u32(code);
                out.put_u32(array_len(reason));
                out.put_slice(reason);
            }
            Frame::Unknown(tag) => out.put_u16(tag),
        }
    }

    /// The message as a fresh buffer, ready to hand to a WebSocket.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(16);
        self.encode(&mut out);
        out.freeze()
    }
}

/// Writes the 6-byte DATA header for a payload of `len` bytes into `header`.
///
/// The data path reads local input straight into a buffer that starts with this much room, then
/// fills the header in place, so a DATA message is built without copying its payload.
pub fn write_data_header(header: &mut [u8; DATA_HEADER_LEN], len: usize) {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    header[..2].copy_from_slice(&TAG_DATA.to_be_bytes());
    header[2..].copy_from_slice(&len);
}

/// Payload of an ACK message for `n` bytes, as a fresh buffer.
pub fn ack(n: u64) -> Bytes {
    Frame::Ack(n).to_bytes()
}

impl fmt::Debug for Frame<'_> {
    // Payloads are tunnel data (an SSH stream): never dump them into logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::ConnectSuccessSid(sid) => write!(f, "ConnectSuccessSid({} bytes)", sid.len()),
            Frame::ReconnectSuccessAck(n) => write!(f, "ReconnectSuccessAck({n})"),
            Frame::Data(p) => write!(f, "Data({} bytes)", p.len()),
            Frame::Ack(n) => write!(f, "Ack({n})"),
            Frame::LongClose { code, reason } => {
                write!(f, "LongClose({code}, {} bytes)", reason.len())
            }
            Frame::Unknown(tag) => write!(f, "Unknown({tag:#06x})"),
        }
    }
}

#[allow(clippy::expect_used)] // an invariant, stated in the message
fn array_len(bytes: &[u8]) -> u32 {
    u32::try_from(bytes.len()).expect("relay arrays are at most 16 KiB, far below u32::MAX")
}

fn put_array(out: &mut BytesMut, tag: u16, bytes: &[u8]) {
    out.reserve(6 + bytes.len());
    out.put_u16(tag);
    out.put_u32(array_len(bytes));
    out.put_slice(bytes);
}

fn u32_be(tag: u16, body: &[u8]) -> Result<(u32, &[u8]), FrameError> {
    match body.split_first_chunk::<4>() {
        Some((n, rest)) => Ok((u32::from_be_bytes(*n), rest)),
        None => Err(FrameError::Truncated { tag }),
    }
}

fn u64_be(tag: u16, body: &[u8]) -> Result<(u64, &[u8]), FrameError> {
    match body.split_first_chunk::<8>() {
        Some((n, rest)) => Ok((u64::from_be_bytes(*n), rest)),
        None => Err(FrameError::Truncated { tag }),
    }
}

fn array_allow_empty(tag: u16, body: &[u8]) -> Result<(&[u8], &[u8]), FrameError> {
    let (len, rest) = u32_be(tag, body)?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_ARRAY_LEN {
        return Err(FrameError::TooLong { tag, len });
    }
    if rest.len() < len {
        return Err(FrameError::Truncated { tag });
    }
    Ok(rest.split_at(len))
}

fn array(tag: u16, body: &[u8]) -> Result<(&[u8], &[u8]), FrameError> {
    let (bytes, rest) = array_allow_empty(tag, body)?;
    if bytes.is_empty() {
        return Err(FrameError::Empty { tag });
    }
    Ok((bytes, rest))
}

#[cfg(test)]
mod tests;
