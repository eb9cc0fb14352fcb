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
//! - [`wire`]: what both ends share: the subprotocol, WebSocket limits, TLS client settings.
//!
//! I/O:
//! - [`session::pump`]: joins a local byte stream and a WebSocket, driven by the state.
//! - [`client`]: credentials, TLS dial, tunnels, stdio mode (`iap-ssh`).
//! - [`relay`]: configuration, authentication, policy, inventory, server (`iap-relay`).
//!
//! Data flow in stdio mode: stdin (read by the runtime, or a thread for terminals and files) →
//! DATA message built in place → WebSocket → relay → backend TCP; and back: WebSocket →
//! payload slice (no copy) → stdout.

pub mod client;
pub mod close;
pub mod frame;
pub mod logging;
pub mod relay;
pub mod session;
pub mod signals;
pub mod target;
pub mod wire;
