//! The `iap-relay` server: configuration, authentication, policy, inventory, and the server
//! loop that joins clients to backends.

pub mod admin;
pub mod admission;
pub mod audit;
pub mod authn;
pub mod check;
pub mod config;
pub mod http;
pub mod init;
pub mod inventory;
pub mod jwt;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod sessions;
pub mod throttle;
pub mod tls;
pub mod tokeninfo;
pub mod upgrade;
pub mod watch;
