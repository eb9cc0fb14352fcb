//! Shared harness for the integration tests, one job per module:
//!
//! - [`process`]: tools and CI policy, child processes ([`ChildGuard`], [`run_with_io`]),
//!   deadlines, the hermetic environment, shell quoting, /proc readings.
//! - [`files`]: hashes, random files, token files, audit lines.
//! - [`pki`]: a throw-away CA and server certificate made with rcgen.
//! - [`relay_spec`]: [`RelaySpec`], a typed relay.toml.
//! - [`relay`]: the relay as a subprocess ([`spawn_relay`]) or in this process
//!   ([`spawn_relay_in_process`]), and ssh's ProxyCommand for it.
//! - [`client`]: the `iap-ssh` command builder ([`iap_ssh`]).
//! - [`sshd`]: a real OpenSSH `sshd` on loopback and ssh command lines for it.
//! - [`oauth`]: a local OAuth token endpoint and service-account keys.
//! - [`backends`]: echo servers for the relay to dial.
//! - [`proxy`]: a real HTTP proxy (tinyproxy).
//!
//! Every child process is owned by a guard that kills it (by pid) on drop, every wait has a
//! deadline, and nothing binds anything but 127.0.0.1. Test files include this with
//! `mod common;` and use what they need, so unused items are allowed.
#![allow(dead_code, unused_imports)]

pub mod backends;
pub mod client;
pub mod files;
pub mod oauth;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod relay;
pub mod relay_spec;
pub mod sshd;

pub use backends::*;
pub use client::*;
pub use files::*;
pub use oauth::*;
pub use pki::*;
pub use process::*;
pub use proxy::*;
pub use relay::*;
pub use relay_spec::*;
pub use sshd::*;

/// Instance coordinates the tests use everywhere.
pub const PROJECT: &str = "test-proj";
/// Zone of the test instance.
pub const ZONE: &str = "test-zone-a";
/// Name of the test instance.
pub const INSTANCE: &str = "vm-1";
/// The IAP tunnel role named in bindings and in iap-ssh's 4033 message.
pub const TUNNEL_ROLE: &str = "roles/iap.tunnelResourceAccessor";

/// `INSTANCE.ZONE.PROJECT`, the dotted host name iap-ssh parses from ssh's `%h`.
pub fn dotted_host() -> String {
    format!("{INSTANCE}.{ZONE}.{PROJECT}")
}

/// The `/v4/connect` query for `port` on the test instance's nic0.
pub fn connect_query(port: u16) -> String {
    format!(
        "project={PROJECT}&port={port}&newWebsocket=True&zone={ZONE}&instance={INSTANCE}&interface=nic0"
    )
}
