//! The relay protocol's session: byte accounting ([`state`]), one WebSocket attachment's
//! decisions ([`attach`]), local ends ([`local`], and stdin/stdout in [`stdio`]) and the loop
//! that joins them to a WebSocket ([`pump`]). Shared by client and relay.

pub mod attach;
mod end;
mod inbound;
mod liveness;
pub mod local;
pub mod pump;
pub mod state;
pub mod stdio;
