//! Files the tests make and read: hashes, random content, token files.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Lowercase hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SHA-256 (lowercase hex) of a string.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// SHA-256 (lowercase hex) of a file's contents.
pub fn sha256_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    hex(ctx.finish().as_ref())
}

/// Writes `size_bytes` random bytes to `dir/name` (1 MiB chunks from the system RNG).
pub fn random_file(dir: &Path, name: &str, size_bytes: usize) -> PathBuf {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let path = dir.join(name);
    let mut f = File::create(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size_bytes;
    while left > 0 {
        let n = left.min(buf.len());
        rng.fill(&mut buf[..n]).expect("system RNG");
        f.write_all(&buf[..n]).expect("writing random file");
        left -= n;
    }
    f.sync_all().ok();
    path
}

/// A random lowercase-hex string of `bytes` random bytes (tokens, key ids).
pub fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .expect("system RNG");
    hex(&buf)
}

/// Writes a bearer token (with a trailing newline, as `echo TOKEN > file` would) to a new
/// mode-0600 file in `dir` and returns its path.
pub fn write_token_file(dir: &Path, token: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = dir.join(format!("token-{}", N.fetch_add(1, Ordering::Relaxed)));
    fs::write(&path, format!("{token}\n")).expect("writing token file");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod token file");
    path
}

/// The audit log's lines as JSON. Every complete line must be JSON (a panic otherwise); an
/// unfinished last line (the relay mid-write) is left for the next read.
pub fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l:?}"))
        })
        .collect()
}
