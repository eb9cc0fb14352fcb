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
pub mod ssh_config;
pub mod stdio;
pub mod tunnel;
pub mod user_config;

use std::path::{Path, PathBuf};

use crate::wire::{self, ClientIdentity};
use adc::{Library, TokenInfo};
use auth::Credentials;
use cache::TokenCache;
use destination::{Fallback, TargetArgs};
use dial::{Dialer, Endpoint};
use gcloud::GcloudRunner;
use gcloud_properties::GcloudProperties;
use proxy::Proxy;
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

/// What `--credentials` (or `--credentials-file`) asked for.
enum Wanted {
    Auto,
    Gcloud,
    Adc,
    File(PathBuf, &'static str),
}

/// The chosen source, before it is built.
enum Chosen {
    TokenFile(PathBuf, String),
    Gcloud(PathBuf),
    File(PathBuf, String),
    Metadata(String),
}

impl Options {
    /// Validates the options into a tunnel configuration. `env` reads environment variables
    /// (the library itself never touches the process environment).
    ///
    /// Credentials, first found wins: `--access-token-file`; `--credentials`/
    /// `--credentials-file`; `CLOUDSDK_AUTH_ACCESS_TOKEN_FILE`; gcloud's
    /// `auth/access_token_file`; the gcloud account (gcloud on `PATH` and an active account
    /// in its configuration), as `gcloud compute start-iap-tunnel` would use; then
    /// Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS`, the ADC file under
    /// `$CLOUDSDK_CONFIG`, `~/.config/gcloud/application_default_credentials.json`, the
    /// metadata server (only with `GCE_METADATA_HOST` or on a GCE VM, so nothing is probed
    /// elsewhere).
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
        let env_path = |name: &str| env(name).filter(|s| !s.is_empty()).map(PathBuf::from);
        let adc_env = env_path("GOOGLE_APPLICATION_CREDENTIALS");
        let wanted = match (&self.credentials, &self.credentials_file) {
            (Some(_), Some(_)) => {
                return Err(Error::usage(
                    "--credentials and --credentials-file are alternatives: give one",
                ));
            }
            (None, None) => Wanted::Auto,
            (None, Some(f)) => Wanted::File(f.clone(), "--credentials-file"),
            (Some(c), None) => match c.trim() {
                "gcloud" => Wanted::Gcloud,
                "adc" => Wanted::Adc,
                "" => {
                    return Err(Error::usage("--credentials needs gcloud, adc or a file"));
                }
                file => Wanted::File(PathBuf::from(file), "--credentials"),
            },
        };
        if self.access_token_file.is_some() && !matches!(wanted, Wanted::Auto) {
            return Err(Error::usage(
                "--access-token-file and --credentials are alternatives: give one",
            ));
        }
        let key_file = match &wanted {
            Wanted::File(f, _) => Some(f.clone()),
            _ => adc_env.clone(),
        };
        let mut fallback = Fallback::load(
            self.gcloud_config_dir.as_deref(),
            env("CLOUDSDK_ACTIVE_CONFIG_NAME").as_deref(),
            key_file.as_deref(),
        );
        let chosen = self.choose(&wanted, &fallback.gcloud, env, adc_env)?;

        // The proxy gcloud itself is told to use when --proxy overrides its settings.
        let flag_proxy = match self.proxy.as_deref().map(str::trim) {
            None | Some("" | "none") => None,
            Some(url) => Some(Proxy::parse(url).map_err(|e| e.context("--proxy"))?.url()),
        };
        let cache = self.token_cache_dir.clone().map(TokenCache::new);
        let mut gcloud_props = fallback.gcloud.clone();
        let credentials = match chosen {
            Chosen::TokenFile(path, how) => Credentials::access_token_file(path, &how),
            Chosen::Gcloud(program) => {
                let runner = GcloudRunner {
                    program,
                    proxy_override: flag_proxy,
                };
                let fingerprint = self.gcloud_fingerprint(env);
                let mut creds = Credentials::gcloud(
                    runner.clone(),
                    None,
                    &fingerprint,
                    fallback.gcloud.account.clone(),
                );
                if let Some(cache) = &cache {
                    creds = creds.with_cache(cache.clone());
                }
                // A cached answer carries gcloud's properties too: no gcloud run at all.
                let answer_props = match creds.load_cached() {
                    Some(cached) => cached
                        .properties
                        .and_then(|v| serde_json::from_value::<GcloudProperties>(v).ok()),
                    None => {
                        let answer = runner.run(false)?;
                        let props = answer.properties.clone();
                        creds = Credentials::gcloud(
                            runner,
                            Some(answer),
                            &fingerprint,
                            fallback.gcloud.account.clone(),
                        );
                        if let Some(cache) = &cache {
                            creds = creds.with_cache(cache.clone());
                        }
                        Some(props)
                    }
                };
                if let Some(props) = answer_props {
                    fallback.prefer_gcloud_answer(&props);
                    gcloud_props = props;
                }
                creds
            }
            Chosen::File(path, how) => {
                let library = Library::from_file(&path, &how)?;
                Credentials::library(library, None)
            }
            Chosen::Metadata(host) => Credentials::library(Library::metadata(&host), None),
        };

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
                    .unwrap_or_else(|| adc::DEFAULT_TOKENINFO_URL.to_owned());
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

    /// Picks the credential source (see [`into_config`](Self::into_config) for the order).
    fn choose(
        &self,
        wanted: &Wanted,
        gcloud: &GcloudProperties,
        env: &dyn Fn(&str) -> Option<String>,
        adc_env: Option<PathBuf>,
    ) -> Result<Chosen, Error> {
        if let Some(file) = &self.access_token_file {
            return Ok(Chosen::TokenFile(
                file.clone(),
                "--access-token-file".into(),
            ));
        }
        let env_token_file = env("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE").filter(|s| !s.is_empty());
        let mut looked_at = Vec::new();
        match wanted {
            Wanted::File(path, how) => return Ok(Chosen::File(path.clone(), (*how).to_owned())),
            Wanted::Gcloud => {
                return match &self.gcloud_program {
                    Some(p) => Ok(Chosen::Gcloud(p.clone())),
                    None => Err(Error::auth(
                        "--credentials gcloud: gcloud is not on PATH: install the Google Cloud SDK, or choose another source",
                    )),
                };
            }
            Wanted::Adc => {}
            Wanted::Auto => {
                if let Some(file) = env_token_file {
                    return Ok(Chosen::TokenFile(
                        file.into(),
                        "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE".into(),
                    ));
                }
                if let Some(file) = &gcloud.access_token_file {
                    return Ok(Chosen::TokenFile(
                        file.into(),
                        "gcloud property auth/access_token_file".into(),
                    ));
                }
                let account = env("CLOUDSDK_CORE_ACCOUNT")
                    .filter(|a| !a.is_empty())
                    .or(gcloud.account.clone());
                match (&self.gcloud_program, account) {
                    (Some(program), Some(account)) => {
                        tracing::info!(account = %account, "credentials: using the gcloud account");
                        return Ok(Chosen::Gcloud(program.clone()));
                    }
                    (Some(_), None) => {
                        looked_at.push("the gcloud account (none is active)".to_owned());
                    }
                    (None, _) => looked_at.push("gcloud (not on PATH)".to_owned()),
                }
            }
        }
        if let Some(path) = adc_env {
            return Ok(Chosen::File(path, "GOOGLE_APPLICATION_CREDENTIALS".into()));
        }
        looked_at.push("GOOGLE_APPLICATION_CREDENTIALS".to_owned());
        let candidates = [
            self.gcloud_config_dir
                .as_ref()
                .map(|d| d.join("application_default_credentials.json")),
            self.home_adc_file.clone(),
        ];
        for path in candidates.into_iter().flatten() {
            tracing::info!(file = %path.display(), "credentials: looking for an ADC file");
            if path.exists() {
                return Ok(Chosen::File(path, "gcloud's ADC file".into()));
            }
            let shown = path.display().to_string();
            if !looked_at.contains(&shown) {
                looked_at.push(shown);
            }
        }
        if let Some(host) = env("GCE_METADATA_HOST").filter(|h| !h.is_empty()) {
            return Ok(Chosen::Metadata(host));
        }
        if self.on_gce {
            return Ok(Chosen::Metadata("metadata.google.internal".into()));
        }
        looked_at.push("the metadata server (not a GCE VM, no GCE_METADATA_HOST)".to_owned());
        Err(Error::auth(format!(
            "no Google credentials found (looked at: {}): run `gcloud auth login` or `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, or pass --credentials FILE or --access-token-file",
            looked_at.join(", ")
        )))
    }

    /// What tells one gcloud setup from another: its folder, the active configuration's
    /// name and text, and every `CLOUDSDK_*` variable. A `gcloud config set` or a switch of
    /// account or configuration thus misses the cache and asks gcloud again.
    fn gcloud_fingerprint(&self, env: &dyn Fn(&str) -> Option<String>) -> Vec<u8> {
        let mut material = Vec::new();
        if let Some(dir) = &self.gcloud_config_dir {
            material.extend_from_slice(dir.as_os_str().as_encoded_bytes());
            material.push(0);
            let name = env("CLOUDSDK_ACTIVE_CONFIG_NAME")
                .filter(|n| !n.trim().is_empty())
                .or_else(|| std::fs::read_to_string(dir.join("active_config")).ok())
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".to_owned());
            material.extend_from_slice(name.as_bytes());
            material.push(0);
            let config = dir.join("configurations").join(format!("config_{name}"));
            if let Ok(text) = std::fs::read(config) {
                material.extend_from_slice(&text);
            }
            material.push(0);
        }
        for (k, v) in &self.cloudsdk_env {
            material.extend_from_slice(format!("{k}={v}\0").as_bytes());
        }
        material
    }
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
