//! Unit tests of relay endpoints: parsing, URLs and Host headers as gcloud makes them.

use super::*;

#[test]
fn endpoints_parse_like_gcloud_overrides() {
    let cases = [
        (
            "wss://tunnel.cloudproxy.app/v4",
            "wss://tunnel.cloudproxy.app/v4/connect?q",
        ),
        ("wss://127.0.0.1:8443", "wss://127.0.0.1:8443/v4/connect?q"),
        ("wss://127.0.0.1:8443/", "wss://127.0.0.1:8443/v4/connect?q"),
        (
            "wss://relay.example/custom/",
            "wss://relay.example/custom/connect?q",
        ),
        ("wss://[::1]:9000", "wss://[::1]:9000/v4/connect?q"),
        ("ws://127.0.0.1:80", "ws://127.0.0.1/v4/connect?q"),
        (
            "wss://tunnel.cloudproxy.app:8443",
            "wss://tunnel.cloudproxy.app:8443/v4/connect?q",
        ),
        ("wss://[::1]:443", "wss://[::1]/v4/connect?q"),
        ("ws://localhost:8080/v4", "ws://localhost:8080/v4/connect?q"),
    ];
    for (input, url) in cases {
        let endpoint = Endpoint::parse(input).unwrap();
        assert_eq!(endpoint.url("connect", "q"), url, "{input}");
    }
}

#[test]
fn host_header_leaves_the_default_port_out_as_gcloud_does() {
    let cases = [
        (DEFAULT_ENDPOINT, "tunnel.cloudproxy.app"),
        (DEFAULT_MTLS_ENDPOINT, "mtls.tunnel.cloudproxy.app"),
        ("wss://relay.example:8443/v4", "relay.example:8443"),
        ("ws://127.0.0.1:8080", "127.0.0.1:8080"),
    ];
    for (endpoint, host) in cases {
        let url = Endpoint::parse(endpoint).unwrap().url("connect", "q");
        let request = url.as_str().into_client_request().unwrap();
        assert_eq!(request.headers()[header::HOST], host, "{endpoint}");
    }
}

#[test]
fn bad_endpoints_are_clear_errors() {
    let cases = [
        ("ftp://x", "must start with wss://"),
        (
            "ws://relay.example",
            "refusing to send credentials over plain ws://",
        ),
        ("wss://x/v4?a=b", "must not have a query"),
        ("not a url", "is not a URL"),
    ];
    for (input, expected) in cases {
        let err = Endpoint::parse(input).unwrap_err().to_string();
        assert!(err.contains(expected), "{input}: {err}");
    }
}
