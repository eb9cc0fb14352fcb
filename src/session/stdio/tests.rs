//! stdin and stdout on pipes, sockets and files, through the descriptors given to `open_fds`.

use std::io::{PipeReader, PipeWriter, Read, Write};
use std::os::unix::net::UnixStream as StdUnixStream;

use super::*;
use crate::frame::Frame;

fn payload(message: &Bytes) -> Vec<u8> {
    match Frame::decode(message) {
        Ok(Frame::Data(p)) => p.to_vec(),
        other => panic!("not a DATA message: {other:?}"),
    }
}

async fn read_all(input: &mut StdinInput) -> Vec<u8> {
    let mut all = Vec::new();
    while let Some(m) = input.read_message().await.unwrap() {
        all.extend(payload(&m));
    }
    all
}

async fn write_all(output: &mut StdoutOutput, bytes: &[u8]) {
    let mut buf = Bytes::copy_from_slice(bytes);
    while !buf.is_empty() {
        output.write_some(&mut buf).await.unwrap();
    }
}

/// Whether a read on `reader` (empty, its writer open) waits rather than failing at once.
fn blocks(mut reader: PipeReader, writer: &mut PipeWriter) -> bool {
    let (tx, rx) = std_mpsc::channel();
    let t = std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let _ = tx.send(reader.read(&mut b).map(|_| ()));
    });
    let waited = rx.recv_timeout(Duration::from_millis(200)).is_err();
    writer.write_all(b"x").unwrap();
    t.join().unwrap();
    waited
}

#[tokio::test]
async fn pipes_are_served_by_the_runtime_in_order_and_left_blocking() {
    let (in_r, mut in_w) = io::pipe().unwrap();
    let (mut out_r, out_w) = io::pipe().unwrap();
    let (_err_r, err_w) = io::pipe().unwrap();
    let (mut input, mut output, done) =
        open_fds(in_r.as_fd(), out_w.as_fd(), err_w.as_fd()).unwrap();
    assert!(input.in_runtime() && output.in_runtime());

    let sent: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    let writer = {
        let sent = sent.clone();
        std::thread::spawn(move || {
            for chunk in sent.chunks(1000) {
                in_w.write_all(chunk).unwrap();
            }
            in_w
        })
    };
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let m = input.read_message().await.unwrap().unwrap();
        assert!(payload(&m).len() <= MAX_ARRAY_LEN);
        got.extend(payload(&m));
    }
    assert_eq!(got, sent);
    let mut in_w = writer.join().unwrap();

    let reader = std::thread::spawn(move || {
        let mut back = vec![0u8; sent.len()];
        out_r.read_exact(&mut back).unwrap();
        (back, sent)
    });
    write_all(&mut output, &got).await;
    let (back, sent) = reader.join().unwrap();
    assert_eq!(back, sent);

    drop((input, output));
    assert!(matches!(
        done.wait(Duration::from_secs(1)).await,
        Some(Ok(()))
    ));
    assert!(blocks(in_r, &mut in_w), "stdin is blocking again");
}

#[tokio::test]
async fn stdin_end_of_file_ends_input() {
    let (in_r, mut in_w) = io::pipe().unwrap();
    let (_out_r, out_w) = io::pipe().unwrap();
    let (mut input, _output, _done) = open_fds(in_r.as_fd(), out_w.as_fd(), out_w.as_fd()).unwrap();
    in_w.write_all(b"last words").unwrap();
    drop(in_w);
    assert_eq!(read_all(&mut input).await, b"last words");
    assert!(input.read_message().await.unwrap().is_none());
}

#[tokio::test]
async fn stdout_shared_with_stderr_and_regular_files_stay_on_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in");
    std::fs::write(&path, b"from a file").unwrap();
    let file = File::open(&path).unwrap();
    let (mut out_r, out_w) = io::pipe().unwrap();
    let (mut input, mut output, done) =
        open_fds(file.as_fd(), out_w.as_fd(), out_w.as_fd()).unwrap();
    assert!(!input.in_runtime() && !output.in_runtime());
    assert_eq!(read_all(&mut input).await, b"from a file");
    write_all(&mut output, b"to a pipe").await;
    drop(output);
    assert!(matches!(
        done.wait(Duration::from_secs(5)).await,
        Some(Ok(()))
    ));
    drop(out_w);
    let mut back = Vec::new();
    out_r.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"to a pipe");
}

#[tokio::test]
async fn one_socket_for_stdin_and_stdout_is_served_by_the_runtime() {
    let (ours, mut peer) = StdUnixStream::pair().unwrap();
    let (_err_r, err_w) = io::pipe().unwrap();
    let (mut input, mut output, _done) =
        open_fds(ours.as_fd(), ours.as_fd(), err_w.as_fd()).unwrap();
    assert!(input.in_runtime() && output.in_runtime());
    peer.write_all(b"ping").unwrap();
    let m = input.read_message().await.unwrap().unwrap();
    assert_eq!(payload(&m), b"ping");
    write_all(&mut output, b"pong").await;
    let mut back = [0u8; 4];
    peer.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"pong");
    drop((input, output));
    // Back in blocking mode: a read waits (here until its timeout) instead of failing at once.
    let mut ours = ours;
    ours.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let started = std::time::Instant::now();
    assert!(ours.read(&mut back).is_err());
    assert!(started.elapsed() >= Duration::from_millis(50));
}
