//! Counters for the admin endpoint, rendered in the Prometheus text format. Plain atomics:
//! updating them costs a few nanoseconds on the paths that count.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the handshake latency histogram's buckets.
const HANDSHAKE_BUCKETS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// The relay's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    sessions_open: AtomicI64,
    sessions_by_result: Mutex<BTreeMap<&'static str, u64>>,
    auth_failures: Mutex<BTreeMap<&'static str, u64>>,
    bytes_from_clients: AtomicU64,
    bytes_to_clients: AtomicU64,
    handshake_buckets: [AtomicU64; HANDSHAKE_BUCKETS.len()],
    handshake_count: AtomicU64,
    handshake_micros: AtomicU64,
    stalls: AtomicU64,
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    *map.lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_default() += 1;
}

impl Metrics {
    /// A session opened.
    pub fn session_opened(&self) {
        self.sessions_open.fetch_add(1, Ordering::Relaxed);
    }

    /// A session ended with `result` (`closed`, `expired`, `error`, …) after carrying bytes.
    pub fn session_closed(&self, result: &'static str, from_client: u64, to_client: u64) {
        self.sessions_open.fetch_sub(1, Ordering::Relaxed);
        bump(&self.sessions_by_result, result);
        self.bytes_from_clients
            .fetch_add(from_client, Ordering::Relaxed);
        self.bytes_to_clients
            .fetch_add(to_client, Ordering::Relaxed);
    }

    /// A request refused before a session existed (`denied`, `not_found`, `backend_failed`, …).
    pub fn refused(&self, result: &'static str) {
        bump(&self.sessions_by_result, result);
    }

    /// An authentication failure, by reason.
    pub fn auth_failed(&self, reason: &'static str) {
        bump(&self.auth_failures, reason);
    }

    /// A finished handshake (TCP accept to the first relay message) and how long it took.
    pub fn handshake(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (bucket, bound) in self.handshake_buckets.iter().zip(HANDSHAKE_BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.handshake_count.fetch_add(1, Ordering::Relaxed);
        self.handshake_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// A client stopped acknowledging (see `relay::watch`).
    pub fn stalled(&self) {
        self.stalls.fetch_add(1, Ordering::Relaxed);
    }

    /// Sessions open now.
    pub fn open(&self) -> i64 {
        self.sessions_open.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let o = &mut out;
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let open = "iap_relay_sessions_open";
        family(
            o,
            open,
            "gauge",
            "Tunnels open now (attached or waiting for resume).",
        );
        sample(o, open, "", self.open());
        let total = "iap_relay_sessions_total";
        family(o, total, "counter", "Tunnel requests by result.");
        by_label(o, total, "result", &self.sessions_by_result);
        let failures = "iap_relay_auth_failures_total";
        family(o, failures, "counter", "Refused credentials by reason.");
        by_label(o, failures, "reason", &self.auth_failures);
        let bytes = "iap_relay_bytes_total";
        family(
            o,
            bytes,
            "counter",
            "Tunnel payload bytes of ended sessions.",
        );
        sample(
            o,
            bytes,
            "direction=\"from_client\"",
            load(&self.bytes_from_clients),
        );
        sample(
            o,
            bytes,
            "direction=\"to_client\"",
            load(&self.bytes_to_clients),
        );
        let stalls = "iap_relay_stalls_total";
        family(
            o,
            stalls,
            "counter",
            "Sessions whose client held more than 32 KiB unacknowledged with no ACK for 10 s.",
        );
        sample(o, stalls, "", load(&self.stalls));
        let handshake = "iap_relay_handshake_seconds";
        family(o, handshake, "histogram", "Accept to first relay message.");
        let bucket = format!("{handshake}_bucket");
        for (n, bound) in self.handshake_buckets.iter().zip(HANDSHAKE_BUCKETS) {
            sample(o, &bucket, &format!("le=\"{bound}\""), load(n));
        }
        let count = load(&self.handshake_count);
        sample(o, &bucket, "le=\"+Inf\"", count);
        let sum = load(&self.handshake_micros) as f64 / 1e6;
        sample(o, &format!("{handshake}_sum"), "", sum);
        sample(o, &format!("{handshake}_count"), "", count);
        out
    }
}

/// A metric family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample line; `labels` is the text inside the braces, empty for none.
fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    let _ = if labels.is_empty() {
        writeln!(out, "{name} {value}")
    } else {
        writeln!(out, "{name}{{{labels}}} {value}")
    };
}

/// One sample per entry of `counts`, labelled `label="key"`.
fn by_label(out: &mut String, name: &str, label: &str, counts: &Mutex<BTreeMap<&str, u64>>) {
    for (key, n) in counts.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        sample(out, name, &format!("{label}=\"{key}\""), n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.session_opened();
        m.session_opened();
        m.session_closed("closed", 10, 20);
        m.refused("denied");
        m.auth_failed("expired");
        m.handshake(Duration::from_millis(20));
        let text = m.render();
        for want in [
            "iap_relay_sessions_open 1\n",
            "iap_relay_sessions_total{result=\"closed\"} 1\n",
            "iap_relay_sessions_total{result=\"denied\"} 1\n",
            "iap_relay_auth_failures_total{reason=\"expired\"} 1\n",
            "iap_relay_bytes_total{direction=\"to_client\"} 20\n",
            "iap_relay_handshake_seconds_bucket{le=\"0.01\"} 0\n",
            "iap_relay_handshake_seconds_bucket{le=\"0.025\"} 1\n",
            "iap_relay_handshake_seconds_count 1\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
    }
}
