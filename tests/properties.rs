//! Property tests of the protocol core: the frame codec, the split of a byte stream into DATA
//! messages (pure, and through the real pump over a WebSocket), and the session accounting under
//! arbitrary ACKs, losses and resumes, honest or hostile.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use iap_ssh::frame::{self, Frame, MAX_ARRAY_LEN};
use iap_ssh::session::local::{LocalInput, LocalOutput};
use iap_ssh::session::pump::{self, Attach, PumpEnd, Role, Session};
use iap_ssh::session::state::{AckError, SessionState, data_message};
use proptest::prelude::*;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role as WsRole};
use tokio_util::sync::CancellationToken;

const KNOWN_TAGS: [u16; 5] = [
    frame::TAG_CONNECT_SUCCESS_SID,
    frame::TAG_RECONNECT_SUCCESS_ACK,
    frame::TAG_DATA,
    frame::TAG_ACK,
    frame::TAG_LONG_CLOSE,
];

/// A frame as owned parts, so proptest can generate it.
#[derive(Clone, Debug)]
enum Owned {
    Sid(Vec<u8>),
    Resumed(u64),
    Data(Vec<u8>),
    Ack(u64),
    LongClose(u32, Vec<u8>),
    Unknown(u16),
}

impl Owned {
    fn frame(&self) -> Frame<'_> {
        match self {
            Owned::Sid(s) => Frame::ConnectSuccessSid(s),
            Owned::Resumed(n) => Frame::ReconnectSuccessAck(*n),
            Owned::Data(p) => Frame::Data(p),
            Owned::Ack(n) => Frame::Ack(*n),
            Owned::LongClose(code, r) => Frame::LongClose {
                code: *code,
                reason: r,
            },
            Owned::Unknown(t) => Frame::Unknown(*t),
        }
    }
}

fn array(min: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), min..64),
        prop::collection::vec(any::<u8>(), MAX_ARRAY_LEN - 8..=MAX_ARRAY_LEN),
    ]
}

fn owned_frame() -> impl Strategy<Value = Owned> {
    prop_oneof![
        array(1).prop_map(Owned::Sid),
        any::<u64>().prop_map(Owned::Resumed),
        array(1).prop_map(Owned::Data),
        any::<u64>().prop_map(Owned::Ack),
        (any::<u32>(), array(0)).prop_map(|(c, r)| Owned::LongClose(c, r)),
        any::<u16>()
            .prop_filter("unknown tags only", |t| !KNOWN_TAGS.contains(t))
            .prop_map(Owned::Unknown),
    ]
}

/// Cuts `stream` at the given points into DATA-sized chunks (1..=16384 bytes each).
fn split(stream: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut rest = stream;
    let mut cuts = cuts.iter().cycle();
    while !rest.is_empty() {
        let want = cuts.next().copied().unwrap_or(MAX_ARRAY_LEN);
        let n = want.clamp(1, MAX_ARRAY_LEN).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        chunks.push(chunk.to_vec());
        rest = tail;
    }
    chunks
}

fn cut_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![
            1usize..16,
            1usize..4096,
            Just(MAX_ARRAY_LEN),
            16_000usize..20_000
        ],
        1..20,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every valid frame encodes and decodes back to itself, and re-encoding a decoded message
    /// gives the same bytes (one encoding per message).
    #[test]
    fn codec_round_trips(f in owned_frame()) {
        let frame = f.frame();
        let mut bytes = BytesMut::new();
        frame.encode(&mut bytes);
        let decoded = Frame::decode(&bytes);
        if let Owned::Unknown(_) = f {
            prop_assert_eq!(decoded, Ok(frame));
        } else {
            prop_assert_eq!(decoded, Ok(frame));
            let mut again = BytesMut::new();
            frame.encode(&mut again);
            prop_assert_eq!(&again[..], &bytes[..]);
        }
    }

    /// Truncating or extending a valid known message never decodes to something else silently:
    /// it is an error (or, for an unknown tag, still just "unknown").
    #[test]
    fn damaged_messages_are_errors(f in owned_frame(), cut in 1usize..32, extra in prop::collection::vec(any::<u8>(), 1..8)) {
        prop_assume!(!matches!(f, Owned::Unknown(_)));
        let bytes = f.frame().to_bytes();
        let short = &bytes[..bytes.len().saturating_sub(cut)];
        prop_assert!(Frame::decode(short).is_err(), "{:02x?}", &short[..short.len().min(12)]);
        let mut long = bytes.to_vec();
        long.extend_from_slice(&extra);
        prop_assert!(Frame::decode(&long).is_err());
    }

    /// Any split of a byte stream into DATA messages reassembles to the same stream, and the
    /// receiver's ACKs are always acceptable to the sender.
    #[test]
    fn any_split_reassembles(stream in prop::collection::vec(any::<u8>(), 0..200_000), cuts in cut_sizes()) {
        let mut sender = SessionState::new(usize::MAX);
        let mut receiver = SessionState::default();
        let mut out = Vec::with_capacity(stream.len());
        for chunk in split(&stream, &cuts) {
            let message = data_message(&chunk);
            sender.record_sent(message.clone());
            let Ok(Frame::Data(p)) = Frame::decode(&message) else {
                return Err(TestCaseError::fail("a DATA message did not decode"));
            };
            out.extend_from_slice(p);
            if let Some(ack) = receiver.on_data(p.len()) {
                prop_assert_eq!(sender.on_ack(ack), Ok(()));
            }
        }
        if let Some(ack) = receiver.idle_ack() {
            prop_assert_eq!(sender.on_ack(ack), Ok(()));
        }
        prop_assert_eq!(&out, &stream);
        prop_assert_eq!(sender.unacked(), 0);
        prop_assert_eq!(receiver.received(), stream.len() as u64);
    }
}

/// What happens between a sender and a receiver, including a hostile receiver's lies.
#[derive(Clone, Debug)]
enum Event {
    Send(usize),
    Deliver,
    Ack,
    /// The connection drops: messages in flight are lost, the receiver resumes.
    Lose,
    /// An ACK moved by this much from the honest value (may go backwards or beyond).
    LyingAck(i64),
    /// A resume at the honest position moved by this much.
    LyingResume(i64),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => (1usize..=MAX_ARRAY_LEN).prop_map(Event::Send),
        6 => Just(Event::Deliver),
        3 => Just(Event::Ack),
        2 => Just(Event::Lose),
        1 => (-40_000i64..40_000).prop_map(Event::LyingAck),
        1 => (-40_000i64..40_000).prop_map(Event::LyingResume),
    ]
}

fn stream_byte(pos: usize) -> u8 {
    (pos.wrapping_mul(2_654_435_761) >> 13) as u8
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Under any sequence of sends, deliveries, ACKs, losses and resumes, with a peer that may
    /// lie about ACKs and resume positions, the receiver gets exactly the stream, or the sender
    /// refuses with an [`AckError`] that names the numbers involved. Never a corrupt stream.
    #[test]
    fn session_delivers_exactly_or_fails_clearly(events in prop::collection::vec(event(), 1..400), limit in 1usize..200_000) {
        let mut sender = SessionState::new(limit);
        let mut in_flight: VecDeque<Bytes> = VecDeque::new();
        let mut delivered: Vec<u8> = Vec::new();
        let mut produced = 0usize;
        let mut failure: Option<AckError> = None;
        for e in events {
            let honest = delivered.len() as u64;
            let result = match e {
                Event::Send(n) => {
                    if sender.can_send() {
                        let chunk: Vec<u8> = (produced..produced + n).map(stream_byte).collect();
                        produced += n;
                        let m = data_message(&chunk);
                        sender.record_sent(m.clone());
                        in_flight.push_back(m);
                    }
                    Ok(())
                }
                Event::Deliver => {
                    if let Some(m) = in_flight.pop_front() {
                        match Frame::decode(&m) {
                            Ok(Frame::Data(p)) => delivered.extend_from_slice(p),
                            other => prop_assert!(false, "in flight: {other:?}"),
                        }
                    }
                    Ok(())
                }
                Event::Ack => sender.on_ack(honest),
                Event::LyingAck(d) => sender.on_ack(honest.saturating_add_signed(d)),
                Event::Lose => {
                    in_flight.clear();
                    sender.resume(honest).map(|resend| in_flight.extend(resend))
                }
                Event::LyingResume(d) => {
                    in_flight.clear();
                    let position = honest.saturating_add_signed(d);
                    let resumed = sender.resume(position).map(|resend| in_flight.extend(resend));
                    // A resume that skips bytes the receiver lacks would corrupt the stream
                    // silently; the receiver detects it by position, so only an honest or
                    // refused resume may go on.
                    if resumed.is_ok() && position != honest {
                        break;
                    }
                    resumed
                }
            };
            if let Err(err) = result {
                failure = Some(err);
                break;
            }
            prop_assert!(sender.unacked() as usize <= limit + MAX_ARRAY_LEN);
            prop_assert!(delivered.iter().enumerate().all(|(i, &b)| b == stream_byte(i)), "corrupt stream");
        }
        match failure {
            Some(err) => {
                let text = err.to_string();
                prop_assert!(text.chars().any(|c| c.is_ascii_digit()), "unclear error: {}", text);
                prop_assert!(delivered.iter().enumerate().all(|(i, &b)| b == stream_byte(i)));
            }
            None => {
                // Finish honestly: one more loss and resume, then drain.
                in_flight.clear();
                let resend = sender.resume(delivered.len() as u64);
                if let Ok(resend) = resend {
                    for m in resend {
                        if let Ok(Frame::Data(p)) = Frame::decode(&m) {
                            delivered.extend_from_slice(p);
                        }
                    }
                    prop_assert_eq!(delivered.len(), produced);
                    prop_assert!(delivered.iter().enumerate().all(|(i, &b)| b == stream_byte(i)));
                } else {
                    // Only possible after a lying resume moved the sender ahead of the receiver.
                    prop_assert!(resend.is_err());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The same split property through the real pump, over a real WebSocket on an in-memory pipe.
// ---------------------------------------------------------------------------------------------

/// Local input that never produces anything (the relay's backend stays silent).
struct Silent;

impl LocalInput for Silent {
    async fn read_message(&mut self) -> io::Result<Option<Bytes>> {
        std::future::pending().await
    }
}

/// Local output that collects everything written.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<u8>>>);

impl LocalOutput for Collect {
    async fn write_some(&mut self, buf: &mut Bytes) -> io::Result<()> {
        // Take at most 1000 bytes per call, so partial writes are exercised too.
        let n = buf.len().min(1000);
        self.0
            .lock()
            .expect("collector lock")
            .extend_from_slice(&buf.split_to(n));
        tokio::task::yield_now().await;
        Ok(())
    }

    async fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends `chunks` as DATA messages to a relay-side pump and returns what its local output got
/// and the ACKs it sent.
async fn through_pump(chunks: Vec<Vec<u8>>) -> (Vec<u8>, Vec<u64>, PumpEnd) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = WebSocketStream::from_raw_socket(a, WsRole::Server, None).await;
    let client = WebSocketStream::from_raw_socket(b, WsRole::Client, None).await;
    let collect = Collect::default();
    let got = collect.0.clone();
    let cancel = CancellationToken::new();
    let pump_task = tokio::spawn(async move {
        let mut session = Session::new(Silent, collect, 1 << 20);
        let end = pump::run(&mut session, server, Attach::new(Role::Relay, &cancel)).await;
        let _ = session.drain_output().await;
        end
    });
    let mut acks = Vec::new();
    let (mut tx, mut rx) = client.split();
    let reader = tokio::spawn(async move {
        let mut acks = Vec::new();
        while let Some(Ok(m)) = rx.next().await {
            if let Message::Binary(b) = m
                && let Ok(Frame::Ack(n)) = Frame::decode(&b)
            {
                acks.push(n);
            }
        }
        acks
    });
    for c in &chunks {
        tx.send(Message::Binary(Frame::Data(c).to_bytes()))
            .await
            .expect("sending DATA to the pump");
    }
    // Give the idle ACK a chance before closing.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let _ = tx
        .send(Message::Close(Some(CloseFrame {
            code: 1000.into(),
            reason: "".into(),
        })))
        .await;
    let end = tokio::time::timeout(Duration::from_secs(20), pump_task)
        .await
        .expect("pump ends after the close")
        .expect("pump task");
    if let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(5), reader).await {
        acks = a;
    }
    let out = got.lock().expect("collector lock").clone();
    (out, acks, end)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any split of a stream into DATA messages comes out of the real pump intact, and its ACKs
    /// only grow and never exceed what was sent.
    #[test]
    fn any_split_survives_the_pump(stream in prop::collection::vec(any::<u8>(), 1..150_000), cuts in cut_sizes()) {
        // Paused time: the pump and the peer talk over an in-memory duplex, so whenever both
        // wait, only a timer (the idle ACK, the pause before the close) can move them on, and
        // tokio jumps straight to it instead of sleeping.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
        let chunks = split(&stream, &cuts);
        let (out, acks, end) = rt.block_on(through_pump(chunks));
        prop_assert!(matches!(end, PumpEnd::PeerClosed { code: 1000, .. }), "{:?}", end);
        prop_assert_eq!(out.len(), stream.len());
        prop_assert!(out == stream, "stream corrupted");
        prop_assert!(acks.windows(2).all(|w| w[0] <= w[1]), "{:?}", acks);
        prop_assert!(acks.iter().all(|&a| a <= stream.len() as u64));
    }
}
