//! The session's byte accounting (`session::state::SessionState`) driven by arbitrary event
//! sequences: sends, ACKs (valid or not), received DATA, idle ACKs and resumes at any position.
//!
//! A model keeps the stream the sender produced, so every resume can be checked byte for byte:
//! the messages to send again are exactly the stream from the resume position on. Refused ACKs
//! and resumes must be refused for the right reason and leave the state as it was.
#![no_main]

use bytes::Bytes;
use iap_ssh::frame::{Frame, MAX_ARRAY_LEN};
use iap_ssh::session::state::{ACK_THRESHOLD, AckError, SessionState, data_message};
use libfuzzer_sys::fuzz_target;

/// Reads the fuzz input as a sequence of numbers.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte().unwrap_or(0), self.byte().unwrap_or(0)])
    }
}

/// The byte at stream position `pos` (the model's stream needs no memory).
fn stream_byte(pos: u64) -> u8 {
    (pos.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

fn payload(m: &Bytes) -> &[u8] {
    match Frame::decode(m) {
        Ok(Frame::Data(p)) => p,
        other => panic!("resend holds a non-DATA message: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let max_unacked = usize::from(input.u16()) * 16 + 1;
    let mut s = SessionState::new(max_unacked);
    // Model: bytes sent, highest ACK accepted, bytes received, last ACK we sent.
    let (mut sent, mut acked, mut received, mut ack_sent) = (0u64, 0u64, 0u64, 0u64);
    let mut steps = 0;
    while let Some(op) = input.byte() {
        steps += 1;
        if steps > 2000 {
            break;
        }
        match op % 6 {
            0 => {
                let len = u64::from(input.u16()) % MAX_ARRAY_LEN as u64 + 1;
                let bytes: Vec<u8> = (sent..sent + len).map(stream_byte).collect();
                s.record_sent(data_message(&bytes));
                sent += len;
            }
            1 | 2 => {
                // ACK: relative to what is acked so far, sometimes backwards or beyond.
                let delta = u64::from(input.u16());
                let ack = match op % 2 {
                    1 => acked.saturating_add(delta % (sent - acked + 2)),
                    _ => acked.saturating_sub(delta % 4),
                };
                let result = s.on_ack(ack);
                if ack < acked {
                    assert!(
                        matches!(result, Err(AckError::Backwards { .. })),
                        "{result:?}"
                    );
                } else if ack > sent {
                    assert!(
                        matches!(result, Err(AckError::BeyondSent { .. })),
                        "{result:?}"
                    );
                } else {
                    assert_eq!(result, Ok(()));
                    acked = ack;
                }
                if let Err(e) = result {
                    assert!(!e.to_string().is_empty());
                }
            }
            3 => {
                let len = usize::from(input.u16()) % MAX_ARRAY_LEN + 1;
                received += len as u64;
                match s.on_data(len) {
                    Some(n) => {
                        assert!(received - ack_sent > ACK_THRESHOLD);
                        assert_eq!(n, received);
                        ack_sent = n;
                    }
                    None => assert!(received - ack_sent <= ACK_THRESHOLD),
                }
            }
            4 => {
                assert_eq!(s.ack_pending(), received > ack_sent);
                match s.idle_ack() {
                    Some(n) => {
                        assert_eq!(n, received);
                        ack_sent = n;
                    }
                    None => assert_eq!(received, ack_sent),
                }
            }
            _ => {
                // Resume anywhere near the valid window, inside or not.
                let delta = u64::from(input.u16()) % (sent - acked + 4);
                let position = (acked + delta).saturating_sub(2);
                match s.resume(position) {
                    Ok(resend) => {
                        assert!((acked..=sent).contains(&position));
                        let mut pos = position;
                        for m in &resend {
                            let p = payload(m);
                            assert!((1..=MAX_ARRAY_LEN).contains(&p.len()));
                            for &b in p {
                                assert_eq!(b, stream_byte(pos), "resent byte at {pos}");
                                pos += 1;
                            }
                        }
                        assert_eq!(pos, sent, "resend ends where sending stopped");
                        acked = position;
                        ack_sent = 0;
                    }
                    Err(AckError::Rewind { .. }) => assert!(position < acked),
                    Err(AckError::BeyondSent { .. }) => assert!(position > sent),
                    Err(e) => panic!("resume({position}) gave {e:?}"),
                }
            }
        }
        assert_eq!(
            (s.sent(), s.peer_acked(), s.received()),
            (sent, acked, received)
        );
        assert_eq!(s.unacked(), sent - acked);
        assert_eq!(s.can_send(), sent - acked < max_unacked as u64);
    }
});
