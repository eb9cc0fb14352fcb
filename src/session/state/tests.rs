//! Unit tests of the session's ack and resend bookkeeping.

use super::*;
use crate::frame::Frame;

fn payloads(messages: &[Bytes]) -> Vec<u8> {
    messages
        .iter()
        .flat_map(|m| match Frame::decode(m) {
            Ok(Frame::Data(p)) => p.to_vec(),
            other => panic!("not DATA: {other:?}"),
        })
        .collect()
}

fn send(state: &mut SessionState, payload: &[u8]) {
    state.record_sent(data_message(payload));
}

#[test]
fn acks_release_the_resend_buffer() {
    let mut s = SessionState::new(10);
    send(&mut s, b"abcd");
    send(&mut s, b"efgh");
    assert_eq!((s.sent(), s.unacked()), (8, 8));
    assert!(s.on_ack(4).is_ok());
    assert_eq!(s.unacked(), 4);
    assert_eq!(payloads(&s.resume(4).unwrap()), b"efgh");
}

#[test]
fn ack_rules_table() {
    // (acks applied in order, expected result of the last one)
    let cases: &[(&[u64], Result<(), AckError>)] = &[
        (&[0], Ok(())),
        (&[3, 3], Ok(())),
        (&[8], Ok(())),
        (&[9], Err(AckError::BeyondSent { ack: 9, sent: 8 })),
        (
            &[5, 4],
            Err(AckError::Backwards {
                ack: 4,
                previous: 5,
            }),
        ),
    ];
    for (acks, expected) in cases {
        let mut s = SessionState::default();
        send(&mut s, b"12345678");
        let mut last = Ok(());
        for a in *acks {
            last = s.on_ack(*a);
        }
        assert_eq!(&last, expected, "acks {acks:?}");
    }
}

#[test]
fn buffer_bound_stops_sending_until_acked() {
    let mut s = SessionState::new(8);
    send(&mut s, b"1234");
    assert!(s.can_send());
    send(&mut s, b"5678");
    assert!(!s.can_send());
    s.on_ack(2).unwrap();
    assert!(s.can_send());
}

#[test]
fn ack_due_after_threshold_and_idle() {
    let mut s = SessionState::default();
    assert_eq!(s.on_data(16384), None);
    assert_eq!(
        s.on_data(16384),
        None,
        "exactly 32 KiB is not more than the threshold"
    );
    assert_eq!(s.on_data(1), Some(32769));
    assert!(!s.ack_pending());
    assert_eq!(s.idle_ack(), None);
    assert_eq!(s.on_data(10), None);
    assert!(s.ack_pending());
    assert_eq!(s.idle_ack(), Some(32779));
    assert_eq!(s.idle_ack(), None);
}

#[test]
fn resume_resends_exactly_what_the_peer_lacks() {
    // (position the peer reports, expected resend)
    let cases: &[(u64, &[u8])] = &[
        (0, b"abcdefghij"),
        (3, b"defghij"),
        (4, b"efghij"),
        (7, b"hij"),
        (10, b""),
    ];
    for (position, expected) in cases {
        let mut s = SessionState::default();
        send(&mut s, b"abcd");
        send(&mut s, b"efg");
        send(&mut s, b"hij");
        let resend = s.resume(*position).unwrap();
        assert_eq!(payloads(&resend), *expected, "position {position}");
        assert_eq!(s.unacked(), 10 - position);
    }
}

#[test]
fn resume_after_partial_ack_and_bad_positions() {
    let mut s = SessionState::default();
    send(&mut s, b"abcd");
    send(&mut s, b"efgh");
    s.on_ack(2).unwrap();
    assert_eq!(
        s.resume(1),
        Err(AckError::Rewind {
            position: 1,
            oldest: 2
        })
    );
    assert_eq!(s.resume(9), Err(AckError::BeyondSent { ack: 9, sent: 8 }));
    assert_eq!(payloads(&s.resume(2).unwrap()), b"cdefgh");
    assert_eq!(payloads(&s.resume(5).unwrap()), b"fgh");
}

#[test]
fn resume_forces_a_fresh_ack() {
    let mut s = SessionState::default();
    s.on_data(100);
    assert_eq!(s.idle_ack(), Some(100));
    s.resume(0).unwrap();
    assert_eq!(s.idle_ack(), Some(100));
}
