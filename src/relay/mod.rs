//! The `iap-relay` server: configuration, authentication, policy, inventory, and the server
//! loop that joins clients to backends.

pub mod authn;
pub mod config;
pub mod inventory;
pub mod policy;
pub mod server;
pub mod sessions;
