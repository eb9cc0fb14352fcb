//! The async loop that joins a local byte stream and a WebSocket, driven by [`SessionState`].
//!
//! One task, one `select!`: WebSocket reads, local reads, WebSocket writes, local writes and
//! the idle-ACK timer are separate arms, so a side that blocks never stops the others (a
//! single loop that awaited its sends inline would deadlock when both peers send at once).
//! Every arm is cancel safe; buffers that must survive a cancelled arm live in [`Session`].

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use super::local::{LocalInput, LocalOutput};
use super::state::{AckError, SessionState};
use crate::close;
use crate::frame::{self, Frame};

/// Send an idle ACK this long after the last DATA if nothing else acknowledged it.
pub const IDLE_ACK_DELAY: Duration = Duration::from_millis(20);
/// After local end of input, how long to wait for the peer to acknowledge what we sent before
/// closing anyway (gcloud waits 10 s too).
pub const EOF_ACK_WAIT: Duration = Duration::from_secs(10);
/// After sending a close, how long to wait for the peer's close reply.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Received payload bytes queued for the local side before we stop reading the WebSocket.
const OUTPUT_QUEUE_LIMIT: usize = 256 * 1024;
/// Messages queued for the WebSocket before we stop reading local input.
const OUTBOX_LIMIT: usize = 16;

/// Which end of the protocol this loop plays; they differ in what a peer may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `iap-ssh` (or gcloud): the peer is a relay.
    Client,
    /// `iap-relay`: the peer is a client; stricter, and its violations get relay close codes.
    Relay,
}

/// A session's data that outlives one WebSocket: counters, resend buffer, local ends.
#[derive(Debug)]
pub struct Session<I, O> {
    /// Byte accounting and the resend buffer.
    pub state: SessionState,
    /// Where our outgoing bytes come from.
    pub input: I,
    /// Where received bytes go.
    pub output: O,
    out: OutQueue,
    input_done: bool,
}

/// Received payloads waiting for the local side, with their total size.
#[derive(Debug, Default)]
struct OutQueue {
    queue: VecDeque<Bytes>,
    bytes: usize,
}

/// Why [`run`] returned.
#[derive(Debug)]
pub enum PumpEnd {
    /// Local input ended; everything was delivered and we closed the WebSocket.
    LocalEof,
    /// The peer closed the WebSocket with this code and reason.
    PeerClosed {
        /// The close code (1005 when the frame had none).
        code: u16,
        /// The reason text (possibly from a LONG_CLOSE message).
        reason: String,
    },
    /// The WebSocket broke without a close frame.
    TransportLost(String),
    /// Reading local input or writing local output failed; we closed with `code`.
    LocalFailed {
        /// Which side failed and why.
        error: String,
        /// The close code we sent.
        code: u16,
    },
    /// The peer broke the protocol; we closed with `code`.
    Violation {
        /// What was wrong.
        detail: String,
        /// The close code we sent.
        code: u16,
    },
    /// The stop signal fired; we closed with 1001.
    Cancelled,
    /// [`Detach`] was requested: we sent its close code and let go of the WebSocket; the
    /// session can be resumed on another one.
    Detached {
        /// The close code sent.
        code: u16,
    },
    /// No DATA either way for the idle timeout; we closed with 1008.
    IdleTimeout,
}

impl PumpEnd {
    /// Whether the session may continue on a new WebSocket.
    pub fn resumable(&self) -> bool {
        match self {
            PumpEnd::TransportLost(_) | PumpEnd::Detached { .. } => true,
            PumpEnd::PeerClosed { code, .. } => {
                close::disposition(*code) == close::Disposition::Resumable
            }
            _ => false,
        }
    }
}

/// A request, from outside the pump, to let go of the current WebSocket with a close code
/// while keeping the session (a relay taking over for a reconnect, or asking for a fresh
/// token with 4004).
#[derive(Debug, Default)]
pub struct Detach {
    token: CancellationToken,
    code: AtomicU16,
}

impl Detach {
    /// Asks the pump to close with `code` and return [`PumpEnd::Detached`]. The first request
    /// wins.
    pub fn request(&self, code: u16) {
        let _ = self
            .code
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
        self.token.cancel();
    }
}

/// Dead-path detection for a client: a relay that stops answering is noticed in bounded
/// time even when TCP never reports an error (a black hole). A relay that answers pings is
/// never torn down while it keeps answering, however long it takes to acknowledge our data
/// (see `Liveness`).
#[derive(Clone, Copy, Debug)]
pub struct Keepalive {
    /// Send a WebSocket ping after this long without hearing from the relay (after half of
    /// `timeout` while sent data waits for its acknowledgement).
    pub interval: Duration,
    /// Declare the path dead when a ping stays unanswered this long, once the relay has
    /// answered one on this connection; before that, when the relay is silent this long while
    /// sent data waits for its acknowledgement.
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
        }
    }
}

/// How one WebSocket attachment of a session is driven.
#[derive(Debug)]
pub struct Attach<'a> {
    /// Which end of the protocol we are.
    pub role: Role,
    /// Close code sent after local input ends (1000 for both sides).
    pub eof_close: u16,
    /// DATA messages to send before anything else (the resend after a resume).
    pub resend: Vec<Bytes>,
    /// Shutdown: close with 1001 and return [`PumpEnd::Cancelled`].
    pub shutdown: &'a CancellationToken,
    /// Optional detach request.
    pub detach: Option<&'a Detach>,
    /// Optional dead-path detection (clients only: gcloud fails on pings from a relay).
    pub keepalive: Option<Keepalive>,
    /// Close with 1008 after this long without DATA either way.
    pub idle_timeout: Option<Duration>,
}

impl<'a> Attach<'a> {
    /// A plain attachment: no resend, no detach, no keepalive.
    pub fn new(role: Role, shutdown: &'a CancellationToken) -> Self {
        Attach {
            role,
            eof_close: close::NORMAL,
            resend: Vec::new(),
            shutdown,
            detach: None,
            keepalive: None,
            idle_timeout: None,
        }
    }
}

impl<I, O: LocalOutput> Session<I, O> {
    /// A new session over the given local ends, buffering at most `max_unacked` bytes.
    pub fn new(input: I, output: O, max_unacked: usize) -> Self {
        Session {
            state: SessionState::new(max_unacked),
            input,
            output,
            out: OutQueue::default(),
            input_done: false,
        }
    }

    /// Whether local input has ended (the backend, for a relay, closed its side).
    pub fn input_ended(&self) -> bool {
        self.input_done
    }

    /// Writes out whatever received bytes are still queued for the local side.
    ///
    /// # Errors
    /// The local write error.
    pub async fn drain_output(&mut self) -> std::io::Result<()> {
        while !self.out.queue.is_empty() {
            write_front(&mut self.output, &mut self.out).await?;
        }
        Ok(())
    }

    fn queue_output(&mut self, payload: Bytes) {
        self.out.bytes += payload.len();
        self.out.queue.push_back(payload);
    }
}

fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    }))
}

/// Moves bytes between `session`'s local ends and `ws` until one side ends.
pub async fn run<I, O, W, E>(session: &mut Session<I, O>, ws: W, attach: Attach<'_>) -> PumpEnd
where
    I: LocalInput,
    O: LocalOutput,
    W: Sink<Message, Error = E> + Stream<Item = Result<Message, E>> + Unpin,
    E: std::fmt::Display,
{
    let Attach {
        role,
        eof_close,
        resend,
        shutdown: cancel,
        detach,
        keepalive,
        idle_timeout,
    } = attach;
    let mut last_data = Instant::now();
    let never = CancellationToken::new();
    let detach_token = detach.map_or(&never, |d| &d.token);
    let (mut sink, mut stream) = ws.split();
    let mut outbox: VecDeque<Message> = resend.into_iter().map(Message::Binary).collect();
    let mut need_flush = false;
    // A resumed session owes the peer an ACK for what arrived before the drop.
    let mut ack_at: Option<Instant> = session
        .state
        .ack_pending()
        .then(|| Instant::now() + IDLE_ACK_DELAY);
    let mut alive = Liveness::new(session.state.unacked() > 0, Instant::now());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut eof_deadline: Option<Instant> =
        session.input_done.then(|| Instant::now() + EOF_ACK_WAIT);
    let mut close_sent: Option<(Instant, PumpEnd)> = None;
    let mut long_close: Option<(u32, String)> = None;

    // A session resumed after local EOF may already have nothing left to send.
    loop {
        if close_sent.is_none()
            && session.input_done
            && outbox.is_empty()
            && (session.state.unacked() == 0 || eof_deadline.is_some_and(|d| d <= Instant::now()))
        {
            outbox.push_back(close_message(eof_close, ""));
            close_sent = Some((Instant::now() + CLOSE_WAIT, PumpEnd::LocalEof));
        }

        let read_ws = session.out.bytes < OUTPUT_QUEUE_LIMIT;
        let read_local = !session.input_done
            && close_sent.is_none()
            && session.state.can_send()
            && outbox.len() < OUTBOX_LIMIT;
        let write_ws = !outbox.is_empty() || need_flush;
        let write_local = !session.out.queue.is_empty();
        let close_deadline = close_sent.as_ref().map(|(d, _)| *d);

        tokio::select! {
            () = cancel.cancelled(), if close_sent.is_none() => {
                outbox.clear();
                // A client stopping (ssh's SIGHUP at the end of a session) ends the tunnel in
                // order; a relay shutting down is "going away".
                let code = match role { Role::Client => close::NORMAL, Role::Relay => 1001 };
                outbox.push_back(close_message(code, if role == Role::Client { "" } else { "shutting down" }));
                close_sent = Some((Instant::now() + CLOSE_WAIT, PumpEnd::Cancelled));
            }
            () = detach_token.cancelled(), if close_sent.is_none() => {
                // Unsent DATA is still in the resend buffer; the old connection may be dead,
                // so the close gets a short, bounded try and no wait for a reply.
                let code = detach.map_or(close::SID_IN_USE, |d| d.code.load(Ordering::SeqCst));
                let _ = tokio::time::timeout(DETACH_SEND_WAIT, sink.send(close_message(code, close::reason_text(code)))).await;
                return PumpEnd::Detached { code };
            }
            _ = tick.tick(), if (keepalive.is_some() || idle_timeout.is_some()) && close_sent.is_none() => {
                if idle_timeout.is_some_and(|limit| last_data.elapsed() >= limit) {
                    outbox.clear();
                    outbox.push_back(close_message(POLICY_VIOLATION, "idle timeout"));
                    close_sent = Some((Instant::now() + CLOSE_WAIT, PumpEnd::IdleTimeout));
                    continue;
                }
                if let Some(k) = keepalive {
                    match alive.check(k, session.state.unacked() > 0, Instant::now()) {
                        Check::Fine => {}
                        Check::Ping => outbox.push_back(Message::Ping(Bytes::new())),
                        Check::Dead(waited) => {
                            return PumpEnd::TransportLost(format!("no answer from the relay for {}s", waited.as_secs()));
                        }
                    }
                }
            }
            msg = stream.next(), if read_ws => {
                alive.heard(Instant::now());
                let msg = match msg {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => return finish_closing(close_sent, PumpEnd::TransportLost(transport_error(e))),
                    None => return finish_closing(close_sent, PumpEnd::TransportLost("connection closed without a close frame".into())),
                };
                match msg {
                    Message::Binary(bytes) => {
                        match on_binary(session, &bytes, role, &mut long_close) {
                            Inbound::Nothing => {}
                            Inbound::Data { ack_now } => {
                                last_data = Instant::now();
                                if let Some(n) = ack_now {
                                    outbox.push_back(Message::Binary(frame::ack(n)));
                                    ack_at = None;
                                } else if ack_at.is_none() {
                                    ack_at = Some(Instant::now() + IDLE_ACK_DELAY);
                                }
                            }
                            Inbound::Violation { detail, code } => {
                                if close_sent.is_none() {
                                    outbox.push_back(close_message(code, close::reason_text(code)));
                                    close_sent = Some((Instant::now() + CLOSE_WAIT, PumpEnd::Violation { detail, code }));
                                }
                            }
                        }
                    }
                    Message::Close(frame) => {
                        let (code, reason) = match frame {
                            Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
                            None => (None, String::new()),
                        };
                        let (code, reason) = merge_long_close(code, reason, long_close.take());
                        // tungstenite has queued the close reply; push it out, briefly.
                        let _ = tokio::time::timeout(CLOSE_WAIT, sink.flush()).await;
                        return match close_sent {
                            Some((_, end)) => end,
                            None => PumpEnd::PeerClosed { code, reason },
                        };
                    }
                    Message::Ping(_) => need_flush = true, // the automatic pong must go out
                    Message::Pong(_) => alive.pong(Instant::now()),
                    Message::Text(_) => {
                        let code = match role { Role::Relay => close::INVALID_WEBSOCKET_OPCODE, Role::Client => 1003 };
                        if close_sent.is_none() {
                            outbox.push_back(close_message(code, close::reason_text(code)));
                            close_sent = Some((Instant::now() + CLOSE_WAIT, PumpEnd::Violation { detail: "peer sent a text message".into(), code }));
                        }
                    }
                    Message::Frame(_) => {}
                }
            }
            read = session.input.read_message(), if read_local => match read {
                Ok(Some(message)) => {
                    last_data = Instant::now();
                    if session.state.unacked() == 0 {
                        alive.waiting(Instant::now());
                    }
                    session.state.record_sent(message.clone());
                    outbox.push_back(Message::Binary(message));
                }
                Ok(None) => {
                    session.input_done = true;
                    eof_deadline = Some(Instant::now() + EOF_ACK_WAIT);
                }
                Err(e) => {
                    let code = match role { Role::Relay => close::DESTINATION_READ_FAILED, Role::Client => 1000 };
                    outbox.push_back(close_message(code, close::reason_text(code)));
                    close_sent = Some((Instant::now() + CLOSE_WAIT, PumpEnd::LocalFailed { error: format!("reading local input: {e}"), code }));
                }
            },
            sent = send_outbox(&mut sink, &mut outbox), if write_ws => {
                need_flush = false;
                if let Err(e) = sent {
                    return finish_closing(close_sent, PumpEnd::TransportLost(e));
                }
            }
            written = write_front(&mut session.output, &mut session.out), if write_local => {
                if let Err(e) = written {
                    let code = match role { Role::Relay => close::DESTINATION_WRITE_FAILED, Role::Client => 1000 };
                    session.out = OutQueue::default();
                    if close_sent.is_none() {
                        outbox.clear();
                        outbox.push_back(close_message(code, close::reason_text(code)));
                        close_sent = Some((Instant::now() + CLOSE_WAIT, PumpEnd::LocalFailed { error: format!("writing local output: {e}"), code }));
                    }
                }
            }
            () = sleep_until(ack_at.unwrap_or_else(Instant::now)), if ack_at.is_some() => {
                ack_at = None;
                if close_sent.is_none() && let Some(n) = session.state.idle_ack() {
                    outbox.push_back(Message::Binary(frame::ack(n)));
                }
            }
            () = sleep_until(eof_deadline.unwrap_or_else(Instant::now)), if eof_deadline.is_some() && close_sent.is_none() => {
                // Loop head closes now that the deadline has passed.
                eof_deadline = Some(Instant::now());
            }
            () = sleep_until(close_deadline.unwrap_or_else(Instant::now)), if close_deadline.is_some() => {
                return close_sent.map(|(_, end)| end).unwrap_or(PumpEnd::LocalEof);
            }
        }
    }
}

/// Close code for ends the relay's limits impose (idle, session length).
pub const POLICY_VIOLATION: u16 = 1008;

/// How long a detaching pump tries to send its close on a connection that may be dead.
const DETACH_SEND_WAIT: Duration = Duration::from_millis(200);

/// What the keepalive check found.
enum Check {
    Fine,
    Ping,
    Dead(Duration),
}

/// When we last heard from the peer, and whether we are waiting on it.
///
/// Nothing documents how soon Google's relay acknowledges DATA; an interactive session's small
/// writes might wait longer than [`Keepalive::timeout`] for their ACK. So silence while data
/// is outstanding only prompts a ping (after half the timeout), and a path whose relay answers
/// pings is never declared dead while it keeps answering: a pong counts as life. Only a relay
/// that has not answered a ping on this connection is judged by the silence alone, which is
/// what tells a black hole from a slow relay.
#[derive(Debug)]
struct Liveness {
    heard: Instant,
    /// Since when we have been waiting for an answer to data (sent data not yet acknowledged).
    waiting_since: Option<Instant>,
    /// The first ping sent since we last heard from the peer.
    unanswered_since: Option<Instant>,
    /// The last ping sent, for pacing.
    last_ping: Option<Instant>,
    answers_pings: bool,
}

impl Liveness {
    fn new(waiting: bool, now: Instant) -> Self {
        Liveness {
            heard: now,
            waiting_since: waiting.then_some(now),
            unanswered_since: None,
            last_ping: None,
            answers_pings: false,
        }
    }

    /// Anything arrived from the peer.
    fn heard(&mut self, now: Instant) {
        self.heard = now;
        self.unanswered_since = None;
    }

    fn pong(&mut self, now: Instant) {
        self.answers_pings = true;
        self.heard(now);
    }

    fn waiting(&mut self, now: Instant) {
        self.waiting_since = Some(now);
    }

    fn ping(&mut self, now: Instant) -> Check {
        self.last_ping = Some(now);
        self.unanswered_since.get_or_insert(now);
        Check::Ping
    }

    fn check(&mut self, k: Keepalive, data_outstanding: bool, now: Instant) -> Check {
        if !data_outstanding {
            self.waiting_since = None;
        }
        let silent = now - self.heard;
        // A relay that answers pings is dead only once a ping stays unanswered for the timeout.
        if self.answers_pings
            && self
                .unanswered_since
                .is_some_and(|sent| now - sent > k.timeout)
        {
            return Check::Dead(silent);
        }
        if let Some(since) = self.waiting_since {
            let waited = now - since.max(self.heard);
            // A relay that never answered a ping: silence while we wait on it is all we have.
            if !self.answers_pings && waited > k.timeout {
                return Check::Dead(waited);
            }
            if self.unanswered_since.is_none() && waited >= k.timeout / 2 {
                return self.ping(now);
            }
        }
        let ping_due = self.last_ping.is_none_or(|last| now - last >= k.interval);
        if silent >= k.interval && ping_due {
            return self.ping(now);
        }
        Check::Fine
    }
}

/// A transport error as one readable phrase: library texts can carry documentation links.
fn transport_error(e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    match text.find(": https://") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// After our close went out, a dropped connection is the expected end, not a loss.
fn finish_closing(close_sent: Option<(Instant, PumpEnd)>, lost: PumpEnd) -> PumpEnd {
    close_sent.map(|(_, end)| end).unwrap_or(lost)
}

enum Inbound {
    Nothing,
    Data { ack_now: Option<u64> },
    Violation { detail: String, code: u16 },
}

fn violation(role: Role, relay_code: u16, detail: String) -> Inbound {
    // A client closing on a broken relay uses the generic protocol-error code.
    let code = match role {
        Role::Relay => relay_code,
        Role::Client => 1002,
    };
    Inbound::Violation { detail, code }
}

fn on_binary<I, O: LocalOutput>(
    session: &mut Session<I, O>,
    bytes: &Bytes,
    role: Role,
    long_close: &mut Option<(u32, String)>,
) -> Inbound {
    // A client is as tolerant as gcloud (protocol.md §4): trailing bytes after a message and
    // empty DATA are dropped with a debug line, unknown tags ignored. The relay stays strict
    // toward clients and answers with its close codes.
    let decoded = match role {
        Role::Client => Frame::decode_tolerant(bytes),
        Role::Relay => Frame::decode(bytes).map(|f| (f, 0)),
    };
    let frame = match decoded {
        Ok((frame, extra)) => {
            if extra > 0 {
                tracing::debug!(message_kind = ?frame, extra, "ignored trailing bytes after a relay message");
            }
            frame
        }
        Err(e) => return violation(role, close::INVALID_DATA, e.to_string()),
    };
    match frame {
        Frame::Data([]) => {
            tracing::debug!("ignored an empty DATA message from the relay");
            Inbound::Nothing
        }
        Frame::Data(payload) => {
            let ack_now = session.state.on_data(payload.len());
            session.queue_output(bytes.slice_ref(payload));
            Inbound::Data { ack_now }
        }
        Frame::Ack(n) => match session.state.on_ack(n) {
            Ok(()) => Inbound::Nothing,
            Err(e @ AckError::Backwards { .. }) => violation(role, close::BAD_ACK, e.to_string()),
            Err(e) => violation(role, close::INVALID_ACK, e.to_string()),
        },
        Frame::LongClose { code, reason } if role == Role::Client => {
            *long_close = Some((code, String::from_utf8_lossy(reason).into_owned()));
            Inbound::Nothing
        }
        Frame::Unknown(tag) if role == Role::Client => {
            tracing::debug!(tag = %format_args!("{tag:#06x}"), "ignored a relay message with an unknown tag");
            Inbound::Nothing
        }
        other => violation(
            role,
            close::INVALID_TAG,
            format!("unexpected {other:?} in an established session"),
        ),
    }
}

/// The code and reason a close reports, filling in from a LONG_CLOSE the peer sent before it:
/// its reason when the close frame has none, and its code when the close frame has no code
/// (1005) or the connection ended without one.
pub fn merge_long_close(
    close_code: Option<u16>,
    close_reason: String,
    long_close: Option<(u32, String)>,
) -> (u16, String) {
    let Some((long_code, long_reason)) = long_close else {
        return (close_code.unwrap_or(NO_STATUS), close_reason);
    };
    let code = match (close_code, u16::try_from(long_code)) {
        (Some(code), _) if code != NO_STATUS => code,
        (_, Ok(long_code)) => long_code,
        (code, Err(_)) => code.unwrap_or(NO_STATUS),
    };
    let reason = if close_reason.is_empty() {
        long_reason
    } else {
        close_reason
    };
    (code, reason)
}

/// The code a WebSocket reports for a close frame without a status code (RFC 6455 §7.1.5).
pub const NO_STATUS: u16 = 1005;

/// Writes part of the oldest queued payload. Cancel safe: the queue is updated only by what
/// `write_some` reports as written.
async fn write_front<O: LocalOutput>(output: &mut O, out: &mut OutQueue) -> std::io::Result<()> {
    let Some(front) = out.queue.front_mut() else {
        return Ok(());
    };
    let before = front.len();
    let result = output.write_some(front).await;
    out.bytes -= before - front.len();
    if front.is_empty() {
        out.queue.pop_front();
    }
    result
}

/// Hands queued messages to the WebSocket and flushes. Cancel safe: a message leaves the
/// queue only once the sink has accepted it.
async fn send_outbox<S, E>(sink: &mut S, outbox: &mut VecDeque<Message>) -> Result<(), String>
where
    S: Sink<Message, Error = E> + Unpin,
    E: std::fmt::Display,
{
    poll_fn(|cx| {
        while !outbox.is_empty() {
            match sink.poll_ready_unpin(cx) {
                std::task::Poll::Ready(Ok(())) => {}
                std::task::Poll::Ready(Err(e)) => {
                    return std::task::Poll::Ready(Err(e.to_string()));
                }
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
            if let Some(msg) = outbox.pop_front()
                && let Err(e) = sink.start_send_unpin(msg)
            {
                return std::task::Poll::Ready(Err(e.to_string()));
            }
        }
        sink.poll_flush_unpin(cx).map_err(|e| e.to_string())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: Keepalive = Keepalive {
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(10),
    };

    /// Runs the once-a-second keepalive check for `secs` seconds from `start`, with `answer`
    /// deciding whether a ping sent at a given second is answered at once. Returns the checks
    /// that were not `Fine`, by second.
    fn run(
        secs: u64,
        waiting: bool,
        answer: impl Fn(u64) -> bool,
        data_from_peer: &[u64],
    ) -> Vec<(u64, &'static str)> {
        let start = Instant::now();
        let mut alive = Liveness::new(waiting, start);
        let mut seen = Vec::new();
        for s in 1..=secs {
            let now = start + Duration::from_secs(s);
            if data_from_peer.contains(&s) {
                alive.heard(now);
            }
            match alive.check(K, waiting, now) {
                Check::Fine => {}
                Check::Ping => {
                    seen.push((s, "ping"));
                    if answer(s) {
                        alive.pong(now + Duration::from_millis(30));
                    }
                }
                Check::Dead(_) => {
                    seen.push((s, "dead"));
                    break;
                }
            }
        }
        seen
    }

    #[test]
    fn a_relay_that_answers_pings_is_never_torn_down_while_data_waits_for_its_ack() {
        let seen = run(120, true, |_| true, &[]);
        assert!(seen.iter().all(|(_, what)| *what == "ping"), "{seen:?}");
        // Pings go out every half timeout while the data waits.
        assert_eq!(seen.first(), Some(&(5, "ping")));
        assert!(seen.len() >= 20, "{seen:?}");
    }

    #[test]
    fn a_black_hole_is_noticed() {
        // Never answered a ping on this connection: silence while data waits decides.
        assert_eq!(run(60, true, |_| false, &[]), [(5, "ping"), (11, "dead")]);
        // Answered pings until second 30, then nothing: the unanswered ping decides.
        let seen = run(120, true, |s| s < 30, &[]);
        let dead = seen
            .iter()
            .find(|(_, what)| *what == "dead")
            .map(|(s, _)| *s);
        assert!(dead.is_some_and(|s| (30..=47).contains(&s)), "{seen:?}");
        // Idle, pings answered until 30: dead within interval + timeout of the last answer.
        let seen = run(120, false, |s| s < 30, &[]);
        let dead = seen
            .iter()
            .find(|(_, what)| *what == "dead")
            .map(|(s, _)| *s);
        assert!(dead.is_some_and(|s| (30..=52).contains(&s)), "{seen:?}");
    }

    #[test]
    fn an_idle_relay_that_ignores_pings_is_left_alone() {
        let seen = run(120, false, |_| false, &[]);
        assert!(seen.iter().all(|(_, what)| *what == "ping"), "{seen:?}");
        assert_eq!(seen.first(), Some(&(10, "ping")));
    }

    #[test]
    fn long_close_fills_in_the_close() {
        let long = || Some((4033, "not authorized".to_owned()));
        let cases = [
            (Some(4033), "", long(), (4033, "not authorized")),
            (None, "", long(), (4033, "not authorized")),
            (Some(NO_STATUS), "", long(), (4033, "not authorized")),
            (Some(1000), "", long(), (1000, "not authorized")),
            (Some(4003), "own", long(), (4003, "own")),
            (Some(4003), "own", None, (4003, "own")),
            (None, "", None, (NO_STATUS, "")),
            (
                None,
                "",
                Some((70_000, "big".to_owned())),
                (NO_STATUS, "big"),
            ),
        ];
        for (code, reason, long_close, (want_code, want_reason)) in cases {
            let got = merge_long_close(code, reason.to_owned(), long_close);
            assert_eq!(
                got,
                (want_code, want_reason.to_owned()),
                "{code:?} {reason}"
            );
        }
    }
}
