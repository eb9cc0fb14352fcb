//! The `iap-relay` server: configuration, authentication, policy, inventory, and the server
//! that joins clients to backends.
//!
//! A connection's life is a short chain, one module each: [`serve`] accepts it, `handshake`
//! turns it into an authenticated caller (the request served by hyper through [`upgrade`],
//! the client's address from [`forwarded`]), `connect` opens a session (asking [`locate`]
//! where the target leads and `dial` to reach it) or `resume` takes one back, `attach` runs
//! the attachment with its timers, and `report` records every outcome.

pub mod admin;
pub mod admission;
mod attach;
pub mod audit;
pub mod authn;
pub mod check;
pub mod config;
mod connect;
mod dial;
pub mod forwarded;
mod handshake;
pub mod init;
pub mod inventory;
pub mod jwt;
pub mod locate;
pub mod metrics;
pub mod outbound;
pub mod policy;
mod report;
mod resume;
pub mod serve;
pub mod sessions;
mod state;
pub mod throttle;
pub mod tls;
pub mod tokeninfo;
pub mod upgrade;
pub mod watch;
