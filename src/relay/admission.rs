//! What a caller may hold before and after it is known: handshakes per client address, and the
//! relay-wide memory budget that every session reserves its worst case from.
//!
//! Both are counters behind guards that give back what they took when dropped, so no path
//! (an error, a cancelled task, a parked session that expires) can leak a slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The address a per-address limit counts: IPv4 (also when IPv4-mapped) as is, IPv6 by its
/// /64 (one subscriber usually holds a whole /64, so counting single addresses would limit
/// nothing). Every per-address limit of the relay counts by this key.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// Connections per client address that are between accept and a finished upgrade.
#[derive(Debug, Default)]
pub struct HandshakeGate {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`HandshakeGate`]; released on drop.
#[derive(Debug)]
pub struct HandshakeSlot {
    gate: Arc<HandshakeGate>,
    key: IpAddr,
}

impl HandshakeGate {
    /// Takes a slot for `ip` unless it already has `limit`.
    pub fn try_enter(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<HandshakeSlot> {
        let key = address_key(ip);
        // Every update is one insert or remove, so a poisoned lock holds a consistent map.
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(HandshakeSlot {
            gate: self.clone(),
            key,
        })
    }

    /// Addresses with a handshake in progress (for tests and metrics).
    pub fn addresses(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut counts = self.gate.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The relay-wide memory budget for session buffers.
#[derive(Debug)]
pub struct Budget {
    limit: AtomicUsize,
    reserved: AtomicUsize,
}

/// Bytes reserved by one session; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit: AtomicUsize::new(limit),
            reserved: AtomicUsize::new(0),
        })
    }

    /// Changes the limit (a reload). Sessions already admitted keep their reservations, even
    /// when they now exceed it; only new ones are refused.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::SeqCst);
    }

    /// Reserves `bytes`, or `None` when they do not fit.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let limit = self.limit.load(Ordering::SeqCst);
        self.reserved
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                held.checked_add(bytes).filter(|&total| total <= limit)
            })
            .ok()?;
        Some(Reservation {
            budget: self.clone(),
            bytes,
        })
    }

    /// Bytes reserved now.
    pub fn reserved(&self) -> usize {
        self.reserved.load(Ordering::SeqCst)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.reserved.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_slots_are_per_address_and_given_back() {
        let gate = Arc::new(HandshakeGate::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = gate.try_enter(a, 2).unwrap();
        let _second = gate.try_enter(a, 2).unwrap();
        assert!(gate.try_enter(a, 2).is_none(), "third from one address");
        assert!(
            gate.try_enter(b, 2).is_some(),
            "another address is not affected"
        );
        drop(first);
        assert!(gate.try_enter(a, 2).is_some(), "a slot comes back on drop");
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_v4_as_v4() {
        let gate = Arc::new(HandshakeGate::default());
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _held = gate.try_enter(one, 1).unwrap();
        assert!(gate.try_enter(same_64, 1).is_none());
        assert!(gate.try_enter(other_64, 1).is_some());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let _v4 = gate.try_enter(v4, 1).unwrap();
        assert!(gate.try_enter(mapped, 1).is_none());
    }

    #[test]
    fn the_budget_admits_what_fits_and_frees_on_drop() {
        let budget = Budget::new(100);
        let a = budget.try_reserve(60).unwrap();
        assert!(budget.try_reserve(50).is_none());
        let b = budget.try_reserve(40).unwrap();
        assert_eq!(budget.reserved(), 100);
        drop(a);
        assert_eq!(budget.reserved(), 40);
        budget.set_limit(30);
        assert!(budget.try_reserve(1).is_none(), "over a lowered limit");
        drop(b);
        assert!(budget.try_reserve(30).is_some());
        assert!(budget.try_reserve(usize::MAX).is_none(), "no overflow");
    }
}
