//! Test data streams: a deterministic pseudo-random pattern that large transfers generate and
//! hash on the fly, so no test holds hundreds of MiB in memory.
#![allow(dead_code)]

use std::io::{Read, Write};

use ring::digest::{Context, SHA256};

/// A deterministic pseudo-random byte stream (xorshift), so large transfers need no memory.
pub struct Pattern(pub u64);

impl Pattern {
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `len` pattern bytes to `w`, returning their SHA-256.
pub fn send_pattern(w: &mut impl Write, len: u64, seed: u64) -> std::io::Result<String> {
    let mut pattern = Pattern(seed);
    let mut hash = Context::new(&SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        w.write_all(&buf[..n])?;
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hex(hash.finish().as_ref()))
}

/// Reads `r` to the end, returning (bytes, SHA-256).
pub fn hash_all(r: &mut impl Read) -> std::io::Result<(u64, String)> {
    let mut hash = Context::new(&SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((total, hex(hash.finish().as_ref())));
        }
        hash.update(&buf[..n]);
        total += n as u64;
    }
}

pub fn expected_hash(len: u64, seed: u64) -> String {
    send_pattern(&mut std::io::sink(), len, seed).unwrap()
}
