//! Unit tests of the frame codec on byte slices.

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
