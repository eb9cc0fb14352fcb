//! Property tests of the session's ack and resend bookkeeping between two peers.

use super::*;
use crate::frame::Frame;
use proptest::prelude::*;

/// What happens between two peers: the sender's moves, the network's, the receiver's.
#[derive(Clone, Debug)]
enum Event {
    Send(usize),
    Deliver,
    Ack,
    Drop,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (1usize..3000).prop_map(Event::Send),
        4 => Just(Event::Deliver),
        2 => Just(Event::Ack),
        1 => Just(Event::Drop),
    ]
}

proptest! {
    /// Any interleaving of sends, deliveries, acks and connection drops (each followed by
    /// a resume) delivers exactly the original stream: nothing lost, nothing twice.
    #[test]
    fn resume_delivers_the_exact_stream(events in prop::collection::vec(event(), 1..300), limit in 1usize..20_000) {
        let original: Vec<u8> = (0..600_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        let mut sender = SessionState::new(limit);
        let mut in_flight: std::collections::VecDeque<Bytes> = Default::default();
        let mut delivered: Vec<u8> = Vec::new();
        let mut offset = 0usize;
        let resume = |sender: &mut SessionState, in_flight: &mut std::collections::VecDeque<Bytes>, delivered: &Vec<u8>| {
            in_flight.clear();
            let resend = sender.resume(delivered.len() as u64).expect("the receiver's count is always resumable");
            in_flight.extend(resend);
        };
        for e in events {
            match e {
                Event::Send(n) if sender.can_send() && offset + n <= original.len() => {
                    let message = data_message(&original[offset..offset + n]);
                    offset += n;
                    sender.record_sent(message.clone());
                    in_flight.push_back(message);
                }
                Event::Send(_) => {}
                Event::Deliver => {
                    if let Some(m) = in_flight.pop_front() {
                        match Frame::decode(&m) {
                            Ok(Frame::Data(p)) => delivered.extend_from_slice(p),
                            other => prop_assert!(false, "not DATA: {other:?}"),
                        }
                    }
                }
                Event::Ack => prop_assert!(sender.on_ack(delivered.len() as u64).is_ok()),
                Event::Drop => resume(&mut sender, &mut in_flight, &delivered),
            }
            prop_assert!(sender.unacked() as usize <= limit + 3000, "buffer bound exceeded");
            prop_assert_eq!(&delivered[..], &original[..delivered.len()]);
        }
        // A last drop and resume, then drain: everything sent arrives exactly once.
        resume(&mut sender, &mut in_flight, &delivered);
        while let Some(m) = in_flight.pop_front() {
            if let Ok(Frame::Data(p)) = Frame::decode(&m) {
                delivered.extend_from_slice(p);
            }
        }
        prop_assert_eq!(delivered.len() as u64, sender.sent());
        prop_assert_eq!(&delivered[..], &original[..offset]);
    }

    /// ACKs that go backwards or beyond what was sent are always refused.
    #[test]
    fn bad_acks_are_refused(sent in 1usize..5000, good in 0u64..5000, extra in 1u64..1000) {
        let mut s = SessionState::default();
        s.record_sent(data_message(&vec![1u8; sent]));
        let good = good.min(sent as u64);
        prop_assert!(s.on_ack(good).is_ok());
        prop_assert!(s.on_ack(sent as u64 + extra).is_err());
        if good > 0 {
            prop_assert!(s.on_ack(good - 1).is_err());
        }
    }
}
