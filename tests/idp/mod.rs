//! A test identity provider: ES256 keys with their JWKS, signed tokens, and a token-info
//! endpoint on loopback.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// The issuer the test relays trust.
pub const ISSUER: &str = "https://issuer.test";
/// The audience the test relays expect.
pub const AUDIENCE: &str = "iap-relay-test";

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An ES256 signing key and its JWKS.
pub struct Signer {
    pub key: EncodingKey,
    pub jwks: String,
    pub public_pem: String,
}

pub fn signer(kid: &str) -> Signer {
    let pair = rcgen::KeyPair::generate().expect("P-256 key");
    let raw = pair.public_key_raw();
    let (x, y) = (&raw[1..33], &raw[33..65]);
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y), "kid": kid, "alg": "ES256", "use": "sig"}]});
    Signer {
        key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("EC key"),
        jwks: jwks.to_string(),
        public_pem: pair.public_key_pem(),
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn jwt(signer: &Signer, kid: &str, claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, &signer.key).expect("signing")
}

pub fn claims(email: &str, iss: &str, aud: &str, exp: u64, nbf: u64) -> serde_json::Value {
    serde_json::json!({"iss": iss, "aud": aud, "exp": exp, "nbf": nbf, "iat": now(), "email": email, "email_verified": true, "sub": "1234"})
}

/// The OAuth client the test relays accept access tokens from.
pub const CLIENT_ID: &str = "iap-relay-test.apps.googleusercontent.com";
/// The scope the test relays require.
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

/// A `[tokeninfo]` section for the endpoint at `url`, accepting [`CLIENT_ID`] with
/// [`CLOUD_PLATFORM`].
pub fn tokeninfo_section(url: &str) -> crate::common::TokenInfo {
    crate::common::TokenInfo {
        url: Some(url.to_owned()),
        allowed_client_ids: vec![CLIENT_ID.to_owned()],
        required_scopes: vec![CLOUD_PLATFORM.to_owned()],
    }
}

/// A token-info answer as Google's endpoint gives it for an access token.
pub fn tokeninfo_answer(email: &str, client: &str, scope: &str) -> serde_json::Value {
    serde_json::json!({"azp": client, "aud": client, "scope": scope, "email": email,
        "email_verified": "true", "expires_in": "3600", "exp": (now() + 3600).to_string()})
}

/// A running token-info stand-in.
pub struct TokenInfoServer {
    /// Its URL.
    pub url: String,
    /// Requests it has answered.
    pub lookups: Arc<AtomicUsize>,
}

/// A token-info endpoint answering `answers` (token → JSON) with 200 and anything else with
/// 400, counting every request.
pub fn tokeninfo_server(answers: Vec<(String, serde_json::Value)>) -> TokenInfoServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let lookups = Arc::new(AtomicUsize::new(0));
    let answers: HashMap<String, String> = answers
        .into_iter()
        .map(|(token, answer)| (token, answer.to_string()))
        .collect();
    let count = lookups.clone();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            count.fetch_add(1, Ordering::SeqCst);
            let head = String::from_utf8_lossy(&buf[..n]);
            let token = head
                .split_once("access_token=")
                .and_then(|(_, rest)| rest.split([' ', '&']).next())
                .unwrap_or_default();
            let (status, body) = match answers.get(token) {
                Some(body) => ("200 OK", body.clone()),
                None => ("400 Bad Request", r#"{"error":"invalid_token"}"#.to_owned()),
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    TokenInfoServer {
        url: format!("http://{addr}/tokeninfo"),
        lookups,
    }
}

/// A token-info endpoint: `good` is Tina's token (issued to [`CLIENT_ID`] with
/// [`CLOUD_PLATFORM`]), anything else is refused.
pub fn tokeninfo_endpoint(good: &'static str) -> String {
    tokeninfo_server(vec![(
        good.to_owned(),
        tokeninfo_answer("tina@example.com", CLIENT_ID, CLOUD_PLATFORM),
    )])
    .url
}
