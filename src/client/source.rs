//! Which credential source a run uses, and building it.
//!
//! First found wins: `--access-token-file`; `--credentials`/`--credentials-file`;
//! `CLOUDSDK_AUTH_ACCESS_TOKEN_FILE`; gcloud's `auth/access_token_file`; the gcloud account
//! (gcloud on `PATH` and an active account in its configuration), as
//! `gcloud compute start-iap-tunnel` would use; then Application Default Credentials:
//! `GOOGLE_APPLICATION_CREDENTIALS`, the ADC file under `$CLOUDSDK_CONFIG`,
//! `~/.config/gcloud/application_default_credentials.json`, the metadata server (only with
//! `GCE_METADATA_HOST` or on a GCE VM, so nothing is probed elsewhere).

use std::path::PathBuf;

use super::Options;
use super::adc::Library;
use super::auth::Credentials;
use super::cache::TokenCache;
use super::destination::Fallback;
use super::error::Error;
use super::gcloud::GcloudRunner;
use super::gcloud_properties::GcloudProperties;

/// What `--credentials` (or `--credentials-file`) asked for.
pub enum Wanted {
    /// Neither: the first source found.
    Auto,
    /// `gcloud`: the gcloud account.
    Gcloud,
    /// `adc`: Application Default Credentials.
    Adc,
    /// A credentials file, and the flag that named it.
    File(PathBuf, &'static str),
}

/// The chosen source, before it is built.
pub enum Chosen {
    /// An access-token file, and what named it.
    TokenFile(PathBuf, String),
    /// The gcloud account, through this `gcloud` program.
    Gcloud(PathBuf),
    /// A credentials file, and what named it.
    File(PathBuf, String),
    /// The metadata server at this host.
    Metadata(String),
}

/// What `--credentials`, `--credentials-file` and `--access-token-file` ask for.
///
/// # Errors
/// A usage error when more than one is given, or `--credentials` is empty.
pub fn wanted(options: &Options) -> Result<Wanted, Error> {
    let wanted = match (&options.credentials, &options.credentials_file) {
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
    if options.access_token_file.is_some() && !matches!(wanted, Wanted::Auto) {
        return Err(Error::usage(
            "--access-token-file and --credentials are alternatives: give one",
        ));
    }
    Ok(wanted)
}

/// Picks the credential source, in the order the module documentation gives.
///
/// # Errors
/// An authentication error when `--credentials gcloud` finds no gcloud, or no source is
/// found at all (the message lists every place looked at).
pub fn choose(
    options: &Options,
    wanted: &Wanted,
    gcloud: &GcloudProperties,
    env: &dyn Fn(&str) -> Option<String>,
    adc_env: Option<PathBuf>,
) -> Result<Chosen, Error> {
    if let Some(file) = &options.access_token_file {
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
            return match &options.gcloud_program {
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
            match (&options.gcloud_program, account) {
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
        options
            .gcloud_config_dir
            .as_ref()
            .map(|d| d.join("application_default_credentials.json")),
        options.home_adc_file.clone(),
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
    if options.on_gce {
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
fn gcloud_fingerprint(options: &Options, env: &dyn Fn(&str) -> Option<String>) -> Vec<u8> {
    let mut material = Vec::new();
    if let Some(dir) = &options.gcloud_config_dir {
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
    for (k, v) in &options.cloudsdk_env {
        material.extend_from_slice(format!("{k}={v}\0").as_bytes());
    }
    material
}

/// Builds the `chosen` source. For the gcloud account this reads gcloud's answer (from the
/// token cache when it holds one, else by running gcloud once), whose project, zone and
/// other properties then go first in `fallback`; the gcloud properties in force are
/// returned with the credentials. `flag_proxy` is the proxy gcloud is told to use when
/// `--proxy` overrides its own settings.
///
/// # Errors
/// When gcloud fails or the credentials file cannot be used.
pub fn build(
    options: &Options,
    chosen: Chosen,
    fallback: &mut Fallback,
    env: &dyn Fn(&str) -> Option<String>,
    flag_proxy: Option<String>,
    cache: Option<&TokenCache>,
) -> Result<(Credentials, GcloudProperties), Error> {
    let mut gcloud_props = fallback.gcloud.clone();
    let credentials = match chosen {
        Chosen::TokenFile(path, how) => Credentials::access_token_file(path, &how),
        Chosen::Gcloud(program) => {
            let runner = GcloudRunner {
                program,
                proxy_override: flag_proxy,
            };
            let fingerprint = gcloud_fingerprint(options, env);
            let mut creds = Credentials::gcloud(
                runner.clone(),
                None,
                &fingerprint,
                fallback.gcloud.account.clone(),
            );
            if let Some(cache) = cache {
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
                    if let Some(cache) = cache {
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
    Ok((credentials, gcloud_props))
}
