//! What a caller may hold before and after it is known: handshakes per client address, tunnels
//! per principal, and the relay-wide memory budget that every session reserves its worst case
//! from.
//!
//! Both are counters behind guards that give back what they took when dropped, so no path
//! (an error, a cancelled task, a parked session that expires) can leak a slot.

use std::collections::HashMap;
use std::hash::Hash;
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

/// Holders per key, each counted by a [`Slot`] that gives its place back when dropped. Counts
/// unfinished handshakes per client address ([`HandshakeGate`]) and tunnels per principal
/// ([`PrincipalGate`]): one counter, so neither can be counted down twice or forgotten.
#[derive(Debug)]
pub struct Gate<K: Hash + Eq> {
    counts: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq> Default for Gate<K> {
    fn default() -> Self {
        Gate {
            counts: Mutex::default(),
        }
    }
}

/// One holder's place in a [`Gate`]; released on drop.
#[derive(Debug)]
pub struct Slot<K: Hash + Eq> {
    gate: Arc<Gate<K>>,
    key: K,
}

/// Connections per client address ([`address_key`]) between accept and a finished upgrade.
pub type HandshakeGate = Gate<IpAddr>;
/// One connection's place in the [`HandshakeGate`].
pub type HandshakeSlot = Slot<IpAddr>;
/// Tunnels per principal, attached or parked.
pub type PrincipalGate = Gate<String>;
/// One tunnel's place in the [`PrincipalGate`], held by the session until it ends.
pub type PrincipalSlot = Slot<String>;

impl<K: Hash + Eq + Clone> Gate<K> {
    /// Takes a slot for `key` unless it already has `limit`.
    pub fn try_enter(self: &Arc<Self>, key: K, limit: usize) -> Option<Slot<K>> {
        // Every update is one insert or remove, so a poisoned lock holds a consistent map.
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key.clone()).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            gate: self.clone(),
            key,
        })
    }

    /// Keys holding at least one slot (for tests and metrics).
    pub fn keys(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl<K: Hash + Eq> Drop for Slot<K> {
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

/// What a new session holds from admission until it ends: its place among its principal's
/// tunnels and its share of the memory budget. Dropping it gives both back.
#[derive(Debug)]
pub struct Admitted {
    /// The principal's tunnel slot.
    pub principal: PrincipalSlot,
    /// The memory reservation.
    pub reservation: Reservation,
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
        let enter = |ip: IpAddr| gate.try_enter(address_key(ip), 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = enter(a).unwrap();
        let _second = enter(a).unwrap();
        assert!(enter(a).is_none(), "third from one address");
        assert!(enter(b).is_some(), "another address is not affected");
        drop(first);
        assert!(enter(a).is_some(), "a slot comes back on drop");
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_v4_as_v4() {
        let gate = Arc::new(HandshakeGate::default());
        let enter = |ip: &str| gate.try_enter(address_key(ip.parse().unwrap()), 1);
        let _held = enter("2001:db8:1:2::1").unwrap();
        assert!(enter("2001:db8:1:2:ffff::9").is_none(), "same /64");
        assert!(enter("2001:db8:1:3::1").is_some(), "another /64");
        let _v4 = enter("192.0.2.7").unwrap();
        assert!(enter("::ffff:192.0.2.7").is_none(), "mapped v4 is v4");
    }

    #[test]
    fn principal_slots_count_until_dropped() {
        let gate = Arc::new(PrincipalGate::default());
        let a = gate.try_enter("user:a@x.io".to_owned(), 1).unwrap();
        assert!(gate.try_enter("user:a@x.io".to_owned(), 1).is_none());
        assert_eq!(gate.keys(), 1);
        drop(a);
        assert_eq!(gate.keys(), 0, "an emptied key is forgotten");
        assert!(gate.try_enter("user:a@x.io".to_owned(), 1).is_some());
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
