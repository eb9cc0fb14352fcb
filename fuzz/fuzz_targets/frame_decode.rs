//! Relay message decoding: any bytes either decode or give a typed error, never a panic, and
//! a decoded known message re-encodes to exactly the bytes it came from.
#![no_main]

use bytes::BytesMut;
use iap_ssh::frame::{self, Frame, MAX_ARRAY_LEN};
use libfuzzer_sys::fuzz_target;

const KNOWN: [u16; 5] = [
    frame::TAG_CONNECT_SUCCESS_SID,
    frame::TAG_RECONNECT_SUCCESS_ACK,
    frame::TAG_DATA,
    frame::TAG_ACK,
    frame::TAG_LONG_CLOSE,
];

fuzz_target!(|data: &[u8]| {
    match Frame::decode(data) {
        Ok(Frame::Unknown(tag)) => assert!(!KNOWN.contains(&tag), "known tag {tag} as Unknown"),
        Ok(decoded) => {
            let mut out = BytesMut::new();
            decoded.encode(&mut out);
            assert_eq!(&out[..], data, "re-encoding {decoded:?}");
            match decoded {
                Frame::Data(p) | Frame::ConnectSuccessSid(p) => {
                    assert!((1..=MAX_ARRAY_LEN).contains(&p.len()));
                }
                Frame::LongClose { reason, .. } => assert!(reason.len() <= MAX_ARRAY_LEN),
                _ => {}
            }
            // Debug never dumps a payload, so it stays short.
            assert!(format!("{decoded:?}").len() < 64);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
