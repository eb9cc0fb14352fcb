//! stdin and stdout as the local end of a tunnel (ProxyCommand mode).
//!
//! Where the platform allows, both are served by the runtime itself: a keystroke then goes
//! from stdin to the WebSocket, and a reply from the WebSocket to stdout, with no thread
//! hand-off (each hand-off cost a wake-up of another thread, about a fifth of a 1-byte round
//! trip). That needs the descriptor in non-blocking mode, and `O_NONBLOCK` belongs to the open
//! file description, which every process holding a copy of it shares. So the runtime serves
//! only pipes and Unix sockets, which is what ssh's ProxyCommand gives us (created for this
//! process alone, its own ends closed in ssh), as do shell pipelines and socat. The rest stays
//! on a blocking thread as before:
//!
//! * terminals: one description shared with the shell and every other program on it, which
//!   would see `EAGAIN` after we left;
//! * regular files and character devices (`/dev/null`): they cannot wait in epoll;
//! * a stream that is the same file as stderr (`2>&1` into the same pipe): our diagnostics
//!   would then fail with `EAGAIN` when the pipe is full;
//! * anything the runtime refuses to register.
//!
//! Blocking mode is restored once the tunnel is done with a stream (for stdin and stdout on
//! one socket, once both are), so a pipe later read or written by another program behaves as
//! it did before we ran.
//!
//! The threads use duplicates of fds 0 and 1 as unbuffered files, so bytes go straight
//! through without std's line buffering on stdout. tokio's own stdin is a blocking read that
//! cannot be cancelled and would hold up runtime shutdown; a thread of ours blocked in `read`
//! does not keep the process alive once `main` returns.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use tokio::net::UnixStream;
use tokio::net::unix::pipe;

use super::local::{ChannelInput, ChannelOutput, LocalInput, LocalOutput, MessageBuffer};
use crate::frame::MAX_ARRAY_LEN;

/// Opens this process's stdin and stdout as a tunnel's local ends.
///
/// Must be called within the runtime that runs the tunnel.
///
/// # Errors
/// When fd 0 or fd 1 cannot be duplicated, or a thread cannot be started.
pub fn open() -> io::Result<(StdinInput, StdoutOutput, StdoutDone)> {
    open_fds(
        io::stdin().as_fd(),
        io::stdout().as_fd(),
        io::stderr().as_fd(),
    )
}

/// [`open`] on the given descriptors, each duplicated (the originals stay open).
fn open_fds(
    stdin: BorrowedFd<'_>,
    stdout: BorrowedFd<'_>,
    stderr: BorrowedFd<'_>,
) -> io::Result<(StdinInput, StdoutOutput, StdoutDone)> {
    let stdin = Stream::inspect(stdin)?;
    let stdout = Stream::inspect(stdout)?;
    let stderr = Stream::inspect(stderr).ok().and_then(|s| s.id);
    let mut reader = stdin
        .may_register(stderr)
        .then(|| Nonblocking::register(&stdin, pipe::Receiver::from_owned_fd))
        .flatten();
    let mut writer = stdout
        .may_register(stderr)
        .then(|| Nonblocking::register(&stdout, pipe::Sender::from_owned_fd))
        .flatten();
    // stdin and stdout on one socket (socat's EXEC) share one description, so one mode: when
    // the runtime took only one of them, both go to threads.
    let shared = stdin.id.is_some() && stdin.id == stdout.id;
    if shared && reader.is_some() != writer.is_some() {
        reader = None;
        writer = None;
        let _ = rustix::io::ioctl_fionbio(&stdin.fd, false);
    }
    let in_guard = reader
        .as_ref()
        .and_then(|_| RestoreBlocking::new(&stdin.fd));
    let out_guard = match (shared, &writer) {
        (true, _) => in_guard.clone(),
        (false, Some(_)) => RestoreBlocking::new(&stdout.fd),
        (false, None) => None,
    };
    let input = StdinInput::new(stdin.fd, reader, in_guard)?;
    let (output, done) = StdoutOutput::new(stdout.fd, writer, out_guard)?;
    Ok((input, output, done))
}

/// One of the standard streams: a duplicate of its descriptor, and what it is.
struct Stream {
    fd: OwnedFd,
    kind: Kind,
    /// Device and inode: two streams with the same pair are the same file.
    id: Option<(u64, u64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Pipe,
    Socket,
    Other,
}

impl Stream {
    fn inspect(fd: BorrowedFd<'_>) -> io::Result<Stream> {
        Stream::identify(fd.try_clone_to_owned()?)
    }

    fn identify(fd: OwnedFd) -> io::Result<Stream> {
        let file = File::from(fd);
        let (kind, id) = match file.metadata() {
            Ok(meta) => {
                let kind = match meta.file_type() {
                    t if t.is_fifo() => Kind::Pipe,
                    t if t.is_socket() => Kind::Socket,
                    _ => Kind::Other,
                };
                (kind, Some((meta.dev(), meta.ino())))
            }
            Err(_) => (Kind::Other, None),
        };
        Ok(Stream {
            fd: file.into(),
            kind,
            id,
        })
    }

    /// Whether the runtime may serve this stream (see the module docs).
    fn may_register(&self, stderr: Option<(u64, u64)>) -> bool {
        self.kind != Kind::Other && !(self.id.is_some() && self.id == stderr)
    }
}

/// Puts a descriptor back in blocking mode when the last user of it is gone.
#[derive(Debug)]
struct RestoreBlocking(OwnedFd);

impl RestoreBlocking {
    fn new(fd: &OwnedFd) -> Option<Arc<RestoreBlocking>> {
        Some(Arc::new(RestoreBlocking(fd.try_clone().ok()?)))
    }
}

impl Drop for RestoreBlocking {
    fn drop(&mut self) {
        let _ = rustix::io::ioctl_fionbio(&self.0, false);
    }
}

/// A stream in non-blocking mode, registered with the runtime.
#[derive(Debug)]
enum Nonblocking<P> {
    Pipe(P),
    Socket(UnixStream),
}

impl<P> Nonblocking<P> {
    /// Registers `fd`; `None` (with `fd` back in blocking mode) when the runtime refuses it.
    fn register(stream: &Stream, pipe: impl FnOnce(OwnedFd) -> io::Result<P>) -> Option<Self> {
        let dup = stream.fd.try_clone().ok()?;
        let registered = match stream.kind {
            Kind::Pipe => pipe(dup).map(Nonblocking::Pipe),
            Kind::Socket => unix_stream(dup).map(Nonblocking::Socket),
            Kind::Other => return None,
        };
        if registered.is_err() {
            let _ = rustix::io::ioctl_fionbio(&stream.fd, false);
        }
        registered.ok()
    }
}

/// A Unix stream socket (a TCP or datagram socket stays on the thread).
fn unix_stream(fd: OwnedFd) -> io::Result<UnixStream> {
    let std = std::os::unix::net::UnixStream::from(fd);
    // Fails with InvalidInput on a socket that is not AF_UNIX.
    std.local_addr()?;
    std.set_nonblocking(true)?;
    UnixStream::from_std(std)
}

/// stdin as a source of DATA messages.
#[derive(Debug)]
pub struct StdinInput {
    source: Source,
    // Declared after `source`, so blocking mode comes back once it is closed.
    _blocking: Option<Arc<RestoreBlocking>>,
}

#[derive(Debug)]
enum Source {
    Runtime(Nonblocking<pipe::Receiver>, MessageBuffer),
    Thread(ChannelInput),
}

impl StdinInput {
    fn new(
        fd: OwnedFd,
        registered: Option<Nonblocking<pipe::Receiver>>,
        guard: Option<Arc<RestoreBlocking>>,
    ) -> io::Result<StdinInput> {
        Ok(match registered {
            Some(stream) => StdinInput {
                source: Source::Runtime(stream, MessageBuffer::default()),
                _blocking: guard,
            },
            None => StdinInput {
                source: Source::Thread(ChannelInput::spawn_reader(File::from(fd))?),
                _blocking: None,
            },
        })
    }

    /// Whether stdin is read by the runtime rather than a thread.
    pub fn in_runtime(&self) -> bool {
        matches!(self.source, Source::Runtime(..))
    }
}

impl LocalInput for StdinInput {
    async fn read_message(&mut self) -> io::Result<Option<Bytes>> {
        let (stream, buf) = match &mut self.source {
            Source::Thread(rx) => return rx.read_message().await,
            Source::Runtime(stream, buf) => (stream, buf),
        };
        loop {
            // Cancel safe: readiness consumes nothing, and the read itself does not wait. The
            // read goes into the buffer's spare capacity, which is never zero-filled.
            let read = match stream {
                Nonblocking::Pipe(p) => {
                    p.readable().await?;
                    p.try_read_buf(&mut buf.begin().limit(MAX_ARRAY_LEN))
                }
                Nonblocking::Socket(s) => {
                    s.readable().await?;
                    s.try_read_buf(&mut buf.begin().limit(MAX_ARRAY_LEN))
                }
            };
            match read {
                Ok(0) => return Ok(None),
                Ok(n) => return Ok(Some(buf.finish(n))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// stdout as the sink for received bytes.
#[derive(Debug)]
pub struct StdoutOutput {
    sink: Sink,
    // Declared after `sink`, so blocking mode comes back once it is closed.
    _blocking: Option<Arc<RestoreBlocking>>,
}

#[derive(Debug)]
enum Sink {
    Runtime(Option<Nonblocking<pipe::Sender>>),
    Thread(ChannelOutput),
}

/// Tells when everything handed to stdout has been written.
#[derive(Debug)]
pub struct StdoutDone(Option<std_mpsc::Receiver<io::Result<()>>>);

impl StdoutDone {
    /// Waits up to `limit` for the stdout thread to write what it holds: its result, or
    /// `None` when it did not finish in time. Without a thread, every byte was written
    /// before the tunnel ended.
    pub async fn wait(self, limit: Duration) -> Option<io::Result<()>> {
        let Some(done) = self.0 else {
            return Some(Ok(()));
        };
        tokio::task::spawn_blocking(move || done.recv_timeout(limit))
            .await
            .ok()
            .and_then(Result::ok)
    }
}

impl StdoutOutput {
    fn new(
        fd: OwnedFd,
        registered: Option<Nonblocking<pipe::Sender>>,
        guard: Option<Arc<RestoreBlocking>>,
    ) -> io::Result<(StdoutOutput, StdoutDone)> {
        Ok(match registered {
            Some(stream) => (
                StdoutOutput {
                    sink: Sink::Runtime(Some(stream)),
                    _blocking: guard,
                },
                StdoutDone(None),
            ),
            None => {
                let (output, done) = ChannelOutput::spawn_writer(File::from(fd))?;
                (
                    StdoutOutput {
                        sink: Sink::Thread(output),
                        _blocking: None,
                    },
                    StdoutDone(Some(done)),
                )
            }
        })
    }

    /// Whether stdout is written by the runtime rather than a thread.
    pub fn in_runtime(&self) -> bool {
        matches!(self.sink, Sink::Runtime(_))
    }
}

impl LocalOutput for StdoutOutput {
    async fn write_some(&mut self, buf: &mut Bytes) -> io::Result<()> {
        let stream = match &mut self.sink {
            Sink::Thread(tx) => return tx.write_some(buf).await,
            Sink::Runtime(stream) => stream.as_ref().ok_or(io::ErrorKind::BrokenPipe)?,
        };
        loop {
            // Cancel safe: `buf` advances only by what a completed write took.
            let written = match stream {
                Nonblocking::Pipe(p) => {
                    p.writable().await?;
                    p.try_write(buf)
                }
                Nonblocking::Socket(s) => {
                    s.writable().await?;
                    s.try_write(buf)
                }
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf.advance(n);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The reader went away: reported as the thread reports it.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn finish(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Thread(tx) => tx.finish().await,
            // Closes our duplicate only: fd 1 stays open until the process exits, as with
            // the thread, and a socket is not shut down under a peer that may still write.
            Sink::Runtime(stream) => {
                *stream = None;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests;
