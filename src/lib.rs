//! SSH (or any TCP) through Google Cloud's Identity-Aware Proxy TCP forwarding, and a
//! self-hosted relay that speaks the same protocol.
//!
//! # Layout
//!
//! Pure protocol logic, no I/O:
//! - [`frame`]: relay messages, encode and decode.
//! - [`close`]: close codes, reason texts, exit statuses, user messages.
//! - [`target`]: destinations, HOST parsing, connect/reconnect query strings.
//! - [`session::state`]: byte counts, the resend buffer, when to ACK, resume arithmetic.
//! - [`session::attach`]: one WebSocket attachment's decisions: what to send, when to wake
//!   (ACK timer, keepalive, EOF and close waits), when to stop.
//! - [`wire`]: what both ends share: the subprotocol, WebSocket limits, TLS client settings.
//!
//! I/O:
//! - [`session::pump`]: joins a local byte stream and a WebSocket, doing what
//!   [`session::attach`] decides.
//! - [`client`]: credentials, TLS dial, tunnels, stdio mode (`iap-ssh`).
//! - [`relay`]: the server (`iap-relay`): configuration, authentication, policy, inventory;
//!   a connection runs [`relay::serve`] (accept, drain, reload) → handshake (TLS, the
//!   upgrade on hyper's server, authentication, admission) → connect ([`relay::locate`],
//!   pure, then dial) or resume → attach (the pump and the session's timers), each outcome
//!   written once by report. One HTTP stack, hyper, for the upgrade, the admin endpoint and
//!   [`relay::outbound`] lookups.
//!
//! Data flow in stdio mode: stdin thread → DATA message built in place → WebSocket →
//! relay → backend TCP; and back: WebSocket → payload slice (no copy) → stdout thread.

pub mod client;
pub mod close;
pub mod frame;
pub mod logging;
pub mod relay;
pub mod session;
pub mod signals;
pub mod target;
pub mod wire;
