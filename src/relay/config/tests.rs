//! Unit tests of `relay.toml` parsing: good files, every problem named, the identity
//! sources' rules, and the shipped examples.

use super::*;

const GOOD: &str = r#"
listen = "127.0.0.1:0"
[tls]
cert = "c.pem"
key = "k.pem"
[[static_tokens]]
principal = "user:a@example.com"
sha256 = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
[[instances]]
project = "p"
zone = "z"
name = "vm-1"
interfaces = { nic0 = "127.0.0.1" }
[[bindings]]
role = "roles/iap.tunnelResourceAccessor"
members = ["user:a@example.com"]
resource = "projects/p"
ports = [22]
"#;

#[test]
fn binding_expiries_are_points_in_time() {
    let at = |text: &str| {
        let dt: toml::value::Datetime = text.parse().unwrap();
        datetime_to_system(&dt).map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs())
    };
    assert_eq!(at("1970-01-01T00:00:00Z").unwrap(), 0);
    assert_eq!(at("2000-02-29T00:00:00Z").unwrap(), 951_782_400);
    assert_eq!(at("2026-11-18T11:06:40.999Z").unwrap(), 1_795_000_000);
    assert_eq!(at("2026-11-18T12:36:40+01:30").unwrap(), 1_795_000_000);
    assert_eq!(at("2099-12-31T23:59:59-00:00").unwrap(), 4_102_444_799);
    assert!(at("1969-12-31T23:59:59Z").is_err());
    assert!(at("2027-01-31T00:00:00").is_err(), "no offset");
    assert!(at("2027-01-31").is_err(), "a date only");
}

#[test]
fn good_config_parses_with_paths_resolved() {
    let config = RelayConfig::parse(GOOD, Path::new("/etc/relay")).unwrap();
    assert_eq!(config.client_ca, None);
    assert!(!config.policy.bindings[0].require_client_cert);
    let (cert, key) = config.tls.unwrap();
    assert_eq!(cert, Path::new("/etc/relay/c.pem"));
    assert_eq!(key, Path::new("/etc/relay/k.pem"));
    assert_eq!(config.policy.bindings.len(), 1);
    assert_eq!(
        config.tokens.authenticate("foo"),
        Some("user:a@example.com")
    );
}

#[test]
fn client_certificates_are_configured_in_tls() {
    let text = GOOD.replace("key = \"k.pem\"", "key = \"k.pem\"\nclient_ca = \"ca.pem\"");
    let config = RelayConfig::parse(&text, Path::new("/r")).unwrap();
    let want = ClientCa {
        ca: "/r/ca.pem".into(),
        mode: ClientAuthMode::Required,
    };
    assert_eq!(config.client_ca, Some(want));
    let text = text
        .replace("ports = [22]", "ports = [22]\nrequire_client_cert = true")
        .replace(
            "client_ca = \"ca.pem\"",
            "client_ca = \"ca.pem\"\nclient_auth = \"optional\"",
        );
    let config = RelayConfig::parse(&text, Path::new("/r")).unwrap();
    assert_eq!(
        config.client_ca.map(|c| c.mode),
        Some(ClientAuthMode::Optional)
    );
    assert!(config.policy.bindings[0].require_client_cert);
}

#[test]
fn bad_configs_name_the_problem() {
    let cases = [
        (
            GOOD.replace("roles/iap.tunnelResourceAccessor", "roles/viewer"),
            "grants no tunnels",
        ),
        (
            GOOD.replace("\"user:a@example.com\"]", "\"alice\"]"),
            "must start with user:",
        ),
        (GOOD.replace("projects/p\"", "folders/p\""), "bindings[0]"),
        (
            GOOD.replace("ports = [22]", "ports = []"),
            "ports must list",
        ),
        (GOOD.replace("2c26", "zz26"), "static_tokens[0]"),
        (GOOD.replace("listen", "lisen"), "unknown field"),
        (
            GOOD.replace("{ nic0 = \"127.0.0.1\" }", "{}"),
            "has no interfaces",
        ),
        (
            GOOD.replace("ports = [22]", "require_client_cert = true"),
            "require_client_cert needs [tls] client_ca",
        ),
        (
            GOOD.replace(
                "key = \"k.pem\"",
                "key = \"k.pem\"\nclient_auth = \"optional\"",
            ),
            "client_auth needs client_ca",
        ),
        (
            GOOD.replace(
                "key = \"k.pem\"",
                "key = \"k.pem\"\nclient_ca = \"c\"\nclient_auth = \"maybe\"",
            ),
            "unknown variant",
        ),
    ];
    for (text, expected) in cases {
        let err = format!(
            "{:#}",
            RelayConfig::parse(&text, Path::new(".")).unwrap_err()
        );
        assert!(err.contains(expected), "expected {expected:?} in {err}");
    }
}

mod identity_sources {
    use super::*;

    const BASE: &str = "listen = \"127.0.0.1:0\"\n";
    const TOKENINFO: &str = "[tokeninfo]\nurl = \"http://127.0.0.1:1/ti\"\nallowed_client_ids = [\"c1\"]\nrequired_scopes = [\"s1\"]\n";

    fn issuer(name: &str, limit: &str) -> String {
        format!("[[jwt]]\nissuer = \"{name}\"\naudience = \"a\"\njwks_file = \"j.json\"\n{limit}\n")
    }

    fn error(text: &str) -> String {
        format!(
            "{:#}",
            RelayConfig::parse(text, Path::new(".")).unwrap_err()
        )
    }

    #[test]
    fn tokeninfo_needs_clients_and_scopes() {
        let ok = format!("{BASE}{TOKENINFO}");
        RelayConfig::parse(&ok, Path::new(".")).unwrap();
        for (text, want) in [
            (
                ok.replace("allowed_client_ids = [\"c1\"]\n", ""),
                "[tokeninfo]: allowed_client_ids must list",
            ),
            (
                ok.replace("[\"c1\"]", "[\"\"]"),
                "[tokeninfo]: allowed_client_ids must list",
            ),
            (
                ok.replace("required_scopes = [\"s1\"]\n", ""),
                "[tokeninfo]: required_scopes must list",
            ),
            (
                ok.replace("http://127.0.0.1:1/ti", "http://example.com/ti"),
                "must be an https:// URL",
            ),
        ] {
            let err = error(&text);
            assert!(err.contains(want), "expected {want:?} in {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn issuers_beside_another_source_must_be_confined() {
        let one = format!("{BASE}{}", issuer("https://a", ""));
        RelayConfig::parse(&one, Path::new(".")).unwrap();
        let two = format!(
            "{BASE}{}{}",
            issuer("https://a", ""),
            issuer("https://ci", "")
        );
        let err = error(&two);
        assert!(
            err.contains("jwt[0] (issuer \"https://a\"): set allowed_domains"),
            "{err}"
        );
        let with_tokeninfo = format!("{BASE}{TOKENINFO}{}", issuer("https://a", ""));
        assert!(error(&with_tokeninfo).contains("set allowed_domains"));
        let confined = format!(
            "{BASE}{TOKENINFO}{}{}",
            issuer("https://a", "allowed_domains = [\"example.com\"]"),
            issuer(
                "https://ci",
                "allowed_principal_prefixes = [\"user:repo:my-org/\"]"
            )
        );
        RelayConfig::parse(&confined, Path::new(".")).unwrap();
        for (limit, want) in [
            (
                "allowed_domains = [\"@example.com\"]",
                "must be a plain domain",
            ),
            (
                "allowed_domains = [\"*.example.com\"]",
                "must be a plain domain",
            ),
            ("allowed_domains = [\"com\"]", "must be a plain domain"),
            (
                "allowed_principal_prefixes = [\"user:\"]",
                "must start with user: or serviceAccount:",
            ),
            (
                "allowed_principal_prefixes = [\"group:x\"]",
                "must start with user: or serviceAccount:",
            ),
        ] {
            let err = error(&format!("{BASE}{}", issuer("https://a", limit)));
            assert!(err.contains(want), "expected {want:?} in {err}");
        }
    }
}

mod problems {
    use super::*;

    #[test]
    fn every_problem_is_listed_and_the_good_entries_kept() {
        // GOOD with a bad node id and a second binding with a bad role and a bad member.
        let text = GOOD.replace("[tls]", "node_id = \"bad id\"\n[tls]")
            + "[[bindings]]\nrole = \"roles/viewer\"\nmembers = [\"alice\"]\nresource = \"projects/p\"\n";
        let text = text.as_str();
        let (config, problems) = RelayConfig::parse_all(text, Path::new("."));
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("node_id")),
            "{problems:?}"
        );
        let config = config.unwrap();
        assert_eq!(config.policy.bindings.len(), 1);
        let err = RelayConfig::parse(text, Path::new(".")).unwrap_err();
        assert_eq!(err.downcast_ref::<ConfigProblems>().unwrap().0, problems);
        let (none, syntax) = RelayConfig::parse_all("listen = ", Path::new("."));
        assert!(none.is_none());
        assert_eq!(syntax.len(), 1);
        assert!(!syntax[0].contains('\n'), "{syntax:?}");
    }

    #[test]
    fn plaintext_beyond_loopback_is_warned() {
        let parse = |t: &str| RelayConfig::parse(t, Path::new(".")).unwrap();
        assert!(
            parse("listen = \"0.0.0.0:80\"")
                .plaintext_warning()
                .is_some()
        );
        assert!(parse("listen = \"[::1]:80\"").plaintext_warning().is_none());
        let proxied = "listen = \"0.0.0.0:80\"\ntrusted_proxies = [\"10.0.0.1\"]";
        assert!(parse(proxied).plaintext_warning().is_none());
    }
}

mod example {
    use super::*;

    /// The example shipped for operators must stay a valid configuration.
    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../../../deploy/relay.toml.example");
        let config = RelayConfig::parse(text, Path::new("/etc/iap-relay")).unwrap();
        assert_eq!(config.policy.bindings.len(), 2);
        assert_eq!(config.jwt.len(), 1);
        assert!(config.admin_listen.is_some());
    }

    /// The commented `[tokeninfo]` block, once uncommented, is complete.
    #[test]
    fn shipped_tokeninfo_example_parses() {
        let text = include_str!("../../../deploy/relay.toml.example");
        let start = text.find("# [tokeninfo]").unwrap();
        let block: String = text[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(block.contains("required_scopes"), "{block}");
        // At the end, so the table swallows none of the keys that follow it in the file.
        let text = format!("{text}\n{block}");
        let config = RelayConfig::parse(&text, Path::new("/etc/iap-relay")).unwrap();
        let tokeninfo = config.tokeninfo.unwrap();
        assert_eq!(
            tokeninfo.required_scopes,
            ["https://www.googleapis.com/auth/cloud-platform"]
        );
    }
}
