//! Unit tests of the relay's JWT verifier.

use super::issuer::{default_algorithms, default_claim, default_leeway};
use super::*;
use serde_json::json;

fn issuer(domains: &[&str], prefixes: &[&str]) -> JwtIssuerConfig {
    JwtIssuerConfig {
        issuer: "https://i".into(),
        audience: "a".into(),
        jwks_file: None,
        jwks_url: None,
        algorithms: default_algorithms(),
        identity_claim: default_claim(),
        leeway_secs: default_leeway(),
        allowed_domains: domains.iter().map(|d| (*d).to_owned()).collect(),
        allowed_principal_prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
    }
}

fn may(config: &JwtIssuerConfig, name: &str) -> bool {
    config.may_assert(name, &principal_for(name))
}

#[test]
fn issuers_assert_only_their_domains_and_prefixes() {
    let open = issuer(&[], &[]);
    assert!(may(&open, "anyone@anywhere.test"));
    let corp = issuer(&["example.com"], &[]);
    assert!(may(&corp, "alice@example.com"));
    assert!(may(&corp, "alice@EXAMPLE.com"));
    for name in [
        "alice@sub.example.com",
        "alice@example.com.evil.test",
        "alice@evilexample.com",
        "@example.com",
        "example.com",
        "alice@example.com@evil.test",
        "1234",
    ] {
        assert!(!may(&corp, name), "{name}");
    }
    let ci = issuer(&[], &["user:repo:my-org/"]);
    assert!(may(&ci, "repo:my-org/infra:ref:refs/heads/main"));
    assert!(!may(&ci, "repo:other-org/x"));
    assert!(!may(&ci, "alice@example.com"));
}

#[test]
fn numeric_dates_allow_fractions_and_refuse_nonsense() {
    let at = |v: serde_json::Value| numeric_date(&json!({ "exp": v }), "exp");
    assert_eq!(
        at(json!(10)),
        Ok(Some(UNIX_EPOCH + Duration::from_secs(10)))
    );
    assert_eq!(
        at(json!(10.5)),
        Ok(Some(UNIX_EPOCH + Duration::from_millis(10_500)))
    );
    assert_eq!(numeric_date(&json!({}), "exp"), Ok(None));
    for bad in [
        json!(-1),
        json!(-0.5),
        json!("10"),
        json!(null),
        json!(true),
        json!(1e300),
        json!([10]),
    ] {
        assert_eq!(at(bad.clone()), Err(AuthError::Malformed), "{bad}");
    }
}

#[test]
fn email_verified_is_true_or_the_string_true() {
    assert!(is_true(Some(&json!(true))));
    assert!(is_true(Some(&json!("true"))));
    for v in [
        json!(false),
        json!("false"),
        json!("yes"),
        json!(1),
        json!(null),
    ] {
        assert!(!is_true(Some(&v)), "{v}");
    }
    assert!(!is_true(None));
}
