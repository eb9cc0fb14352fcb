//! ProxyCommand mode: one tunnel joined to this process's stdin and stdout.
//!
//! stdin and stdout are served by two plain threads that talk to the async side over bounded
//! channels. tokio's own stdin is a blocking read that cannot be cancelled and would hold up
//! runtime shutdown; a thread of ours blocked in `read` does not keep the process alive once
//! `main` returns. Both threads use duplicates of fds 0 and 1 as unbuffered files, so bytes go
//! straight through without std's line buffering on stdout.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::Error;
use super::tunnel::TunnelConfig;
use crate::session::local::{ChannelInput, ChannelOutput, MessageBuffer};
use crate::session::pump::Session;
use crate::session::state::DEFAULT_MAX_UNACKED;

/// Messages buffered between the stdin thread and the tunnel.
const STDIN_QUEUE: usize = 8;
/// Payloads buffered between the tunnel and the stdout thread.
const STDOUT_QUEUE: usize = 16;
/// After the tunnel ends, how long to let the stdout thread finish writing what it holds.
const STDOUT_DRAIN_WAIT: Duration = Duration::from_secs(10);

/// Runs one tunnel over stdin/stdout until either side ends.
///
/// # Errors
/// An [`Error`] when the tunnel fails or stdout cannot take the received bytes.
pub async fn run(config: &TunnelConfig, cancel: &CancellationToken) -> Result<(), Error> {
    let input = spawn_stdin_reader().map_err(|e| Error::other(format!("opening stdin: {e}")))?;
    let (output, done) =
        spawn_stdout_writer().map_err(|e| Error::other(format!("opening stdout: {e}")))?;
    let mut session = Session::new(input, output, DEFAULT_MAX_UNACKED);
    let result = config.run(&mut session, cancel).await;
    // Dropping the session closes the channel, so the writer thread finishes once it has
    // written and flushed everything it holds.
    drop(session);
    let written = tokio::task::spawn_blocking(move || done.recv_timeout(STDOUT_DRAIN_WAIT))
        .await
        .ok()
        .and_then(Result::ok);
    match (result, written) {
        (Err(e), _) => Err(e),
        (Ok(()), Some(Err(e))) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(Error::other(format!("writing to stdout: {e}")))
        }
        (Ok(()), _) => Ok(()),
    }
}

fn spawn_stdin_reader() -> io::Result<ChannelInput> {
    let mut stdin = File::from(io::stdin().as_fd().try_clone_to_owned()?);
    let (tx, rx) = mpsc::channel(STDIN_QUEUE);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut buf = MessageBuffer::default();
            loop {
                let message = match stdin.read(buf.spare()) {
                    Ok(0) => break,
                    Ok(n) => Ok(buf.finish(n)),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let failed = message.is_err();
                if tx.blocking_send(message).is_err() || failed {
                    break;
                }
            }
            // Dropping `tx` is the end-of-input signal.
        })?;
    Ok(ChannelInput::new(rx))
}

fn spawn_stdout_writer() -> io::Result<(ChannelOutput, std_mpsc::Receiver<io::Result<()>>)> {
    let mut stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let (tx, mut rx) = mpsc::channel::<Bytes>(STDOUT_QUEUE);
    let (done_tx, done_rx) = std_mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("stdout".into())
        .spawn(move || {
            let result = (|| {
                while let Some(bytes) = rx.blocking_recv() {
                    stdout.write_all(&bytes)?;
                }
                stdout.flush()
            })();
            let _ = done_tx.send(result);
        })?;
    Ok((ChannelOutput::new(tx), done_rx))
}
