//! Unit tests of the client's entry points.

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
