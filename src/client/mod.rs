//! The `iap-ssh` client: credentials, dialing, tunnels, and the stdio mode.

pub mod auth;
pub mod config;
pub mod dial;
pub mod stdio;
pub mod tunnel;

use std::path::PathBuf;

use crate::close::ExitKind;
use auth::Credentials;
use config::{Fallback, TargetArgs};
use dial::{Dialer, Endpoint};
use tunnel::{Failure, TunnelConfig};

/// The client's settings as the command line gives them, before validation.
#[derive(Debug, Default)]
pub struct Options {
    /// Destination as named on the command line.
    pub target: TargetArgs,
    /// Destination port.
    pub port: u16,
    /// `--endpoint`, or the default Google relay.
    pub endpoint: Option<String>,
    /// `--ca-file`: extra trusted CA certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// `--access-token-file` (or `CLOUDSDK_AUTH_ACCESS_TOKEN_FILE`).
    pub access_token_file: Option<PathBuf>,
    /// `--credentials-file`: a service-account key.
    pub credentials_file: Option<PathBuf>,
}

fn usage(message: String) -> Failure {
    Failure {
        kind: ExitKind::Usage,
        message,
    }
}

impl Options {
    /// Validates the options into a tunnel configuration. `env` reads environment variables
    /// (the library itself never touches the process environment).
    ///
    /// # Errors
    /// A usage [`Failure`] naming the bad option and what to do.
    pub fn into_config(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<TunnelConfig, Failure> {
        if self.port == 0 {
            return Err(usage("PORT must be between 1 and 65535".to_owned()));
        }
        let target = config::resolve(&self.target, env, &Fallback::default())
            .map_err(|e| usage(e.to_string()))?;
        let endpoint = Endpoint::parse(self.endpoint.as_deref().unwrap_or(dial::DEFAULT_ENDPOINT))
            .map_err(|e| usage(format!("{e:#}")))?;
        let tls = dial::tls_config(self.ca_file.as_deref()).map_err(|e| usage(format!("{e:#}")))?;
        let token_file = self.access_token_file.or_else(|| {
            env("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        });
        let credentials = match (token_file, self.credentials_file) {
            (Some(_), Some(_)) => {
                return Err(usage(
                    "--access-token-file and --credentials-file are alternatives: give one"
                        .to_owned(),
                ));
            }
            (Some(file), None) => Credentials::AccessTokenFile(file),
            (None, Some(key)) => Credentials::service_account(&key).map_err(|e| Failure {
                kind: ExitKind::Authentication,
                message: format!("{e:#}"),
            })?,
            (None, None) => Credentials::application_default(),
        };
        Ok(TunnelConfig {
            dialer: Dialer {
                endpoint,
                tls,
                user_agent: concat!("iap-ssh/", env!("CARGO_PKG_VERSION")).to_owned(),
            },
            target,
            port: self.port,
            credentials,
            resume: tunnel::ResumeSettings::default(),
        })
    }
}
