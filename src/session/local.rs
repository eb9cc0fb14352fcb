//! The local end of a session: where tunnel bytes come from and go to.
//!
//! The client's local end is stdin/stdout or an accepted TCP connection; the relay's is the
//! backend TCP connection. Input is read straight into buffers that leave room for the DATA
//! header, so a DATA message is built in place and its payload is never copied.

use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::sync::mpsc as std_mpsc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use crate::frame::{self, DATA_HEADER_LEN, MAX_ARRAY_LEN};

/// A source of DATA messages.
pub trait LocalInput {
    /// The next DATA message (header included), or `None` at end of input.
    ///
    /// Must be cancel safe: when the future is dropped before it completes, no input is lost.
    fn read_message(&mut self) -> impl Future<Output = io::Result<Option<Bytes>>> + Send;
}

/// A sink for received payload bytes.
pub trait LocalOutput {
    /// Writes a prefix of `buf` and advances it past what was written.
    ///
    /// Must be cancel safe: when the future is dropped, `buf` still holds every byte that was
    /// not written.
    fn write_some(&mut self, buf: &mut Bytes) -> impl Future<Output = io::Result<()>> + Send;

    /// Signals that no more bytes will follow (TCP half-close, or closing stdout).
    fn finish(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

/// Reads input into DATA messages built in place.
///
/// Buffers are carved from 256 KiB blocks; a block is freed once every message cut from it has
/// been acknowledged and dropped, so steady-state reading does one allocation per block.
#[derive(Debug, Default)]
pub struct MessageBuffer {
    block: BytesMut,
}

const BLOCK_SIZE: usize = 16 * (DATA_HEADER_LEN + MAX_ARRAY_LEN);

impl MessageBuffer {
    /// Room for the next read: up to [`MAX_ARRAY_LEN`] payload bytes.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.block.capacity() < DATA_HEADER_LEN + MAX_ARRAY_LEN {
            self.block = BytesMut::with_capacity(BLOCK_SIZE);
        }
        self.block.resize(DATA_HEADER_LEN + MAX_ARRAY_LEN, 0);
        self.block.get_mut(DATA_HEADER_LEN..).unwrap_or_default()
    }

    /// A buffer holding only the header room, with capacity for a full payload, for reads
    /// that append (no zero-filling, unlike [`spare`](Self::spare)).
    pub fn begin(&mut self) -> &mut BytesMut {
        if self.block.capacity() < DATA_HEADER_LEN + MAX_ARRAY_LEN {
            self.block = BytesMut::with_capacity(BLOCK_SIZE);
        }
        self.block.clear();
        self.block.put_bytes(0, DATA_HEADER_LEN);
        &mut self.block
    }

    /// Turns the first `n` payload bytes read after [`spare`](Self::spare) or
    /// [`begin`](Self::begin) into a DATA message.
    pub fn finish(&mut self, n: usize) -> Bytes {
        self.block.truncate(DATA_HEADER_LEN + n);
        let mut header = [0u8; DATA_HEADER_LEN];
        frame::write_data_header(&mut header, n);
        if let Some(room) = self.block.get_mut(..DATA_HEADER_LEN) {
            room.copy_from_slice(&header);
        }
        self.block.split().freeze()
    }
}

/// Reads a TCP stream (the relay's backend, or a listener's accepted connection).
#[derive(Debug)]
pub struct TcpInput {
    read: OwnedReadHalf,
    buf: MessageBuffer,
}

impl TcpInput {
    /// Wraps the read half of a TCP stream.
    pub fn new(read: OwnedReadHalf) -> Self {
        TcpInput {
            read,
            buf: MessageBuffer::default(),
        }
    }
}

impl LocalInput for TcpInput {
    async fn read_message(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            // Cancel safe: readiness consumes nothing, and the read itself does not wait.
            self.read.readable().await?;
            let mut room = self.buf.begin().limit(MAX_ARRAY_LEN);
            match self.read.try_read_buf(&mut room) {
                Ok(0) => return Ok(None),
                Ok(n) => return Ok(Some(self.buf.finish(n))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Writes to a TCP stream.
#[derive(Debug)]
pub struct TcpOutput {
    write: OwnedWriteHalf,
}

impl TcpOutput {
    /// Wraps the write half of a TCP stream.
    pub fn new(write: OwnedWriteHalf) -> Self {
        TcpOutput { write }
    }
}

impl LocalOutput for TcpOutput {
    async fn write_some(&mut self, buf: &mut Bytes) -> io::Result<()> {
        let n = self.write.write(buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf.advance(n);
        Ok(())
    }

    async fn finish(&mut self) -> io::Result<()> {
        self.write.shutdown().await
    }
}

/// Input fed by a thread (stdin): messages arrive on a bounded channel.
#[derive(Debug)]
pub struct ChannelInput {
    rx: mpsc::Receiver<io::Result<Bytes>>,
}

impl ChannelInput {
    /// Wraps the receiving end; the sender is dropped at end of input.
    pub fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        ChannelInput { rx }
    }

    /// Reads `file` (a blocking stdin) on a thread of its own, [`READ_AHEAD`] messages ahead.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn spawn_reader(mut file: File) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                let mut buf = MessageBuffer::default();
                // Zero-filled once: each read lands here and only what was read is copied
                // into the message, instead of zero-filling a whole message before each read.
                let mut scratch = vec![0u8; MAX_ARRAY_LEN];
                loop {
                    let message = match file.read(&mut scratch) {
                        Ok(0) => break,
                        Ok(n) => {
                            let read = scratch.get(..n).unwrap_or_default();
                            buf.begin().extend_from_slice(read);
                            Ok(buf.finish(read.len()))
                        }
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
}

/// Messages a reader thread may hold ready before the tunnel takes them.
pub const READ_AHEAD: usize = 8;
/// Payloads a writer thread may hold before the tunnel waits for it.
pub const WRITE_BEHIND: usize = 16;

impl LocalInput for ChannelInput {
    async fn read_message(&mut self) -> io::Result<Option<Bytes>> {
        // `recv` is cancel safe.
        self.rx.recv().await.transpose()
    }
}

/// Output drained by a thread (stdout): payloads go over a bounded channel.
#[derive(Debug)]
pub struct ChannelOutput {
    tx: Option<mpsc::Sender<Bytes>>,
}

impl ChannelOutput {
    /// Wraps the sending end; dropping it tells the writer thread to finish.
    pub fn new(tx: mpsc::Sender<Bytes>) -> Self {
        ChannelOutput { tx: Some(tx) }
    }

    /// Writes to `file` (a blocking stdout) on a thread of its own, which reports on the
    /// returned channel once it has written everything and the sending end is gone.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn spawn_writer(mut file: File) -> io::Result<(Self, std_mpsc::Receiver<io::Result<()>>)> {
        let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_BEHIND);
        let (done_tx, done_rx) = std_mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || {
                let result = (|| {
                    while let Some(bytes) = rx.blocking_recv() {
                        file.write_all(&bytes)?;
                    }
                    file.flush()
                })();
                let _ = done_tx.send(result);
            })?;
        Ok((ChannelOutput::new(tx), done_rx))
    }
}

impl LocalOutput for ChannelOutput {
    async fn write_some(&mut self, buf: &mut Bytes) -> io::Result<()> {
        let tx = self.tx.as_ref().ok_or(io::ErrorKind::BrokenPipe)?;
        // `reserve` is cancel safe; the payload is only taken once a slot is held.
        let permit = tx.reserve().await.map_err(|_| io::ErrorKind::BrokenPipe)?;
        permit.send(std::mem::take(buf));
        Ok(())
    }

    async fn finish(&mut self) -> io::Result<()> {
        self.tx = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;

    #[test]
    fn messages_are_built_in_place_and_independent() {
        let mut buf = MessageBuffer::default();
        buf.spare()[..3].copy_from_slice(b"abc");
        let first = buf.finish(3);
        buf.spare()[..2].copy_from_slice(b"de");
        let second = buf.finish(2);
        assert_eq!(Frame::decode(&first), Ok(Frame::Data(b"abc")));
        assert_eq!(Frame::decode(&second), Ok(Frame::Data(b"de")));
    }

    #[test]
    fn appending_reads_build_messages_without_zero_filling() {
        let mut buf = MessageBuffer::default();
        buf.begin().extend_from_slice(b"xyz");
        let first = buf.finish(3);
        let room = buf.begin();
        assert_eq!(
            room.len(),
            DATA_HEADER_LEN,
            "only the header room is initialised"
        );
        assert!(room.capacity() >= DATA_HEADER_LEN + MAX_ARRAY_LEN);
        room.extend_from_slice(b"w");
        let second = buf.finish(1);
        assert_eq!(Frame::decode(&first), Ok(Frame::Data(b"xyz")));
        assert_eq!(Frame::decode(&second), Ok(Frame::Data(b"w")));
    }

    #[test]
    fn a_full_read_fills_one_maximal_message() {
        let mut buf = MessageBuffer::default();
        let spare = buf.spare();
        assert_eq!(spare.len(), MAX_ARRAY_LEN);
        spare.fill(9);
        let msg = buf.finish(MAX_ARRAY_LEN);
        assert_eq!(msg.len(), DATA_HEADER_LEN + MAX_ARRAY_LEN);
    }
}
