//! How an attachment closes: once, on the peer's reply or at the deadline, and after local
//! EOF only once the peer has acknowledged everything (or the wait ran out).

use super::*;

#[tokio::test(start_paused = true)]
async fn closing_starts_once_and_ends_on_the_peer_reply() {
    let mut state = SessionState::new(1 << 20);
    let start = Instant::now();
    let mut a = AttachState::new(&mut state, settings(Role::Relay), vec![], false, start);
    a.on_local_data(local("queued"), start);
    a.on_cancel(start);
    assert!(a.is_closing() && !a.wants_input());
    // Unsent DATA is dropped (it stays in the resend buffer); the close goes out alone.
    assert_eq!(drain(&mut a), ["CLOSE 1001 shutting down"]);
    assert_eq!(a.state().unacked(), 6);
    assert_eq!(a.next_deadline(), Some(start + CLOSE_WAIT));
    // Later reasons to close change nothing: the first close stands.
    let _ = a.on_message(Message::Text("hi".into()), start);
    a.on_read_failed("broken pipe", start);
    assert!(drain(&mut a).is_empty());
    // DATA still arriving is delivered.
    assert!(matches!(
        a.on_message(data_from_peer("late"), start),
        Action::Deliver(_)
    ));
    let _ = after(&mut a, Duration::from_secs(1)).await;
    assert_eq!(
        stopped(a.on_message(close_from_peer(close::NORMAL), Instant::now())),
        "flush, stop Cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn closing_ends_at_the_deadline_without_a_reply() {
    let mut state = SessionState::new(1 << 20);
    let start = Instant::now();
    let mut a = client(&mut state, start);
    a.on_cancel(start);
    assert_eq!(drain(&mut a), ["CLOSE 1000 "]);
    assert!(matches!(
        after(&mut a, CLOSE_WAIT - Duration::from_millis(1)).await,
        Action::Continue
    ));
    assert_eq!(
        stopped(after(&mut a, Duration::from_millis(1)).await),
        "stop Cancelled"
    );

    // A connection that drops after our close ended as our close said, not as a loss.
    let mut state = SessionState::new(1 << 20);
    let mut a = client(&mut state, start);
    a.on_cancel(start);
    assert_eq!(stopped(a.on_lost("reset".into())), "stop Cancelled");
}

#[tokio::test(start_paused = true)]
async fn local_eof_waits_for_the_ack_then_closes() {
    let mut state = SessionState::new(1 << 20);
    let start = Instant::now();
    let mut a = client(&mut state, start);
    a.on_local_data(local("bye"), start);
    a.on_local_eof(start);
    assert!(!a.wants_input());
    assert_eq!(drain(&mut a), ["DATA bye"]);
    assert!(!a.is_closing());
    assert_eq!(a.next_deadline(), Some(start + EOF_ACK_WAIT));

    let _ = after(&mut a, Duration::from_secs(3)).await;
    assert!(!a.is_closing());
    let _ = a.on_message(ack_from_peer(3), Instant::now());
    assert_eq!(drain(&mut a), ["CLOSE 1000 "]);
    assert_eq!(
        a.next_deadline(),
        Some(start + Duration::from_secs(3) + CLOSE_WAIT)
    );
    assert_eq!(
        stopped(a.on_message(close_from_peer(close::NORMAL), Instant::now())),
        "flush, stop LocalEof"
    );
}

#[tokio::test(start_paused = true)]
async fn local_eof_closes_anyway_when_the_ack_never_comes() {
    let mut state = SessionState::new(1 << 20);
    let start = Instant::now();
    let mut a = client(&mut state, start);
    a.on_local_data(local("bye"), start);
    assert_eq!(drain(&mut a), ["DATA bye"]);
    a.on_local_eof(start);
    let _ = after(&mut a, EOF_ACK_WAIT - Duration::from_millis(1)).await;
    assert!(drain(&mut a).is_empty());
    let _ = after(&mut a, Duration::from_millis(1)).await;
    assert_eq!(drain(&mut a), ["CLOSE 1000 "]);
    assert_eq!(stopped(wake(&mut a).await), "stop LocalEof");
    assert_eq!(Instant::now(), start + EOF_ACK_WAIT + CLOSE_WAIT);
}

#[tokio::test(start_paused = true)]
async fn the_eof_close_follows_what_is_still_queued() {
    // Resumed after local EOF, with everything acknowledged but a resend still queued.
    let mut state = SessionState::new(1 << 20);
    let mut s = settings(Role::Relay);
    s.eof_close = close::DESTINATION_READ_FAILED;
    let mut a = AttachState::new(&mut state, s, vec![local("again")], true, Instant::now());
    assert!(!a.is_closing());
    assert_eq!(drain(&mut a), ["DATA again", "CLOSE 4010 "]);

    // Nothing queued: the close goes out at once.
    let mut state = SessionState::new(1 << 20);
    let mut a = AttachState::new(
        &mut state,
        settings(Role::Client),
        vec![],
        true,
        Instant::now(),
    );
    assert_eq!(drain(&mut a), ["CLOSE 1000 "]);
}
