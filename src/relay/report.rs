//! What the relay says about what happened: every outcome worth recording becomes its log
//! line, its audit line and its counters here, in one place, so the three cannot disagree.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::audit::Event;
use super::authn::AuthError;
use super::handshake::Caller;
use super::serve::Relay;
use super::sessions::{ClaimError, Parked, SessionInfo};
use crate::close;

/// Something that happened to a connection or a session.
pub(super) enum Outcome<'a> {
    /// A new connection was closed at once: its address holds too many unfinished handshakes.
    HandshakesPerAddress { peer: SocketAddr, limit: usize },
    /// A connection sent nothing within the first-byte limit.
    Silent { timeout: Duration },
    /// The upgrade request was answered with an HTTP error before any check of who sent it.
    UpgradeRefused {
        client: IpAddr,
        status: u16,
        reason: &'a str,
    },
    /// The bearer token was not accepted (401).
    AuthFailed {
        client: IpAddr,
        error: &'a AuthError,
    },
    /// An authenticated caller asked for a new tunnel over its principal's limit (429).
    OverPrincipalLimit { client: IpAddr, principal: &'a str },
    /// A new tunnel did not fit the relay's memory budget (503).
    OverMemoryBudget {
        client: IpAddr,
        principal: &'a str,
        reserved: usize,
    },
    /// A reload during the handshake stopped accepting the caller's credential.
    RevokedInHandshake { caller: &'a Caller },
    /// A new tunnel was refused after the upgrade, with close `code`.
    Denied {
        caller: &'a Caller,
        target: &'a str,
        port: u16,
        code: u16,
        reason: &'a str,
        result: &'static str,
    },
    /// A new session was opened.
    Connected {
        caller: &'a Caller,
        info: &'a SessionInfo,
        binding: &'a str,
    },
    /// A reconnect could not take its session.
    ReconnectRefused {
        caller: &'a Caller,
        sid: &'a str,
        error: ClaimError,
    },
    /// A session was resumed on a new WebSocket.
    Reconnected {
        caller: &'a Caller,
        info: &'a SessionInfo,
        client_has: u64,
        relay_has: u64,
        resent_bytes: u64,
    },
    /// The client stopped acknowledging (see `watch::Stall`).
    Stalled {
        info: &'a SessionInfo,
        unacked: u64,
        stalled: Duration,
    },
    /// A session ended with close `code`; `result` is its counter's label.
    Closed {
        parked: &'a Parked,
        code: u16,
        detail: &'a str,
        result: &'static str,
    },
}

/// The audit reason of a refusal over the principal's limit.
const OVER_PRINCIPAL_LIMIT: &str = "too many tunnels for this principal";
/// The audit reason of a refusal over the memory budget.
const OVER_MEMORY_BUDGET: &str = "relay memory budget reached";
/// The audit reason of a caller whose credential a reload revoked mid-handshake.
const REVOKED_IN_HANDSHAKE: &str = "credential revoked by reload during the handshake";

/// The audit line of a session: who, to what, which session.
fn session_event<'a>(event: &'a str, info: &'a SessionInfo) -> Event<'a> {
    Event {
        event,
        principal: Some(&info.principal),
        target: Some(&info.target),
        port: Some(info.port),
        sid: Some(&info.sid),
        ..Event::default()
    }
}

/// The audit line of a caller: who, how authenticated, from where.
fn caller_event<'a>(event: &'a str, caller: &'a Caller) -> Event<'a> {
    Event {
        event,
        principal: Some(&caller.identity.principal),
        auth: Some(caller.identity.method),
        client: Some(caller.client),
        ..Event::default()
    }
}

/// The audit line of an authenticated caller refused at the upgrade.
fn refusal<'a>(principal: &'a str, client: IpAddr, reason: &'a str) -> Event<'a> {
    Event {
        event: "deny",
        principal: Some(principal),
        client: Some(client),
        reason: Some(reason),
        ..Event::default()
    }
}

impl Relay {
    /// Logs, audits and counts `outcome`.
    pub(super) fn report(&self, outcome: Outcome<'_>) {
        let metrics = &self.metrics;
        let upgrade_refused = |client: IpAddr, status: u16, reason: &str| {
            info!(%client, status, reason, "upgrade refused");
        };
        match outcome {
            Outcome::HandshakesPerAddress { peer, limit } => {
                metrics.refused("handshakes_per_address");
                debug!(%peer, limit, "too many unfinished handshakes from this address");
            }
            Outcome::Silent { timeout } => {
                // Debug, not info: under a flood of silent sockets one line each would turn
                // the attack into log volume. The metric counts them.
                metrics.refused("silent");
                debug!(
                    timeout_secs = timeout.as_secs(),
                    "no first byte in time; connection dropped"
                );
            }
            Outcome::UpgradeRefused {
                client,
                status,
                reason,
            } => upgrade_refused(client, status, reason),
            Outcome::AuthFailed { client, error } => {
                metrics.auth_failed(error.reason());
                self.audit.record(&Event {
                    event: "auth_failure",
                    client: Some(client),
                    reason: Some(&error.to_string()),
                    ..Event::default()
                });
                upgrade_refused(client, 401, error.reason());
            }
            Outcome::OverPrincipalLimit { client, principal } => {
                metrics.refused("over_principal_limit");
                let event = refusal(principal, client, OVER_PRINCIPAL_LIMIT);
                self.audit.record(&event);
                upgrade_refused(client, 429, OVER_PRINCIPAL_LIMIT);
            }
            Outcome::OverMemoryBudget {
                client,
                principal,
                reserved,
            } => {
                metrics.refused("memory_budget");
                warn!(
                    reserved_mib = reserved / (1024 * 1024),
                    "{OVER_MEMORY_BUDGET}; new tunnel refused"
                );
                self.audit
                    .record(&refusal(principal, client, OVER_MEMORY_BUDGET));
                upgrade_refused(client, 503, OVER_MEMORY_BUDGET);
            }
            Outcome::RevokedInHandshake { caller } => {
                let principal = &caller.identity.principal;
                metrics.refused("revoked");
                info!(%principal, reason = REVOKED_IN_HANDSHAKE, "refused");
                self.audit.record(&Event {
                    code: Some(close::NOT_AUTHORIZED),
                    ..refusal(principal, caller.client, REVOKED_IN_HANDSHAKE)
                });
            }
            Outcome::Denied {
                caller,
                target,
                port,
                code,
                reason,
                result,
            } => {
                metrics.refused(result);
                let principal = &caller.identity.principal;
                info!(%principal, %target, %reason, code, "refused");
                self.audit.record(&Event {
                    target: Some(target),
                    port: Some(port),
                    reason: Some(reason),
                    code: Some(code),
                    ..caller_event("deny", caller)
                });
            }
            Outcome::Connected {
                caller,
                info,
                binding,
            } => {
                metrics.handshake(caller.accepted.elapsed());
                metrics.session_opened();
                let principal = &info.principal;
                info!(%principal, target = %info.target, %binding, sid = %info.sid, "connect");
                self.audit.record(&Event {
                    binding: Some(binding),
                    ..caller_event("connect", caller).with_session(info)
                });
            }
            Outcome::ReconnectRefused { caller, sid, error } => {
                let principal = &caller.identity.principal;
                let code = error.close_code();
                info!(%principal, sid = %sid, code, reason = ?error, "reconnect refused");
                self.audit.record(&Event {
                    event: "reconnect_refused",
                    principal: Some(principal),
                    client: Some(caller.client),
                    sid: Some(sid),
                    reason: Some(&format!("{error:?}")),
                    code: Some(code),
                    ..Event::default()
                });
            }
            Outcome::Reconnected {
                caller,
                info,
                client_has,
                relay_has,
                resent_bytes,
            } => {
                let principal = &info.principal;
                info!(%principal, sid = %info.sid, resumes = info.resumes, client_has, relay_has, resent_bytes, "reconnect");
                self.audit.record(&Event {
                    resumes: Some(info.resumes),
                    ..caller_event("reconnect", caller).with_session(info)
                });
            }
            Outcome::Stalled {
                info,
                unacked,
                stalled,
            } => {
                metrics.stalled();
                warn!(sid = %info.sid, principal = %info.principal, target = %info.target, unacked, stalled_secs = stalled.as_secs(), "client stopped acknowledging; the session cannot go on until it does");
                let reason = format!(
                    "no ACK from the client for {} s with {unacked} bytes unacknowledged",
                    stalled.as_secs()
                );
                self.audit.record(&Event {
                    reason: Some(&reason),
                    ..session_event("stall", info)
                });
            }
            Outcome::Closed {
                parked,
                code,
                detail,
                result,
            } => {
                let info = &parked.info;
                let (from, to) = (parked.session.state.received(), parked.session.state.sent());
                metrics.session_closed(result, from, to);
                let duration = info.started.elapsed().as_millis() as u64;
                info!(principal = %info.principal, target = %info.target, sid = %info.sid, code, detail = %detail, resumes = info.resumes, bytes_from_client = from, bytes_to_client = to, duration_ms = duration, "close");
                self.audit.record(&Event {
                    reason: Some(detail),
                    code: Some(code),
                    bytes_from_client: Some(from),
                    bytes_to_client: Some(to),
                    duration_ms: Some(duration),
                    resumes: Some(info.resumes),
                    ..session_event("close", info)
                });
            }
        }
    }
}

impl<'a> Event<'a> {
    /// This event with the session's target, port and id.
    fn with_session(self, info: &'a SessionInfo) -> Event<'a> {
        Event {
            target: Some(&info.target),
            port: Some(info.port),
            sid: Some(&info.sid),
            ..self
        }
    }
}
