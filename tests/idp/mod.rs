//! A test identity provider: ES256 keys with their JWKS, signed tokens, and a token-info
//! endpoint on loopback.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
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
    serde_json::json!({"iss": iss, "aud": aud, "exp": exp, "nbf": nbf, "iat": now(), "email": email, "sub": "1234"})
}

/// A token-info endpoint: `good` is Tina's token, anything else is refused.
pub fn tokeninfo_endpoint(good: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let ok = head.contains(&format!("access_token={good} "))
                || head.contains(&format!("access_token={good}&"));
            let (status, body) = if ok {
                (
                    "200 OK",
                    r#"{"email":"tina@example.com","email_verified":"true","expires_in":"3600"}"#,
                )
            } else {
                ("400 Bad Request", r#"{"error":"invalid_token"}"#)
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/tokeninfo")
}
