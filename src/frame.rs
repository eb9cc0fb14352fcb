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
mod tests {
    use super::*;

    /// Golden vectors from protocol.md §4.2.
    const GOLDEN: &[(&[u8], Frame<'static>)] = &[
        (
            &[0x00, 0x04, 0x00, 0x00, 0x00, 0x02, 0x68, 0x69],
            Frame::Data(b"hi"),
        ),
        (
            &[0x00, 0x07, 0, 0, 0, 0, 0, 0, 0x80, 0x00],
            Frame::Ack(32768),
        ),
        (
            &[0x00, 0x01, 0x00, 0x00, 0x00, 0x03, 0x61, 0x62, 0x63],
            Frame::ConnectSuccessSid(b"abc"),
        ),
        (
            &[0x00, 0x02, 0, 0, 0, 0, 0, 0, 0, 0x64],
            Frame::ReconnectSuccessAck(100),
        ),
        (
            &[0x00, 0x0A, 0, 0, 0x0F, 0xC1, 0, 0, 0, 2, b'n', b'o'],
            Frame::LongClose {
                code: 4033,
                reason: b"no",
            },
        ),
    ];

    #[test]
    fn golden_bytes_decode_and_encode() {
        for (bytes, frame) in GOLDEN {
            assert_eq!(
                Frame::decode(bytes).as_ref(),
                Ok(frame),
                "decode {bytes:02x?}"
            );
            assert_eq!(&frame.to_bytes()[..], *bytes, "encode {frame:?}");
        }
    }

    #[test]
    fn unknown_tags_decode_to_unknown() {
        assert_eq!(Frame::decode(&[0x00, 0x03]), Ok(Frame::Unknown(3)));
        assert_eq!(
            Frame::decode(&[0xff, 0xff, 1, 2, 3]),
            Ok(Frame::Unknown(0xffff))
        );
    }

    #[test]
    fn largest_data_round_trips() {
        let payload = vec![7u8; MAX_ARRAY_LEN];
        let bytes = Frame::Data(&payload).to_bytes();
        assert_eq!(bytes.len(), DATA_HEADER_LEN + MAX_ARRAY_LEN);
        assert_eq!(Frame::decode(&bytes), Ok(Frame::Data(&payload)));
    }

    #[test]
    fn data_header_in_place_matches_encoder() {
        let mut header = [0u8; DATA_HEADER_LEN];
        write_data_header(&mut header, 2);
        assert_eq!(header, [0x00, 0x04, 0x00, 0x00, 0x00, 0x02]);
    }

    #[test]
    fn malformed_messages_are_typed_errors() {
        let too_long = {
            let mut v = vec![0x00, 0x04];
            v.extend_from_slice(&(MAX_ARRAY_LEN as u32 + 1).to_be_bytes());
            v.extend(std::iter::repeat_n(0u8, MAX_ARRAY_LEN + 1));
            v
        };
        let cases: &[(&[u8], FrameError)] = &[
            (&[], FrameError::MissingTag),
            (&[0x00], FrameError::MissingTag),
            (&[0x00, 0x04], FrameError::Truncated { tag: 4 }),
            (&[0x00, 0x04, 0, 0, 0], FrameError::Truncated { tag: 4 }),
            (
                &[0x00, 0x04, 0, 0, 0, 3, 1, 2],
                FrameError::Truncated { tag: 4 },
            ),
            (&[0x00, 0x04, 0, 0, 0, 0], FrameError::Empty { tag: 4 }),
            (&[0x00, 0x01, 0, 0, 0, 0], FrameError::Empty { tag: 1 }),
            (
                &[0x00, 0x07, 0, 0, 0, 0, 0, 0, 0],
                FrameError::Truncated { tag: 7 },
            ),
            (&[0x00, 0x02, 1], FrameError::Truncated { tag: 2 }),
            (
                &[0x00, 0x07, 0, 0, 0, 0, 0, 0, 0, 1, 9],
                FrameError::TrailingBytes { tag: 7, extra: 1 },
            ),
            (
                &[0x00, 0x04, 0, 0, 0, 1, 5, 6, 7],
                FrameError::TrailingBytes { tag: 4, extra: 2 },
            ),
            (&[0x00, 0x0A, 0, 0, 0x0F], FrameError::Truncated { tag: 10 }),
            (
                &[0x00, 0x04, 0xff, 0xff, 0xff, 0xff],
                FrameError::TooLong {
                    tag: 4,
                    len: u32::MAX as usize,
                },
            ),
            (
                &too_long,
                FrameError::TooLong {
                    tag: 4,
                    len: MAX_ARRAY_LEN + 1,
                },
            ),
        ];
        for (bytes, err) in cases {
            assert_eq!(
                Frame::decode(bytes).as_ref(),
                Err(err),
                "input {:02x?}",
                &bytes[..bytes.len().min(12)]
            );
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn tolerant_decoding_counts_trailing_bytes_and_allows_empty_data() {
        type Decoded = Result<(Frame<'static>, usize), FrameError>;
        let cases: &[(&[u8], Decoded)] = &[
            (
                &[0x00, 0x04, 0, 0, 0, 1, 5, 6, 7],
                Ok((Frame::Data(&[5]), 2)),
            ),
            (&[0x00, 0x04, 0, 0, 0, 0], Ok((Frame::Data(&[]), 0))),
            (&[0x00, 0x04, 0, 0, 0, 0, 9], Ok((Frame::Data(&[]), 1))),
            (
                &[0x00, 0x07, 0, 0, 0, 0, 0, 0, 0, 1, 9],
                Ok((Frame::Ack(1), 1)),
            ),
            (
                &[0x00, 0x01, 0, 0, 0, 1, b's', 0],
                Ok((Frame::ConnectSuccessSid(b"s"), 1)),
            ),
            (&[0x00, 0x01, 0, 0, 0, 0], Err(FrameError::Empty { tag: 1 })),
            (
                &[0x00, 0x04, 0, 0, 0, 3, 1],
                Err(FrameError::Truncated { tag: 4 }),
            ),
            (&[0x12, 0x34, 1, 2], Ok((Frame::Unknown(0x1234), 0))),
        ];
        for (bytes, want) in cases {
            assert_eq!(&Frame::decode_tolerant(bytes), want, "input {bytes:02x?}");
        }
    }

    #[test]
    fn debug_never_shows_payload() {
        let shown = format!("{:?}", Frame::Data(b"secret-bytes"));
        assert!(!shown.contains("secret"), "{shown}");
    }
}
