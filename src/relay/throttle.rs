//! A token bucket per source address, for work a caller can make the relay do on its behalf
//! (token-info lookups). IPv6 sources are counted per /64, since one host commonly holds a
//! whole /64 and could otherwise rotate through it. The table is bounded: when it is full of
//! addresses that are still throttled, a new address is refused too (fail closed), which lasts
//! at most until buckets refill.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// How much one address may do: `burst` at once, then `per_sec` on average.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    /// Bucket size.
    pub burst: f64,
    /// Refill per second.
    pub per_sec: f64,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, rate: Rate, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate.per_sec).min(rate.burst)
    }
}

/// Buckets for at most `max_sources` addresses.
#[derive(Debug)]
pub struct PerSource {
    rate: Rate,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

impl PerSource {
    /// An empty table.
    pub fn new(rate: Rate, max_sources: usize) -> PerSource {
        PerSource {
            rate,
            max_sources,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `addr` at `now`; `false` when it has none left.
    pub fn allow(&mut self, addr: IpAddr, now: Instant) -> bool {
        let key = super::admission::address_key(addr);
        let rate = self.rate;
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_sources {
            // A full bucket holds nothing a fresh one would not.
            self.buckets
                .retain(|_, b| b.refilled(rate, now) < rate.burst);
            if self.buckets.len() >= self.max_sources {
                return false;
            }
        }
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        let tokens = bucket.refilled(rate, now);
        *bucket = Bucket {
            tokens: if tokens >= 1.0 { tokens - 1.0 } else { tokens },
            at: now,
        };
        tokens >= 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const RATE: Rate = Rate {
        burst: 3.0,
        per_sec: 0.5,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_refill() {
        let mut t = PerSource::new(RATE, 10);
        let now = Instant::now();
        let a = ip("192.0.2.1");
        assert!((0..3).all(|_| t.allow(a, now)));
        assert!(!t.allow(a, now));
        assert!(t.allow(ip("192.0.2.2"), now), "another address has its own");
        assert!(!t.allow(a, now + Duration::from_millis(1900)));
        assert!(t.allow(a, now + Duration::from_millis(2100)));
        assert!(!t.allow(a, now + Duration::from_millis(2200)));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let mut t = PerSource::new(RATE, 10);
        let now = Instant::now();
        assert!((1..=3).all(|i| t.allow(ip(&format!("2001:db8::{i}")), now)));
        assert!(!t.allow(ip("2001:db8::ffff:1234"), now));
        assert!(t.allow(ip("2001:db8:0:1::1"), now));
        assert!((0..3).all(|_| t.allow(ip("::ffff:192.0.2.9"), now)));
        assert!(!t.allow(ip("192.0.2.9"), now));
    }

    #[test]
    fn a_full_table_refuses_new_sources_until_buckets_refill() {
        let mut t = PerSource::new(RATE, 2);
        let now = Instant::now();
        assert!(t.allow(ip("192.0.2.1"), now));
        assert!(t.allow(ip("192.0.2.2"), now));
        assert!(!t.allow(ip("192.0.2.3"), now));
        assert!(t.allow(ip("192.0.2.3"), now + Duration::from_secs(3)));
    }
}
