//! The `iap-ssh` command under test: one builder for every test file.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{hermetic_env, iap_ssh_bin};
use super::relay::RelayEndpoint;

/// `iap-ssh` with a hermetic environment; derefs to its [`Command`] for the remaining args.
#[derive(Debug)]
pub struct IapSsh(Command, PathBuf);

/// `iap-ssh` with [`hermetic_env`] rooted at `state` (its caches, gcloud folder and config).
pub fn iap_ssh(state: &Path) -> IapSsh {
    let mut cmd = Command::new(iap_ssh_bin());
    hermetic_env(&mut cmd, state);
    IapSsh(cmd, state.to_owned())
}

impl IapSsh {
    /// `--endpoint URL`, and `--ca-file CA` when the relay serves TLS.
    pub fn relay(self, relay: &RelayEndpoint) -> Self {
        let this = self.endpoint(&relay.url);
        match &relay.pki {
            Some(pki) => this.ca_file(&pki.ca_pem),
            None => this,
        }
    }

    /// `--endpoint URL`.
    pub fn endpoint(mut self, url: &str) -> Self {
        self.0.args(["--endpoint", url]);
        self
    }

    /// `--ca-file PATH`.
    pub fn ca_file(mut self, path: &Path) -> Self {
        self.0.arg("--ca-file").arg(path);
        self
    }

    /// `--access-token-file PATH`.
    pub fn token_file(mut self, path: &Path) -> Self {
        self.0.arg("--access-token-file").arg(path);
        self
    }

    /// `HOME` in the state folder (`STATE/home`), for credentials read from there.
    pub fn home(mut self) -> Self {
        let home = self.1.join("home");
        std::fs::create_dir_all(&home).expect("creating HOME for iap-ssh");
        self.0.env("HOME", home);
        self
    }

    /// `IAP_SSH_TOKENINFO_URL`: a token-info stand-in instead of the closed port.
    pub fn tokeninfo_url(mut self, url: &str) -> Self {
        self.0.env("IAP_SSH_TOKENINFO_URL", url);
        self
    }

    /// The command, to add arguments and run.
    pub fn command(self) -> Command {
        self.0
    }
}

impl Deref for IapSsh {
    type Target = Command;
    fn deref(&self) -> &Command {
        &self.0
    }
}

impl DerefMut for IapSsh {
    fn deref_mut(&mut self) -> &mut Command {
        &mut self.0
    }
}

/// `GET path` over plain HTTP/1.1 (the relay's admin endpoint); the whole answer, or an empty
/// string when nothing listens.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    use std::time::Duration;
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The client library's dialer for `relay` (trusting its test CA when it serves TLS).
pub fn dialer(relay: &RelayEndpoint, user_agent: &str) -> iap_ssh::client::dial::Dialer {
    let ca = relay.pki.as_ref().map(|p| p.ca_pem.as_path());
    iap_ssh::client::dial::Dialer {
        endpoint: iap_ssh::client::dial::Endpoint::parse(&relay.url).expect("relay URL"),
        tls: iap_ssh::wire::tls_config(ca).expect("TLS settings for the test CA"),
        user_agent: user_agent.into(),
    }
}
