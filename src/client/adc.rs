//! Application Default Credentials through Google's `google-cloud-auth` crate: every shape of
//! credentials file gcloud writes or accepts (service-account key, `authorized_user`,
//! `impersonated_service_account`, `external_account` with file, URL or executable subject
//! tokens, `external_account_authorized_user`) and the metadata server.
//!
//! The crate hands out the token but not its expiry, which our cross-process disk cache needs.
//! So after each fresh token we ask Google's token-info endpoint once (the same question a
//! relay asks) and keep its `exp`. When that fails the token is used but not cached: an
//! hour is never guessed.
//!
//! The crate builds its own HTTP clients, which take proxies from `HTTPS_PROXY`/`HTTP_PROXY`
//! and `NO_PROXY` only (its metadata-server client never uses one); `main` makes the process
//! environment say what `--proxy` and gcloud's `proxy/*` properties chose.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use google_cloud_auth::credentials::{
    AccessTokenCredentials, external_account, external_account_authorized_user, impersonated, mds,
    user_account,
};
use serde_json::Value;

use super::auth::{SCOPES, Token};
use super::error::Error;

/// Credentials file types we read, for messages.
const KNOWN_TYPES: &str = "service_account, authorized_user, impersonated_service_account, external_account, external_account_authorized_user";

/// Where the library's credentials come from.
#[derive(Clone, Debug)]
pub enum Origin {
    /// A credentials file; `how` says how it was found (`--credentials`,
    /// `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's ADC file).
    File {
        /// The file.
        path: PathBuf,
        /// How it was found.
        how: String,
        /// Its `type`.
        kind: String,
    },
    /// The metadata server at `host` (`GCE_METADATA_HOST`, or the default).
    Metadata {
        /// `GCE_METADATA_HOST` or `metadata.google.internal`.
        host: String,
    },
}

/// A source backed by `google-cloud-auth`.
#[derive(Debug)]
pub struct Library {
    origin: Origin,
    json: Option<Value>,
    /// Built on first use and dropped after a refusal: the library keeps its token in memory
    /// until it expires, so only a new instance fetches a new one.
    creds: Mutex<Option<Built>>,
    /// The principal the file names (client email, impersonation target), if any.
    named_principal: Option<String>,
}

/// A built credential: google-cloud-auth, or gcp_auth for service-account keys.
///
/// google-cloud-auth turns a service-account key into a self-signed JWT used as the bearer
/// token, with no call to the key's `token_uri`. gcloud (and the IAP relay it talks to) use an
/// OAuth access token from `token_uri` instead; self-signed JWTs are refused by some Google
/// services (googleapis/google-cloud-rust#4024) and IAP does not document them, so keys go
/// through gcp_auth's JWT-bearer exchange, which also tells the token's expiry. gcp_auth has
/// no proxy support: key token fetches go direct.
#[derive(Clone)]
enum Built {
    Google(AccessTokenCredentials),
    Key(Arc<gcp_auth::CustomServiceAccount>),
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Built::Google(_) => "Built::Google",
            Built::Key(_) => "Built::Key",
        })
    }
}

impl Library {
    /// Credentials from a file of any supported type.
    ///
    /// # Errors
    /// An authentication error naming the file and, when it has one, its type: unreadable,
    /// not JSON, an unknown type, or fields the library needs are missing.
    pub fn from_file(path: &Path, how: &str) -> Result<Library, Error> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::auth(format!("reading the credentials file {shown} ({how}): {e}"))
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|e| {
            Error::auth(format!("the credentials file {shown} ({how}) is not JSON ({e}): pass a credentials file written by gcloud or downloaded from Google Cloud"))
        })?;
        let kind = json
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let named_principal = match kind.as_str() {
            "service_account" => json
                .get("client_email")
                .and_then(Value::as_str)
                .map(str::to_owned),
            "impersonated_service_account" | "external_account" => json
                .get("service_account_impersonation_url")
                .and_then(Value::as_str)
                .and_then(impersonation_target),
            _ => None,
        };
        if !KNOWN_TYPES.split(", ").any(|k| k == kind) {
            let kind = if kind.is_empty() { "no type" } else { &kind };
            return Err(Error::auth(format!(
                "the credentials file {shown} ({how}) has type {kind}, which iap-ssh cannot use (it reads {KNOWN_TYPES})"
            )));
        }
        // The library's credentials are built on first use, inside the runtime (building
        // starts a task); missing fields are reported then, naming the file and its type.
        Ok(Library {
            origin: Origin::File {
                path: path.to_owned(),
                how: how.to_owned(),
                kind,
            },
            json: Some(json),
            creds: Mutex::new(None),
            named_principal,
        })
    }

    /// The metadata server (through `GCE_METADATA_HOST` when set).
    pub fn metadata(host: &str) -> Library {
        Library {
            origin: Origin::Metadata {
                host: host.to_owned(),
            },
            json: None,
            creds: Mutex::new(None),
            named_principal: None,
        }
    }

    /// Where the credentials come from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Whether google-cloud-auth makes this source's HTTP requests (taking proxies from the
    /// environment): every source but service-account keys, which gcp_auth serves.
    pub fn reads_proxy_env(&self) -> bool {
        !matches!(&self.origin, Origin::File { kind, .. } if kind == "service_account")
    }

    /// The principal the credentials file names, if any.
    pub fn named_principal(&self) -> Option<&str> {
        self.named_principal.as_deref()
    }

    /// For messages: `credentials file PATH (authorized_user, from …)`.
    pub fn describe(&self) -> String {
        match &self.origin {
            Origin::File { path, how, kind } => {
                format!("credentials file {} ({kind}, {how})", path.display())
            }
            Origin::Metadata { host } => format!("the metadata server at {host}"),
        }
    }

    fn build(&self) -> Result<Built, Error> {
        if let (Origin::File { kind, .. }, Some(json)) = (&self.origin, &self.json)
            && kind == "service_account"
        {
            return gcp_auth::CustomServiceAccount::from_json(&json.to_string())
                .map(|k| Built::Key(Arc::new(k)))
                .map_err(|e| {
                    Error::auth(format!(
                        "{} cannot be used: {e}: pass a JSON key file downloaded for a service account",
                        self.describe()
                    ))
                });
        }
        let scopes = SCOPES.iter().copied();
        let built = match (&self.origin, &self.json) {
            (Origin::Metadata { .. }, _) => mds::Builder::default()
                .with_scopes(scopes)
                .build_access_token_credentials(),
            (Origin::File { kind, .. }, Some(json)) => {
                let json = json.clone();
                match kind.as_str() {
                    "authorized_user" => user_account::Builder::new(json)
                        .with_scopes(scopes)
                        .build_access_token_credentials(),
                    "impersonated_service_account" => impersonated::Builder::new(json)
                        .with_scopes(scopes)
                        .build_access_token_credentials(),
                    "external_account" => external_account::Builder::new(json)
                        .with_scopes(scopes)
                        .build_access_token_credentials(),
                    "external_account_authorized_user" => {
                        external_account_authorized_user::Builder::new(json)
                            .build_access_token_credentials()
                    }
                    other => {
                        let other = if other.is_empty() { "no type" } else { other };
                        return Err(Error::auth(format!(
                            "{} has type {other}, which iap-ssh cannot use (it reads {KNOWN_TYPES})",
                            self.file_label()
                        )));
                    }
                }
            }
            (Origin::File { .. }, None) => {
                return Err(Error::auth(format!(
                    "{} has no contents",
                    self.file_label()
                )));
            }
        };
        built.map(Built::Google).map_err(|e| {
            Error::auth(format!(
                "{} cannot be used: {}: fix or replace the file",
                self.describe(),
                error_chain(&e)
            ))
        })
    }

    fn file_label(&self) -> String {
        match &self.origin {
            Origin::File { path, how, .. } => {
                format!("the credentials file {} ({how})", path.display())
            }
            Origin::Metadata { host } => format!("the metadata server at {host}"),
        }
    }

    /// Forgets the library's in-memory token, so the next fetch asks the token endpoint.
    pub fn reset(&self) {
        if let Ok(mut slot) = self.creds.lock() {
            *slot = None;
        }
    }

    /// A token from the library (its in-memory cache, or a fresh fetch), with its expiry in
    /// Unix seconds when the library tells it (gcp_auth does; google-cloud-auth does not).
    ///
    /// # Errors
    /// An [`Error`]: network failures name the host and exit 1; refusals name the source
    /// and exit 3.
    pub async fn fetch(&self) -> Result<(Token, Option<u64>), Error> {
        let auth = Error::auth;
        let creds = {
            let mut slot = self
                .creds
                .lock()
                .map_err(|_| auth("credentials state is unusable".to_owned()))?;
            match slot.as_ref() {
                Some(c) => c.clone(),
                None => {
                    let c = self.build()?;
                    *slot = Some(c.clone());
                    c
                }
            }
        };
        let creds = match creds {
            Built::Google(c) => c,
            Built::Key(key) => {
                let token = gcp_auth::TokenProvider::token(key.as_ref(), SCOPES)
                    .await
                    .map_err(|e| self.fetch_error(&e))?;
                let expires_at = u64::try_from(token.expires_at().timestamp()).ok();
                let ours = Token::new(token.as_str()).map_err(|e| {
                    auth(format!("{} gave an unusable token: {e}", self.describe()))
                })?;
                return Ok((ours, expires_at));
            }
        };
        let token = creds
            .access_token()
            .await
            .map_err(|e| self.fetch_error(&e))?;
        Token::new(&token.token)
            .map(|t| (t, None))
            .map_err(|e| auth(format!("{} gave an unusable token: {e}", self.describe())))
    }

    fn fetch_error(&self, e: &(dyn std::error::Error + 'static)) -> Error {
        let chain = error_chain(e);
        match network_host(e) {
            Some(host) => Error::other(format!(
                "network error: could not reach {host} to get a token from {}: {chain}: check the network and proxy settings (--proxy, HTTPS_PROXY, NO_PROXY)",
                self.describe()
            )),
            None => Error::auth(format!(
                "getting a token from {} failed: {chain}",
                self.describe()
            )),
        }
    }
}

/// The email in `…/serviceAccounts/EMAIL:generateAccessToken`.
fn impersonation_target(url: &str) -> Option<String> {
    let tail = url.rsplit("/serviceAccounts/").next()?;
    let email = tail.split(':').next()?;
    (email.contains('@') && !url.ends_with(email)).then(|| email.to_owned())
}

/// Every message in an error's chain, joined, skipping repeats.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    crate::close::sanitize_reason(&parts.join(": "))
}

/// The host a transport-level failure (connect, timeout, DNS) was trying to reach, if the
/// error is one.
fn network_host(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        // gcp_auth (service-account keys) reports transport failures as hyper-util errors
        // whose text names no host; its caller knows the host from the key's token_uri.
        if let Some(legacy) = err.downcast_ref::<hyper_util::client::legacy::Error>()
            && legacy.is_connect()
        {
            return Some("the key's token_uri".to_owned());
        }
        if let Some(req) = err.downcast_ref::<reqwest::Error>()
            && (req.is_connect() || req.is_timeout())
        {
            return Some(
                req.url()
                    .map(|u| match (u.host_str(), u.port_or_known_default()) {
                        (Some(h), Some(p)) => format!("{h}:{p}"),
                        _ => u.to_string(),
                    })
                    .unwrap_or_else(|| "the token endpoint".to_owned()),
            );
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impersonation_targets_come_from_the_url() {
        assert_eq!(
            impersonation_target(
                "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com:generateAccessToken"
            )
            .as_deref(),
            Some("sa@p.iam.gserviceaccount.com")
        );
        assert_eq!(impersonation_target("https://x/none"), None);
    }

    #[tokio::test]
    async fn unusable_files_name_the_file_and_type() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds.json");
        std::fs::write(&path, r#"{"type": "authorized_user", "client_id": "x"}"#).unwrap();
        let lib = Library::from_file(&path, "--credentials").unwrap();
        let err = lib.fetch().await.unwrap_err().message;
        assert!(
            err.contains("creds.json") && err.contains("authorized_user"),
            "{err}"
        );
        std::fs::write(&path, r#"{"type": "gdch_service_account"}"#).unwrap();
        let err = Library::from_file(&path, "--credentials")
            .unwrap_err()
            .message;
        assert!(err.contains("has type gdch_service_account"), "{err}");
        std::fs::write(&path, "nope").unwrap();
        let err = Library::from_file(&path, "--credentials")
            .unwrap_err()
            .message;
        assert!(err.contains("is not JSON"), "{err}");
    }
}
