//! JWT checking (`relay::jwt::JwtVerifier`): token header and claims parsing, issuer lookup,
//! JWKS parsing and key selection.
//!
//! Input: the token on the first line; anything after it is a JWKS document for a fresh
//! verifier (read from a temporary file, as `jwks_file` is). Without one, the token goes to a
//! verifier holding `jwks.json`, whose private key signed the seed token.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use iap_ssh::relay::jwt::{JwtIssuerConfig, JwtVerifier};
use libfuzzer_sys::fuzz_target;

const ISSUER: &str = "https://issuer.example";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("iap-ssh-fuzz-{}-{name}", std::process::id()))
}

fn verifier(jwks: &[u8]) -> Option<JwtVerifier> {
    let path = scratch("jwks.json");
    std::fs::write(&path, jwks).ok()?;
    // Built from JSON so that fields added later with defaults need no change here.
    let config: JwtIssuerConfig = serde_json::from_value(serde_json::json!({
        "issuer": ISSUER,
        "audience": "iap-relay",
        "jwks_file": path,
        "algorithms": ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"],
    }))
    .ok()?;
    runtime()
        .block_on(JwtVerifier::new(vec![config], None))
        .ok()
}

fn fixed() -> &'static JwtVerifier {
    static V: OnceLock<JwtVerifier> = OnceLock::new();
    V.get_or_init(|| verifier(include_bytes!("jwks.json")).expect("jwks.json loads"))
}

fuzz_target!(|data: &[u8]| {
    let (token, jwks) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(token) = std::str::from_utf8(token) else {
        return;
    };
    let fresh;
    let v = if jwks.is_empty() {
        fixed()
    } else {
        match verifier(jwks) {
            Some(v) => {
                fresh = v;
                &fresh
            }
            None => return,
        }
    };
    if let Ok(identity) = runtime().block_on(v.verify(token)) {
        let p = &identity.principal;
        assert!(
            p.starts_with("user:") || p.starts_with("serviceAccount:"),
            "{p}"
        );
    }
});
