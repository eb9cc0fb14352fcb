//! Resumable sessions: which session id is attached to a live WebSocket and which is parked
//! waiting for its client to come back through `/v4/reconnect`.
//!
//! A session moves between tasks: the task serving its current WebSocket owns it while
//! attached; when that WebSocket is lost the task parks it here; a reconnect takes it out
//! again. A parked session's backend is not read, so the backend feels TCP back-pressure
//! instead of the relay buffering without bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::admission::Admitted;
use super::authn::Credential;
use crate::close;
use crate::session::local::{TcpInput, TcpOutput};
use crate::session::pump::{Detach, Session};
use crate::target::Target;

/// A relay-side session: the backend connection and the protocol state.
pub type RelaySession = Session<TcpInput, TcpOutput>;

/// What was granted: enough to decide again when the policy changes.
#[derive(Clone, Debug)]
pub struct Grant {
    /// Who opened the session; only they may resume it.
    pub principal: String,
    /// The target.
    pub target: Target,
    /// The port.
    pub port: u16,
    /// The destination group a host-mode target was found in.
    pub group: Option<String>,
    /// Whether the client presented a verified certificate.
    pub client_cert: bool,
}

/// What the audit line at the end of a session needs.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// The session id.
    pub sid: String,
    /// Who opened it; only they may resume it.
    pub principal: String,
    /// The target, described for logs.
    pub target: String,
    /// The target port.
    pub port: u16,
    /// When it opened.
    pub started: Instant,
    /// How many times it was resumed.
    pub resumes: u32,
}

/// A session waiting for its client.
#[derive(Debug)]
pub struct Parked {
    /// The session itself.
    pub session: RelaySession,
    /// Its description.
    pub info: SessionInfo,
    /// Its principal's tunnel slot and its share of the memory budget, held while it is
    /// attached or parked and given back when it is dropped.
    pub admitted: Admitted,
}

#[derive(Debug)]
enum Slot {
    Attached(Arc<Detach>),
    Parked {
        parked: Box<Parked>,
        generation: u64,
    },
}

#[derive(Debug)]
struct Entry {
    grant: Arc<Grant>,
    /// What authenticated the latest attachment; a reload checks it is still accepted.
    credential: Credential,
    slot: Slot,
    parked: Arc<Notify>,
}

/// One session as a reload sees it: enough to decide again whether it may go on.
#[derive(Debug)]
pub struct Standing {
    /// The session id.
    pub sid: String,
    /// What was granted.
    pub grant: Arc<Grant>,
    /// What authenticated it.
    pub credential: Credential,
}

/// Why a reconnect could not take a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimError {
    /// No such session, or its resume window ended (4001).
    Unknown,
    /// The session belongs to someone else (4033); it is left untouched.
    WrongPrincipal,
    /// The current WebSocket did not let go in time (4002).
    Busy,
}

impl ClaimError {
    /// The close code the relay answers with.
    pub fn close_code(self) -> u16 {
        match self {
            ClaimError::Unknown => close::SID_UNKNOWN,
            ClaimError::WrongPrincipal => close::NOT_AUTHORIZED,
            ClaimError::Busy => close::SID_IN_USE,
        }
    }
}

/// All sessions of this relay by id.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Mutex<HashMap<String, Entry>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock cannot leave the map half-updated (every update is
        // one insert or remove), so a poisoned lock is still safe to use.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new session as attached; returns the handle that detaches it.
    pub fn attach_new(&self, sid: &str, grant: Grant, credential: Credential) -> Arc<Detach> {
        let detach = Arc::new(Detach::default());
        self.lock().insert(
            sid.to_owned(),
            Entry {
                grant: Arc::new(grant),
                credential,
                slot: Slot::Attached(detach.clone()),
                parked: Arc::new(Notify::new()),
            },
        );
        detach
    }

    /// Every session with its grant and credential, for a reload to check.
    pub fn standings(&self) -> Vec<Standing> {
        self.lock()
            .iter()
            .map(|(sid, e)| Standing {
                sid: sid.clone(),
                grant: e.grant.clone(),
                credential: e.credential.clone(),
            })
            .collect()
    }

    /// Ends the sessions `doomed`: an attached one is told to close with 4033; a parked one
    /// is removed and returned for the audit log. Returns how many were attached.
    pub fn revoke(&self, doomed: &[String]) -> (usize, Vec<Parked>) {
        let mut entries = self.lock();
        let mut attached = 0;
        let mut parked = Vec::new();
        for sid in doomed {
            let Some(entry) = entries.remove(sid) else {
                continue;
            };
            match entry.slot {
                Slot::Attached(detach) => {
                    detach.request(close::NOT_AUTHORIZED);
                    attached += 1;
                }
                Slot::Parked { parked: p, .. } => parked.push(*p),
            }
        }
        (attached, parked)
    }

    /// Parks a session whose WebSocket was lost. Returns the generation to pass to
    /// [`expire`](Self::expire) when the resume window ends, or `None` when the session was
    /// revoked meanwhile (it is dropped).
    pub fn park(&self, parked: Parked) -> Option<u64> {
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut entries = self.lock();
        let sid = parked.info.sid.clone();
        // A session revoked while attached is gone from the map: it must not come back.
        let entry = entries.get_mut(&sid)?;
        entry.slot = Slot::Parked {
            parked: Box::new(parked),
            generation,
        };
        // A reconnect may be waiting for the old WebSocket to let go.
        entry.parked.notify_one();
        Some(generation)
    }

    /// Forgets a session that ended.
    pub fn remove(&self, sid: &str) {
        self.lock().remove(sid);
    }

    /// Removes and returns a session still parked since `generation` (its window ended).
    pub fn expire(&self, sid: &str, generation: u64) -> Option<Parked> {
        let mut entries = self.lock();
        match entries.get(sid).map(|e| &e.slot) {
            Some(Slot::Parked { generation: g, .. }) if *g == generation => {}
            _ => return None,
        }
        match entries.remove(sid).map(|e| e.slot) {
            Some(Slot::Parked { parked, .. }) => Some(*parked),
            _ => None,
        }
    }

    /// Removes and returns every parked session (the relay is shutting down).
    pub fn take_parked(&self) -> Vec<Parked> {
        let mut entries = self.lock();
        let parked: Vec<String> = entries
            .iter()
            .filter(|(_, e)| matches!(e.slot, Slot::Parked { .. }))
            .map(|(sid, _)| sid.clone())
            .collect();
        parked
            .iter()
            .filter_map(|sid| match entries.remove(sid).map(|e| e.slot) {
                Some(Slot::Parked { parked, .. }) => Some(*parked),
                _ => None,
            })
            .collect()
    }

    /// Takes session `sid` for `principal`, detaching it from a WebSocket that still holds it
    /// (the client has evidently given up on that one) and waiting up to `wait` for it to let
    /// go. On success `credential` becomes the session's credential.
    ///
    /// # Errors
    /// A [`ClaimError`]; a wrong principal leaves the session as it was.
    pub async fn claim(
        &self,
        sid: &str,
        principal: &str,
        credential: &Credential,
        wait: Duration,
    ) -> Result<(Parked, Arc<Detach>, Arc<Grant>), ClaimError> {
        let deadline = Instant::now() + wait;
        loop {
            let notify = {
                let mut entries = self.lock();
                let Some(entry) = entries.get_mut(sid) else {
                    return Err(ClaimError::Unknown);
                };
                if entry.grant.principal != principal {
                    return Err(ClaimError::WrongPrincipal);
                }
                let detach = Arc::new(Detach::default());
                match std::mem::replace(&mut entry.slot, Slot::Attached(detach.clone())) {
                    Slot::Parked { parked, .. } => {
                        entry.credential = credential.clone();
                        return Ok((*parked, detach, entry.grant.clone()));
                    }
                    Slot::Attached(current) => {
                        // Still attached: put it back and ask it to let go.
                        current.request(close::SID_IN_USE);
                        entry.slot = Slot::Attached(current);
                        entry.parked.clone()
                    }
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notify.notified()).await.is_err() {
                return Err(ClaimError::Busy);
            }
        }
    }

    /// Sessions known (attached or parked).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
