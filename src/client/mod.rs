//! The `iap-ssh` client: credentials, dialing, tunnels, and the stdio and listener modes.

pub mod auth;
pub mod cache;
pub mod check;
pub mod config;
pub mod dial;
pub mod listen;
pub mod proxy;
pub mod report;
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
use tokio_tungstenite::tungstenite::http::HeaderValue;
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
    /// `--request-reason`: sent as `X-Goog-Request-Reason` (else `CLOUDSDK_CORE_REQUEST_REASON`).
    pub request_reason: Option<String>,
    /// `--universe-domain`: the Google Cloud universe (else `CLOUDSDK_CORE_UNIVERSE_DOMAIN`;
    /// default `googleapis.com`). Another universe's relay is `tunnel-cloudproxy.<domain>`.
    pub universe_domain: Option<String>,
}

/// The universe domain of Google's public cloud.
pub const DEFAULT_UNIVERSE_DOMAIN: &str = "googleapis.com";

/// The default relay endpoint for `universe` (gcloud's rule): Google's relay in the default
/// universe (its mTLS host when a client certificate is used), else
/// `wss://tunnel-cloudproxy.<universe>/v4`, which has no mTLS variant.
///
/// # Errors
/// When `universe` is not a domain name.
pub fn default_endpoint(universe: Option<&str>, mtls: bool) -> Result<String, String> {
    match universe {
        None | Some(DEFAULT_UNIVERSE_DOMAIN) => Ok(if mtls {
            dial::DEFAULT_MTLS_ENDPOINT
        } else {
            dial::DEFAULT_ENDPOINT
        }
        .to_owned()),
        Some(domain) => {
            let label_ok = |l: &str| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            };
            if domain.len() > 253 || !domain.split('.').all(label_ok) {
                return Err(format!(
                    "universe domain {domain:?} is not a domain name: give one such as {DEFAULT_UNIVERSE_DOMAIN} (--universe-domain or CLOUDSDK_CORE_UNIVERSE_DOMAIN)"
                ));
            }
            Ok(format!("wss://tunnel-cloudproxy.{domain}/v4"))
        }
    }
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
        // First found wins: the flag, then the environment. The gcloud property
        // core/universe_domain of the active configuration belongs after these.
        let universe = self
            .universe_domain
            .clone()
            .or_else(|| env("CLOUDSDK_CORE_UNIVERSE_DOMAIN"))
            .filter(|u| !u.is_empty());
        // gcloud switches to the mTLS relay when a device certificate is in use.
        let default_endpoint =
            default_endpoint(universe.as_deref(), client.is_some()).map_err(usage)?;
        let endpoint = Endpoint::parse(self.endpoint.as_deref().unwrap_or(&default_endpoint))
            .map_err(|e| usage(format!("{e:#}")))?;
        // The flag, then the environment; the gcloud property core/request_reason belongs
        // after these.
        let request_reason = self
            .request_reason
            .clone()
            .or_else(|| env("CLOUDSDK_CORE_REQUEST_REASON"))
            .filter(|r| !r.is_empty())
            .map(|r| {
                HeaderValue::from_str(&r).map_err(|_| {
                    usage(
                        "the request reason (--request-reason or CLOUDSDK_CORE_REQUEST_REASON) must be one line of text without control characters"
                            .to_owned(),
                    )
                })
            })
            .transpose()?;
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
            request_reason,
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
    fn universe_domain_picks_the_relay_host() {
        let dir = tempfile::tempdir().unwrap();
        let no_env = |_: &str| None;
        let host = |o: Options, env: &dyn Fn(&str) -> Option<String>| {
            o.into_config(env).map(|c| c.dialer.endpoint.authority())
        };
        let with = |u: &str| Options {
            universe_domain: Some(u.to_owned()),
            ..options(dir.path())
        };
        assert_eq!(
            host(with("googleapis.com"), &no_env).unwrap(),
            "tunnel.cloudproxy.app:443"
        );
        assert_eq!(
            host(with("example-cloud.eu"), &no_env).unwrap(),
            "tunnel-cloudproxy.example-cloud.eu:443"
        );
        let env = |k: &str| (k == "CLOUDSDK_CORE_UNIVERSE_DOMAIN").then(|| "u.example".to_owned());
        assert_eq!(
            host(options(dir.path()), &env).unwrap(),
            "tunnel-cloudproxy.u.example:443"
        );
        // The flag wins over the environment, and --endpoint over both.
        assert_eq!(
            host(with("googleapis.com"), &env).unwrap(),
            "tunnel.cloudproxy.app:443"
        );
        let explicit = Options {
            endpoint: Some("wss://relay.example".into()),
            ..with("u.example")
        };
        assert_eq!(host(explicit, &no_env).unwrap(), "relay.example:443");
        for bad in ["a..b", "-x.com", "x y", "x/y", "x.com:80"] {
            let err = with(bad).into_config(&no_env).unwrap_err();
            assert_eq!(err.kind, ExitKind::Usage, "{bad}");
            assert!(
                err.message.contains("is not a domain name"),
                "{}",
                err.message
            );
        }
        assert_eq!(
            default_endpoint(Some("u.example"), true).unwrap(),
            "wss://tunnel-cloudproxy.u.example/v4",
            "no mTLS host outside the default universe, as in gcloud"
        );
    }

    #[test]
    fn request_reason_comes_from_the_flag_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let env = |k: &str| (k == "CLOUDSDK_CORE_REQUEST_REASON").then(|| "from env".to_owned());
        let reason = |o: Options, env: &dyn Fn(&str) -> Option<String>| {
            o.into_config(env).map(|c| {
                c.request_reason
                    .map(|v| v.to_str().unwrap_or("?").to_owned())
            })
        };
        assert_eq!(reason(options(dir.path()), &|_| None).unwrap(), None);
        assert_eq!(
            reason(options(dir.path()), &env).unwrap().as_deref(),
            Some("from env")
        );
        let flag = Options {
            request_reason: Some("ticket 42".into()),
            ..options(dir.path())
        };
        assert_eq!(reason(flag, &env).unwrap().as_deref(), Some("ticket 42"));
        let bad = Options {
            request_reason: Some("two\nlines".into()),
            ..options(dir.path())
        };
        let err = bad.into_config(&|_| None).unwrap_err();
        assert_eq!(err.kind, ExitKind::Usage);
        assert!(err.message.contains("request reason"), "{}", err.message);
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
