//! The async loop that joins a local byte stream and a WebSocket. It decides nothing: each
//! event goes to [`AttachState`], which says what to send, when to wake and when to stop.
//!
//! One task, one `select!`: WebSocket reads, local reads, WebSocket writes, local writes and
//! the state's next deadline are separate arms, so a side that blocks never stops the others
//! (a single loop that awaited its sends inline would deadlock when both peers send at once).
//! Every arm is cancel safe; buffers that must survive a cancelled arm live in [`Session`] and
//! in the state's outbox.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::attach::{Action, AttachState, Settings};
use super::local::{LocalInput, LocalOutput};
use super::state::SessionState;
use crate::close;

pub use super::attach::{CLOSE_WAIT, EOF_ACK_WAIT, Flow, IDLE_ACK_DELAY, Keepalive, PumpEnd, Role};
pub use super::inbound::merge_long_close;

/// Received payload bytes queued for the local side before we stop reading the WebSocket.
const OUTPUT_QUEUE_LIMIT: usize = 256 * 1024;
/// How long a detaching pump tries to send its close on a connection that may be dead.
const DETACH_SEND_WAIT: Duration = Duration::from_millis(200);

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

impl OutQueue {
    fn push(&mut self, payload: Bytes) {
        self.bytes += payload.len();
        self.queue.push_back(payload);
    }
}

/// A request, from outside the pump, to let go of the current WebSocket with a close code
/// while keeping the session (a relay taking over for a reconnect, or asking for a fresh
/// token with [`close::REAUTHENTICATION_REQUIRED`]).
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

/// The running attachment's [`Flow`], kept up to date by the pump for code beside it (a
/// relay's stall check) that cannot borrow the session while the pump runs.
#[derive(Debug, Default)]
pub struct SharedFlow {
    unacked: AtomicU64,
    acks: AtomicU64,
}

impl SharedFlow {
    /// The flow as the pump last saw it.
    pub fn get(&self) -> Flow {
        Flow {
            unacked: self.unacked.load(Ordering::Relaxed),
            acks: self.acks.load(Ordering::Relaxed),
        }
    }

    fn set(&self, flow: Flow) {
        self.unacked.store(flow.unacked, Ordering::Relaxed);
        self.acks.store(flow.acks, Ordering::Relaxed);
    }
}

/// How one WebSocket attachment of a session is driven.
#[derive(Debug)]
pub struct Attach<'a> {
    /// Which end of the protocol we are.
    pub role: Role,
    /// Close code sent after local input ends ([`close::NORMAL`] for both sides).
    pub eof_close: u16,
    /// DATA messages to send before anything else (the resend after a resume).
    pub resend: Vec<Bytes>,
    /// Shutdown: close ([`close::GOING_AWAY`] from a relay, [`close::NORMAL`] from a client)
    /// and return [`PumpEnd::Cancelled`].
    pub shutdown: &'a CancellationToken,
    /// Optional detach request.
    pub detach: Option<&'a Detach>,
    /// Optional dead-path detection (clients only: gcloud fails on pings from a relay).
    pub keepalive: Option<Keepalive>,
    /// Close with [`close::POLICY_VIOLATION`] after this long without DATA either way.
    pub idle_timeout: Option<Duration>,
    /// Optional place to publish the attachment's [`Flow`] as it changes.
    pub flow: Option<&'a SharedFlow>,
}

impl<'a> Attach<'a> {
    /// A plain attachment: no resend, no detach, no keepalive, no published flow.
    pub fn new(role: Role, shutdown: &'a CancellationToken) -> Self {
        Attach {
            role,
            eof_close: close::NORMAL,
            resend: Vec::new(),
            shutdown,
            detach: None,
            keepalive: None,
            idle_timeout: None,
            flow: None,
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
        shutdown,
        detach,
        keepalive,
        idle_timeout,
        flow,
    } = attach;
    let never = CancellationToken::new();
    let detach_token = detach.map_or(&never, |d| &d.token);
    let Session {
        state,
        input,
        output,
        out,
        input_done,
    } = session;
    let settings = Settings {
        role,
        eof_close,
        keepalive,
        idle_timeout,
    };
    let mut attach = AttachState::new(state, settings, resend, *input_done, Instant::now());
    let (mut sink, mut stream) = ws.split();

    loop {
        // An ACK may have arrived; what was handed to the WebSocket is published as it goes.
        publish(flow, &attach);
        let read_ws = out.bytes < OUTPUT_QUEUE_LIMIT;
        let read_local = attach.wants_input();
        let write_ws = attach.wants_send();
        let write_local = !out.queue.is_empty();
        let open = !attach.is_closing();
        let deadline = attach.next_deadline();

        let action = tokio::select! {
            () = shutdown.cancelled(), if open => {
                attach.on_cancel(Instant::now());
                Action::Continue
            }
            () = detach_token.cancelled(), if open => {
                attach.on_detach(detach.map_or(close::SID_IN_USE, |d| d.code.load(Ordering::SeqCst)))
            }
            msg = stream.next(), if read_ws => match msg {
                Some(Ok(msg)) => attach.on_message(msg, Instant::now()),
                Some(Err(e)) => attach.on_lost(transport_error(e)),
                None => attach.on_lost("connection closed without a close frame".into()),
            },
            read = input.read_message(), if read_local => {
                match read {
                    Ok(Some(message)) => attach.on_local_data(message, Instant::now()),
                    Ok(None) => {
                        *input_done = true;
                        attach.on_local_eof(Instant::now());
                    }
                    Err(e) => attach.on_read_failed(e, Instant::now()),
                }
                Action::Continue
            }
            sent = send_outbox(&mut sink, &mut attach, flow), if write_ws => match sent {
                Ok(()) => {
                    attach.on_sent();
                    Action::Continue
                }
                Err(e) => attach.on_lost(e),
            },
            written = write_front(output, out), if write_local => {
                if let Err(e) = written {
                    *out = OutQueue::default();
                    attach.on_write_failed(e, Instant::now());
                }
                Action::Continue
            }
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                attach.on_timer(Instant::now())
            }
        };

        match action {
            Action::Continue => {}
            Action::Deliver(payload) => out.push(payload),
            Action::Stop(end) => return end,
            Action::FlushThenStop(end) => {
                let _ = timeout(CLOSE_WAIT, sink.flush()).await;
                return end;
            }
            Action::CloseThenStop(close, end) => {
                let _ = timeout(DETACH_SEND_WAIT, sink.send(close)).await;
                return end;
            }
        }
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

/// Hands the state's queued messages to the WebSocket and flushes. Cancel safe: a message
/// leaves the queue only once the sink is ready to accept it.
async fn send_outbox<S, E>(
    sink: &mut S,
    attach: &mut AttachState<'_>,
    flow: Option<&SharedFlow>,
) -> Result<(), String>
where
    S: Sink<Message, Error = E> + Unpin,
    E: std::fmt::Display,
{
    poll_fn(|cx| {
        while attach.has_outgoing() {
            match sink.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.to_string())),
                Poll::Pending => return Poll::Pending,
            }
            if let Some(msg) = attach.next_outgoing(Instant::now()) {
                let sent = sink.start_send_unpin(msg);
                // Handed over now, though the flush may wait for the peer to read.
                publish(flow, attach);
                if let Err(e) = sent {
                    return Poll::Ready(Err(e.to_string()));
                }
            }
        }
        sink.poll_flush_unpin(cx).map_err(|e| e.to_string())
    })
    .await
}

/// Publishes `attach`'s flow where the attachment's owner asked for it.
fn publish(flow: Option<&SharedFlow>, attach: &AttachState<'_>) {
    if let Some(flow) = flow {
        flow.set(attach.flow());
    }
}
