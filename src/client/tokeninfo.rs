//! Google's token-info endpoint: when a token expires and whose it is. The client asks it once
//! per fresh token whose expiry the credentials library keeps to itself, so the on-disk cache
//! can keep the token for its real lifetime.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::adc::error_chain;
use super::auth::Token;
use super::error::Error;
use super::proxy::Proxy;

/// Google's token-info endpoint: the default for [`TokenInfo`].
pub const DEFAULT_TOKENINFO_URL: &str = "https://oauth2.googleapis.com/tokeninfo";

/// What token-info said about a token.
#[derive(Clone, Debug)]
pub struct TokenFacts {
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// The account, when the token carries the `userinfo.email` scope.
    pub email: Option<String>,
}

/// Asks a token-info endpoint when a token expires and whose it is.
#[derive(Clone, Debug)]
pub struct TokenInfo {
    url: String,
    client: reqwest::Client,
}

impl TokenInfo {
    /// A client for `url`, through `proxy` when given, trusting what `tls` trusts.
    ///
    /// # Errors
    /// An authentication error when the HTTP client cannot be built.
    pub fn new(
        url: &str,
        proxy: Option<&Proxy>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<TokenInfo, Error> {
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(20));
        let builder = match proxy {
            Some(p) => builder.proxy(
                reqwest::Proxy::all(p.url())
                    .map_err(|e| Error::auth(format!("proxy {}: {e}", p.authority())))?,
            ),
            None => builder.no_proxy(),
        };
        let client = builder
            .build()
            .map_err(|e| Error::auth(format!("building the token-info client: {e}")))?;
        Ok(TokenInfo {
            url: url.to_owned(),
            client,
        })
    }

    /// The token's expiry and account. The token travels in a POST body, never in the URL.
    ///
    /// # Errors
    /// When the endpoint cannot be reached or does not know the token.
    pub async fn lookup(&self, token: &Token) -> Result<TokenFacts, Error> {
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            exp: Option<Value>,
            #[serde(default)]
            expires_in: Option<Value>,
            #[serde(default)]
            email: Option<String>,
        }
        let number = |v: &Option<Value>| match v {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        let response = self
            .client
            .post(&self.url)
            .form(&[("access_token", token.secret())])
            .send()
            .await
            .map_err(|e| {
                Error::other(format!(
                    "asking {} about the token: {}",
                    self.url,
                    error_chain(&e)
                ))
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::other(format!("{} answered HTTP {status}", self.url)));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| Error::other(format!("reading {}: {e}", self.url)))?;
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
            Error::other(format!(
                "{} answered something other than JSON: {e}",
                self.url
            ))
        })?;
        let expires_at = number(&answer.exp)
            .or_else(|| number(&answer.expires_in).map(|s| super::cache::unix_now() + s))
            .ok_or_else(|| Error::other(format!("{} gave no expiry", self.url)))?;
        Ok(TokenFacts {
            expires_at,
            email: answer.email.filter(|e| !e.is_empty()),
        })
    }
}
