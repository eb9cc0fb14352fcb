//! The `iap-ssh` client: credentials, dialing, tunnels, and the stdio and listener modes.

pub mod adc;
pub mod auth;
pub mod cache;
pub mod check;
pub mod cli;
pub mod destination;
pub mod dial;
pub mod error;
pub mod gcloud;
pub mod gcloud_properties;
pub mod listen;
pub mod options;
pub mod proxy;
pub mod report;
pub mod source;
pub mod ssh_config;
pub mod stdio;
pub mod tokeninfo;
pub mod tunnel;
pub mod user_config;

use std::path::{Path, PathBuf};

use crate::wire::{self, ClientIdentity};
use auth::Credentials;
use cache::TokenCache;
use destination::{Fallback, TargetArgs};
use dial::{Dialer, Endpoint};
use proxy::Proxy;
use tokeninfo::TokenInfo;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tunnel::TunnelConfig;

pub use error::{Error, ExitKind};

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
    /// `--access-token-file`.
    pub access_token_file: Option<PathBuf>,
    /// `--credentials`: `gcloud`, `adc`, or a credentials file.
    pub credentials: Option<String>,
    /// `--credentials-file`: a credentials file of any type (same as `--credentials FILE`).
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
    /// The well-known ADC file, `~/.config/gcloud/application_default_credentials.json`
    /// (found by `main`; looked at after the one under `gcloud_config_dir`).
    pub home_adc_file: Option<PathBuf>,
    /// The `gcloud` program, when on `PATH` (found by `main`).
    pub gcloud_program: Option<PathBuf>,
    /// Every `CLOUDSDK_*` variable, sorted: part of what tells one gcloud setup from another
    /// for the token cache.
    pub cloudsdk_env: Vec<(String, String)>,
    /// Whether this machine says it is a Google Compute Engine VM (DMI product name), so the
    /// metadata server is worth asking.
    pub on_gce: bool,
    /// `--resume-timeout`: how long to keep trying to resume a lost tunnel.
    pub resume_timeout: Option<std::time::Duration>,
    /// `--request-reason`: sent as `X-Goog-Request-Reason` (else `CLOUDSDK_CORE_REQUEST_REASON`).
    pub request_reason: Option<String>,
    /// `--universe-domain`: the Google Cloud universe (else `CLOUDSDK_CORE_UNIVERSE_DOMAIN`;
    /// default `googleapis.com`). Another universe's relay is `tunnel-cloudproxy.<domain>`.
    pub universe_domain: Option<String>,
    /// The user's configuration file, when one was found. `main` has already let flags win
    /// over it for the plain settings; its project and zone go here, between the
    /// environment and gcloud's configuration.
    pub user_config: Option<user_config::Loaded>,
    /// Where the plain settings came from (`--flag` or the file), for `--check`.
    pub origins: Vec<(String, String)>,
}

/// The universe domain of Google's public cloud.
pub const DEFAULT_UNIVERSE_DOMAIN: &str = "googleapis.com";

/// The default relay endpoint for `universe` (gcloud's rule): Google's relay in the default
/// universe (its mTLS host when a client certificate is used), else
/// `wss://tunnel-cloudproxy.<universe>/v4`, which has no mTLS variant.
///
/// # Errors
/// A usage error when `universe` is not a domain name.
pub fn default_endpoint(universe: Option<&str>, mtls: bool) -> Result<String, Error> {
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
                return Err(Error::usage(format!(
                    "universe domain {domain:?} is not a domain name: give one such as {DEFAULT_UNIVERSE_DOMAIN} (--universe-domain or CLOUDSDK_CORE_UNIVERSE_DOMAIN)"
                )));
            }
            Ok(format!("wss://tunnel-cloudproxy.{domain}/v4"))
        }
    }
}

impl Options {
    /// Validates the options into a tunnel configuration. `env` reads environment variables
    /// (the library itself never touches the process environment). Credentials come from the
    /// first source found, in the order [`source`] gives.
    ///
    /// # Errors
    /// An [`Error`] naming the bad option, or the credential source that failed, and what
    /// to do.
    pub fn into_config(self, env: &dyn Fn(&str) -> Option<String>) -> Result<TunnelConfig, Error> {
        if self.port == 0 {
            return Err(Error::usage("PORT must be between 1 and 65535"));
        }
        // A mistyped HOST is reported as such, not hidden behind a credentials problem.
        destination::check_syntax(&self.target)?;
        let adc_env = env("GOOGLE_APPLICATION_CREDENTIALS")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let wanted = source::wanted(&self)?;
        let key_file = match &wanted {
            source::Wanted::File(f, _) => Some(f.clone()),
            _ => adc_env.clone(),
        };
        let mut fallback = Fallback::load(
            self.gcloud_config_dir.as_deref(),
            env("CLOUDSDK_ACTIVE_CONFIG_NAME").as_deref(),
            key_file.as_deref(),
        );
        let chosen = source::choose(&self, &wanted, &fallback.gcloud, env, adc_env)?;

        // The proxy gcloud itself is told to use when --proxy overrides its settings.
        let flag_proxy = match self.proxy.as_deref().map(str::trim) {
            None | Some("" | "none") => None,
            Some(url) => Some(Proxy::parse(url).map_err(|e| e.context("--proxy"))?.url()),
        };
        let cache = self.token_cache_dir.clone().map(TokenCache::new);
        let (credentials, gcloud_props) = source::build(
            &self,
            chosen,
            &mut fallback,
            env,
            flag_proxy,
            cache.as_ref(),
        )?;

        // The user's configuration file ranks below the environment (checked first by the
        // resolver) and above gcloud's configuration and the key file.
        if let Some(file) = &self.user_config {
            let label = file.label();
            if let Some(project) = file.get("project") {
                fallback.project = Some((project.to_owned(), label.clone()));
            }
            if let Some(zone) = file.get("zone") {
                fallback.zone = Some((zone.to_owned(), label.clone()));
            }
            fallback.looked_at.insert(0, label);
        }
        let (target, resolved_from) =
            destination::resolve_with_origins(&self.target, env, &fallback)?;
        let mut origins = self.origins.clone();
        origins.extend(resolved_from);
        let client = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(ClientIdentity { cert, key }),
            (None, None) => None,
            _ => {
                return Err(Error::usage(
                    "--client-cert and --client-key go together: give both or neither",
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
        let default_endpoint = default_endpoint(universe.as_deref(), client.is_some())?;
        let endpoint = Endpoint::parse(self.endpoint.as_deref().unwrap_or(&default_endpoint))?;
        // The flag, then the environment; the gcloud property core/request_reason belongs
        // after these.
        let request_reason = self
            .request_reason
            .clone()
            .or_else(|| env("CLOUDSDK_CORE_REQUEST_REASON"))
            .filter(|r| !r.is_empty())
            .map(|r| {
                HeaderValue::from_str(&r).map_err(|_| {
                    Error::usage(
                        "the request reason (--request-reason or CLOUDSDK_CORE_REQUEST_REASON) must be one line of text without control characters",
                    )
                })
            })
            .transpose()?;
        let gcloud_ca = gcloud_props
            .custom_ca_certs_file
            .as_ref()
            .map(PathBuf::from);
        let ca_files: Vec<&Path> = self
            .ca_file
            .as_deref()
            .into_iter()
            .chain(gcloud_ca.as_deref())
            .collect();
        let tls = wire::tls_config_with_client(&ca_files, client)
            .map_err(|e| Error::usage(format!("{e:#}")))?;
        let gcloud_proxy = gcloud_props.proxy_url()?;
        let proxy = Proxy::select_with_gcloud(
            self.proxy.as_deref(),
            gcloud_proxy.as_deref(),
            env,
            endpoint.host(),
        )?;
        // Token traffic follows the same choice; NO_PROXY (which names relay hosts) is left
        // to the HTTP client, per token host.
        let token_proxy =
            Proxy::select_with_gcloud(self.proxy.as_deref(), gcloud_proxy.as_deref(), env, "")?;
        let endpoint = endpoint.with_proxy(proxy);
        let credentials = match credentials.take_library() {
            Ok(library) => {
                let url = env("IAP_SSH_TOKENINFO_URL")
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| tokeninfo::DEFAULT_TOKENINFO_URL.to_owned());
                let info = TokenInfo::new(&url, token_proxy.as_ref(), tls.clone())?;
                let creds = Credentials::library(library, Some(info));
                match &cache {
                    Some(c) => creds.with_cache(c.clone()),
                    None => creds,
                }
            }
            Err(creds) => creds,
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
            token_proxy,
            origins,
        })
    }
}

#[cfg(test)]
mod tests;
