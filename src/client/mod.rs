//! The `iap-ssh` client: credentials, dialing, tunnels, and the stdio and listener modes.

pub mod auth;
pub mod cache;
pub mod check;
pub mod config;
pub mod dial;
pub mod listen;
pub mod proxy;
pub mod ssh_config;
pub mod stdio;
pub mod tunnel;

use std::path::PathBuf;

use crate::close::ExitKind;
use auth::{Credentials, KeyFileInfo};
use cache::TokenCache;
use config::{Fallback, TargetArgs};
use dial::{ClientIdentity, Dialer, Endpoint};
use proxy::Proxy;
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
    /// `--client-cert`: PEM certificate chain for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// `--client-key`: PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// `--proxy`: an HTTP proxy URL (empty or `none`: no proxy); else `HTTPS_PROXY`.
    pub proxy: Option<String>,
    /// The token cache folder (`$XDG_CACHE_HOME/iap-ssh` or `~/.cache/iap-ssh`, found by
    /// `main`); `None` turns the cache off.
    pub token_cache_dir: Option<PathBuf>,
    /// gcloud's configuration folder (`$CLOUDSDK_CONFIG` or `~/.config/gcloud`, found by
    /// `main`), for project and zone fallbacks and ADC files.
    pub gcloud_config_dir: Option<PathBuf>,
    /// `--resume-timeout`: how long to keep trying to resume a lost tunnel.
    pub resume_timeout: Option<std::time::Duration>,
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
        let env_path = |name: &str| env(name).filter(|s| !s.is_empty()).map(PathBuf::from);
        let adc_key = env_path("GOOGLE_APPLICATION_CREDENTIALS");
        let key_file = self.credentials_file.clone().or_else(|| adc_key.clone());
        let fallback = Fallback::load(
            self.gcloud_config_dir.as_deref(),
            env("CLOUDSDK_ACTIVE_CONFIG_NAME").as_deref(),
            key_file.as_deref(),
        );
        let target =
            config::resolve(&self.target, env, &fallback).map_err(|e| usage(e.to_string()))?;
        let client = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(ClientIdentity { cert, key }),
            (None, None) => None,
            _ => {
                return Err(usage(
                    "--client-cert and --client-key go together: give both or neither".to_owned(),
                ));
            }
        };
        // gcloud switches to the mTLS relay when a device certificate is in use.
        let default_endpoint = match client {
            Some(_) => dial::DEFAULT_MTLS_ENDPOINT,
            None => dial::DEFAULT_ENDPOINT,
        };
        let endpoint = Endpoint::parse(self.endpoint.as_deref().unwrap_or(default_endpoint))
            .map_err(|e| usage(format!("{e:#}")))?;
        let tls = dial::tls_config_with_client(self.ca_file.as_deref(), client)
            .map_err(|e| usage(format!("{e:#}")))?;
        let proxy = Proxy::select(self.proxy.as_deref(), env, endpoint.host()).map_err(usage)?;
        let endpoint = endpoint.with_proxy(proxy);
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
            (Some(file), None) => Credentials::access_token_file(file),
            (None, Some(key)) => Credentials::service_account(&key).map_err(|e| Failure {
                kind: ExitKind::Authentication,
                message: format!("{e:#}"),
            })?,
            (None, None) => {
                let (fingerprint, email) =
                    adc_fingerprint(adc_key.as_deref(), self.gcloud_config_dir.as_deref());
                Credentials::application_default(&fingerprint, email)
            }
        };
        let credentials = match self.token_cache_dir {
            Some(dir) => credentials.with_cache(TokenCache::new(dir)),
            None => credentials,
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
            resume: tunnel::ResumeSettings {
                budget: self
                    .resume_timeout
                    .unwrap_or(tunnel::ResumeSettings::default().budget),
                ..tunnel::ResumeSettings::default()
            },
        })
    }
}

/// What tells one Application Default Credentials setup from another, for the token cache:
/// the contents of the files gcp_auth would read (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's
/// ADC file) and of the active gcloud configuration (its account). Also the identity, when a
/// key file names it.
fn adc_fingerprint(
    adc_key: Option<&std::path::Path>,
    gcloud_dir: Option<&std::path::Path>,
) -> (Vec<u8>, Option<String>) {
    let mut material = Vec::new();
    let mut email = None;
    let mut add = |label: &str, path: &std::path::Path| {
        material.extend_from_slice(label.as_bytes());
        material.extend_from_slice(path.as_os_str().as_encoded_bytes());
        if let Ok(text) = std::fs::read_to_string(path) {
            let hash = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
            material.extend_from_slice(hash.as_ref());
            if email.is_none() {
                email = KeyFileInfo::parse(&text).and_then(|k| k.client_email);
            }
        }
        material.push(0);
    };
    if let Some(key) = adc_key {
        add("gac", key);
    }
    if let Some(dir) = gcloud_dir {
        add("adc", &dir.join("application_default_credentials.json"));
        let name = std::fs::read_to_string(dir.join("active_config")).unwrap_or_default();
        let name = match name.trim() {
            "" => "default",
            n => n,
        };
        add(
            "cfg",
            &dir.join("configurations").join(format!("config_{name}")),
        );
    }
    (material, email)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &std::path::Path) -> Options {
        Options {
            target: TargetArgs {
                host: "vm.z.p".into(),
                ..Default::default()
            },
            port: 22,
            access_token_file: Some(dir.join("token")),
            ..Default::default()
        }
    }

    #[test]
    fn a_client_certificate_switches_the_default_endpoint_to_mtls() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["device".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_pem, key_pem) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_pem, cert.pem()).unwrap();
        std::fs::write(&key_pem, key.serialize_pem()).unwrap();
        let no_env = |_: &str| None;

        let plain = options(dir.path()).into_config(&no_env).unwrap();
        assert_eq!(
            plain.dialer.endpoint,
            Endpoint::parse(dial::DEFAULT_ENDPOINT).unwrap()
        );
        let mtls = Options {
            client_cert: Some(cert_pem.clone()),
            client_key: Some(key_pem.clone()),
            ..options(dir.path())
        }
        .into_config(&no_env)
        .unwrap();
        assert_eq!(
            mtls.dialer.endpoint,
            Endpoint::parse(dial::DEFAULT_MTLS_ENDPOINT).unwrap()
        );
        // An explicit --endpoint still wins.
        let custom = Options {
            client_cert: Some(cert_pem),
            client_key: Some(key_pem),
            endpoint: Some("wss://relay.example".into()),
            ..options(dir.path())
        }
        .into_config(&no_env)
        .unwrap();
        assert_eq!(custom.dialer.endpoint.authority(), "relay.example:443");
    }

    #[test]
    fn proxy_settings_reach_the_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let env = |k: &str| (k == "HTTPS_PROXY").then(|| "http://proxy.corp:3128".to_owned());
        let config = options(dir.path()).into_config(&env).unwrap();
        let proxy = config.dialer.endpoint.proxy().map(Proxy::authority);
        assert_eq!(proxy.as_deref(), Some("proxy.corp:3128"));
        let err = Options {
            proxy: Some("socks5://h".into()),
            ..options(dir.path())
        }
        .into_config(&env)
        .unwrap_err();
        assert_eq!(err.kind, ExitKind::Usage);
        assert!(err.message.starts_with("--proxy: "), "{}", err.message);
    }
}
