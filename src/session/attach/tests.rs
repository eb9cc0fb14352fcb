//! [`AttachState`] on paused time, with no sockets: each test plays the driver by hand.

use super::*;
use crate::frame::{Frame, MAX_ARRAY_LEN};
use tokio::time::advance;

mod closing;

const K: Keepalive = Keepalive {
    interval: Duration::from_secs(10),
    timeout: Duration::from_secs(10),
};

/// A fresh client attachment of `state`, nothing to resend, local input still open.
fn client(state: &mut SessionState, now: Instant) -> AttachState<'_> {
    AttachState::new(state, settings(Role::Client), vec![], false, now)
}

fn settings(role: Role) -> Settings {
    Settings::new(role)
}

/// A message as the tests compare it: `DATA <text>`, `ACK <n>`, `PING`, `CLOSE <code> <reason>`.
fn show(msg: &Message) -> String {
    match msg {
        Message::Binary(bytes) => match Frame::decode(bytes) {
            Ok(Frame::Data(payload)) => format!("DATA {}", String::from_utf8_lossy(payload)),
            Ok(Frame::Ack(n)) => format!("ACK {n}"),
            other => format!("{other:?}"),
        },
        Message::Ping(_) => "PING".to_owned(),
        Message::Close(Some(f)) => format!("CLOSE {} {}", u16::from(f.code), f.reason),
        other => format!("{other:?}"),
    }
}

/// Sends everything queued, as the driver does when the WebSocket takes it all.
fn drain(a: &mut AttachState<'_>) -> Vec<String> {
    let mut sent = Vec::new();
    while let Some(msg) = a.next_outgoing(Instant::now()) {
        sent.push(show(&msg));
    }
    a.on_sent();
    sent
}

/// Lets `by` pass and fires whatever timers are due, as the driver's sleep does.
async fn after(a: &mut AttachState<'_>, by: Duration) -> Action {
    advance(by).await;
    a.on_timer(Instant::now())
}

/// Moves time to the state's next deadline and fires it.
async fn wake(a: &mut AttachState<'_>) -> Action {
    let at = a.next_deadline().expect("a deadline is set");
    advance(at.saturating_duration_since(Instant::now())).await;
    a.on_timer(Instant::now())
}

fn data_from_peer(text: &str) -> Message {
    Message::Binary(Frame::Data(text.as_bytes()).to_bytes())
}

fn ack_from_peer(n: u64) -> Message {
    Message::Binary(frame::ack(n))
}

fn close_from_peer(code: u16) -> Message {
    close_message(code, "")
}

fn local(text: &str) -> Bytes {
    Frame::Data(text.as_bytes()).to_bytes()
}

fn stopped(action: Action) -> String {
    match action {
        Action::Stop(end) => format!("stop {end:?}"),
        Action::FlushThenStop(end) => format!("flush, stop {end:?}"),
        Action::CloseThenStop(close, end) => format!("{}, stop {end:?}", show(&close)),
        other => panic!("expected the end, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_ack_goes_out_after_the_idle_delay_or_at_once_past_the_threshold() {
    let mut state = SessionState::new(1 << 20);
    let mut a = client(&mut state, Instant::now());
    assert_eq!(a.next_deadline(), None);

    let start = Instant::now();
    let Action::Deliver(payload) = a.on_message(data_from_peer("hello"), start) else {
        panic!("DATA is delivered")
    };
    assert_eq!(&payload[..], b"hello");
    assert_eq!(a.next_deadline(), Some(start + IDLE_ACK_DELAY));
    assert!(drain(&mut a).is_empty());

    // More DATA before the timer does not push it back.
    let _ = after(&mut a, Duration::from_millis(15)).await;
    let _ = a.on_message(data_from_peer("!"), Instant::now());
    assert_eq!(a.next_deadline(), Some(start + IDLE_ACK_DELAY));
    assert!(drain(&mut a).is_empty());
    let _ = after(&mut a, Duration::from_millis(5)).await;
    assert_eq!(drain(&mut a), ["ACK 6"]);
    assert_eq!(a.next_deadline(), None);

    // Past twice a frame's worth unacknowledged, the ACK goes out with no timer.
    let big = vec![b'x'; MAX_ARRAY_LEN];
    let big = Message::Binary(Frame::Data(&big).to_bytes());
    let _ = a.on_message(big.clone(), Instant::now());
    let _ = a.on_message(big.clone(), Instant::now());
    assert!(drain(&mut a).is_empty());
    let _ = a.on_message(big, Instant::now());
    let total = 6 + 3 * MAX_ARRAY_LEN;
    assert_eq!(drain(&mut a), [format!("ACK {total}")]);
    // That ACK covers everything: the idle timer the first of them started is off.
    assert_eq!(a.next_deadline(), None);
}

#[tokio::test(start_paused = true)]
async fn a_resumed_session_owes_the_peer_an_ack() {
    let mut state = SessionState::new(1 << 20);
    assert_eq!(state.on_data(7), None);
    let start = Instant::now();
    let mut a = AttachState::new(&mut state, settings(Role::Relay), vec![], false, start);
    assert_eq!(a.next_deadline(), Some(start + IDLE_ACK_DELAY));
    let _ = wake(&mut a).await;
    assert_eq!(drain(&mut a), ["ACK 7"]);
}

#[tokio::test(start_paused = true)]
async fn a_quiet_relay_gets_a_ping_after_the_interval() {
    let mut state = SessionState::new(1 << 20);
    let mut s = settings(Role::Client);
    s.keepalive = Some(K);
    let start = Instant::now();
    let mut a = AttachState::new(&mut state, s, vec![], false, start);
    // The checks run once a second, the first at once.
    assert_eq!(a.next_deadline(), Some(start));
    let mut pings = Vec::new();
    while Instant::now() < start + Duration::from_secs(35) {
        assert!(matches!(wake(&mut a).await, Action::Continue));
        if drain(&mut a) == ["PING"] {
            pings.push((Instant::now() - start).as_secs());
        }
        // Hearing anything from the relay restarts the quiet period.
        if Instant::now() == start + Duration::from_secs(15) {
            let _ = a.on_message(data_from_peer("x"), Instant::now());
            let _ = drain(&mut a);
        }
    }
    // Ignored pings on an idle path are repeated every interval, never fatal.
    assert_eq!(pings, [10, 25, 35]);
}

/// Plays a client with data waiting for the relay's ACK for up to `secs` seconds; `answers`
/// says whether the relay answers pings. Returns the seconds at which pings went out and how
/// the attachment ended, if it did.
async fn waiting_on_the_relay(secs: u64, answers: bool) -> (Vec<u64>, Option<(u64, String)>) {
    let mut state = SessionState::new(1 << 20);
    let mut s = settings(Role::Client);
    s.keepalive = Some(K);
    let start = Instant::now();
    let mut a = AttachState::new(&mut state, s, vec![], false, start);
    a.on_local_data(local("ls\n"), start);
    assert_eq!(drain(&mut a), ["DATA ls\n"]);
    let mut pings = Vec::new();
    while Instant::now() < start + Duration::from_secs(secs) {
        let action = wake(&mut a).await;
        let at = (Instant::now() - start).as_secs();
        if !matches!(action, Action::Continue) {
            return (pings, Some((at, stopped(action))));
        }
        if drain(&mut a) == ["PING"] {
            pings.push(at);
            if answers {
                let _ = a.on_message(Message::Pong(Bytes::new()), Instant::now());
            }
        }
    }
    (pings, None)
}

#[tokio::test(start_paused = true)]
async fn a_relay_that_answers_pings_is_kept_while_its_ack_is_late() {
    let (pings, end) = waiting_on_the_relay(120, true).await;
    assert!(end.is_none(), "{end:?}");
    // A ping every half timeout while the data waits.
    assert_eq!(pings.first(), Some(&5));
    assert!(pings.len() >= 20, "{pings:?}");
}

#[tokio::test(start_paused = true)]
async fn a_relay_that_never_answers_is_given_up_on() {
    let (pings, end) = waiting_on_the_relay(120, false).await;
    assert_eq!(pings, [5]);
    assert_eq!(
        end,
        Some((
            11,
            r#"stop TransportLost("no answer from the relay for 11s")"#.to_owned()
        ))
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_session_is_closed_for_policy() {
    let mut state = SessionState::new(1 << 20);
    let mut s = settings(Role::Relay);
    s.idle_timeout = Some(Duration::from_secs(5));
    let start = Instant::now();
    let mut a = AttachState::new(&mut state, s, vec![], false, start);
    let _ = after(&mut a, Duration::from_secs(3)).await;
    let _ = a.on_message(data_from_peer("k"), Instant::now());
    let mut closed_at = None;
    while closed_at.is_none() {
        let _ = wake(&mut a).await;
        if drain(&mut a).contains(&"CLOSE 1008 idle timeout".to_owned()) {
            closed_at = Some(Instant::now() - start);
        }
    }
    // Five seconds after the last DATA, not after the start.
    assert_eq!(closed_at, Some(Duration::from_secs(8)));
    assert_eq!(stopped(wake(&mut a).await), "stop IdleTimeout");
}

#[tokio::test(start_paused = true)]
async fn each_role_closes_on_a_broken_peer_with_its_own_code() {
    let now = Instant::now();
    let cases = [
        (
            Role::Relay,
            Message::Text("x".into()),
            "CLOSE 4007 invalid websocket opcode",
        ),
        (Role::Client, Message::Text("x".into()), "CLOSE 1003 "),
        (Role::Relay, ack_from_peer(9), "CLOSE 4006 invalid ack"),
        (Role::Client, ack_from_peer(9), "CLOSE 1002 "),
        (
            Role::Relay,
            Message::Binary(Bytes::from_static(b"\0")),
            "CLOSE 4013 invalid data",
        ),
    ];
    for (role, msg, want) in cases {
        let mut state = SessionState::new(1 << 20);
        let mut a = AttachState::new(&mut state, settings(role), vec![], false, now);
        assert!(matches!(a.on_message(msg, now), Action::Continue));
        assert_eq!(drain(&mut a), [want], "{role:?}");
        assert!(a.is_closing());
    }
}

#[tokio::test(start_paused = true)]
async fn local_failures_detaches_and_pings_from_the_peer() {
    let now = Instant::now();
    let mut state = SessionState::new(1 << 20);
    let mut a = client(&mut state, now);
    a.on_read_failed("stdin closed badly", now);
    assert_eq!(drain(&mut a), ["CLOSE 1000 normal closure"]);

    let mut state = SessionState::new(1 << 20);
    let mut a = AttachState::new(&mut state, settings(Role::Relay), vec![], false, now);
    a.on_local_data(local("dropped"), now);
    a.on_write_failed("connection reset", now);
    assert_eq!(drain(&mut a), ["CLOSE 4009 destination write failed"]);
    assert_eq!(
        stopped(a.on_lost("gone".into())),
        r#"stop LocalFailed { error: "writing local output: connection reset", code: 4009 }"#
    );

    let mut state = SessionState::new(1 << 20);
    let mut a = AttachState::new(&mut state, settings(Role::Relay), vec![], false, now);
    assert_eq!(
        stopped(a.on_detach(close::REAUTHENTICATION_REQUIRED)),
        "CLOSE 4004 reauthentication required, stop Detached { code: 4004 }"
    );

    // The WebSocket answers a ping by itself; the state only asks for a flush.
    let _ = a.on_message(Message::Ping(Bytes::new()), now);
    assert!(a.wants_send() && !a.has_outgoing());
    a.on_sent();
    assert!(!a.wants_send());
}

#[tokio::test(start_paused = true)]
async fn local_input_pauses_while_the_websocket_is_behind() {
    let now = Instant::now();
    let mut state = SessionState::new(1 << 20);
    let mut a = client(&mut state, now);
    for _ in 0..OUTBOX_LIMIT {
        assert!(a.wants_input());
        a.on_local_data(local("x"), now);
    }
    assert!(!a.wants_input());
    assert!(a.next_outgoing(now).is_some());
    assert!(a.wants_input());
}

#[tokio::test(start_paused = true)]
async fn the_flow_counts_data_as_it_is_handed_over_and_every_ack() {
    let mut state = SessionState::new(1 << 20);
    let flow = |unacked, acks| Flow { unacked, acks };
    {
        let mut a = AttachState::new(
            &mut state,
            settings(Role::Relay),
            vec![],
            false,
            Instant::now(),
        );
        assert_eq!(a.flow(), flow(0, 0));
        a.on_local_data(local("hello"), Instant::now());
        a.on_local_data(local("world"), Instant::now());
        // Queued is not yet handed to the WebSocket.
        assert_eq!(a.flow(), flow(0, 0));
        assert!(a.next_outgoing(Instant::now()).is_some());
        assert_eq!(a.flow(), flow(5, 0));
        assert_eq!(drain(&mut a), ["DATA world"]);
        assert_eq!(a.flow(), flow(10, 0));
        // An ACK repeating the position still counts.
        let _ = a.on_message(ack_from_peer(4), Instant::now());
        let _ = a.on_message(ack_from_peer(4), Instant::now());
        assert_eq!(a.flow(), flow(6, 2));
        // Our own ACKs are not DATA.
        let _ = a.on_message(data_from_peer("x"), Instant::now());
        let _ = after(&mut a, IDLE_ACK_DELAY).await;
        assert_eq!(drain(&mut a), ["ACK 1"]);
        assert_eq!(a.flow(), flow(6, 2));
    }
    // A resumed attachment counts what it sends again as it goes out.
    let resend = state.resume(4).expect("position 4 is buffered");
    let mut a = AttachState::new(
        &mut state,
        settings(Role::Relay),
        resend,
        false,
        Instant::now(),
    );
    assert_eq!(a.flow(), flow(0, 2));
    assert_eq!(drain(&mut a), ["DATA o", "DATA world"]);
    assert_eq!(a.flow(), flow(6, 2));
}
