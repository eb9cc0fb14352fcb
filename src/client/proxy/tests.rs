//! Unit tests of the client's HTTP CONNECT proxy support.

use super::*;

#[test]
fn proxy_urls_parse_and_credentials_stay_hidden() {
    let p = Proxy::parse("http://user:p%40ss@proxy.corp:3128/").unwrap();
    assert_eq!(p.authority(), "proxy.corp:3128");
    // base64("user:p@ss")
    assert_eq!(p.authorization.as_deref(), Some("Basic dXNlcjpwQHNz"));
    let shown = format!("{p:?}");
    assert!(
        !shown.contains("p@ss") && !shown.contains("dXNl"),
        "{shown}"
    );
    let req = p.connect_request("relay.example", 443, "iap-ssh/0");
    assert_eq!(
        req,
        "CONNECT relay.example:443 HTTP/1.1\r\nHost: relay.example:443\r\nUser-Agent: iap-ssh/0\r\nProxy-Authorization: Basic dXNlcjpwQHNz\r\n\r\n"
    );
    let p = Proxy::parse("[::1]:8080").unwrap();
    assert_eq!(p.authority(), "[::1]:8080");
    assert_eq!(
        p.connect_request("::1", 9, "ua"),
        "CONNECT [::1]:9 HTTP/1.1\r\nHost: [::1]:9\r\nUser-Agent: ua\r\n\r\n"
    );
    assert_eq!(Proxy::parse("HTTP://h").unwrap().authority(), "h:80");
    // Bad escapes stay as written; good ones decode, UTF-8 included.
    let p = Proxy::parse("http://%zz%C3%A9:a%3Ab@h").unwrap();
    assert_eq!(p.credentials(), Some(("%zz\u{e9}", "a:b")));
}

#[test]
fn bad_proxy_urls_are_clear_errors() {
    let cases = [
        ("socks5://h:1080", "SOCKS proxies are not supported"),
        ("https://h:443", "over TLS (https://) are not supported"),
        ("ftp://h", "only http:// proxies"),
        ("http://:3128", "has no host"),
        ("http://h:99999", "not a number"),
        ("http://u:secret@h:x", "not a number"),
        ("http://[::1", "no closing ]"),
    ];
    for (url, want) in cases {
        let err = Proxy::parse(url).unwrap_err().message;
        assert!(
            err.contains(want) && !err.contains("secret"),
            "{url}: {err}"
        );
    }
}

#[test]
fn selection_follows_flag_then_environment_and_no_proxy() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let authority = |r: Result<Option<Proxy>, Error>| r.map(|p| p.map(|p| p.authority()));
    let e = env(&[
        ("HTTPS_PROXY", "http://env:1"),
        ("NO_PROXY", ".corp,10.0.0.1"),
    ]);
    assert_eq!(
        authority(Proxy::select(None, &e, "relay.io")),
        Ok(Some("env:1".into()))
    );
    assert_eq!(authority(Proxy::select(None, &e, "r.corp")), Ok(None));
    assert_eq!(authority(Proxy::select(None, &e, "10.0.0.1")), Ok(None));
    assert_eq!(
        authority(Proxy::select(Some("flag:2"), &e, "r.corp")),
        Ok(Some("flag:2".into()))
    );
    assert_eq!(authority(Proxy::select(Some(""), &e, "relay.io")), Ok(None));
    let lower = env(&[
        ("https_proxy", "http://low:3"),
        ("HTTPS_PROXY", "http://up:4"),
    ]);
    assert_eq!(
        authority(Proxy::select(None, &lower, "x")),
        Ok(Some("low:3".into()))
    );
    let bad = env(&[("HTTPS_PROXY", "socks5://h")]);
    let err = Proxy::select(None, &bad, "x").unwrap_err().message;
    assert!(err.starts_with("HTTPS_PROXY: "), "{err}");
    assert_eq!(authority(Proxy::select(None, &env(&[]), "x")), Ok(None));
}

#[test]
fn no_proxy_table() {
    let cases = [
        ("*", "anything", true),
        ("example.com", "example.com", true),
        ("example.com", "relay.example.com", true),
        (".example.com", "relay.example.com", true),
        ("example.com", "badexample.com", false),
        ("a.io, example.com:443", "relay.EXAMPLE.com", true),
        ("127.0.0.1", "127.0.0.1", true),
        ("127.0.0.1", "127.0.0.2", false),
        ("::1", "[::1]", true),
        ("[::1]:443", "::1", true),
        ("", "x", false),
        ("*", "10.0.0.1", true),
        ("a.io example.com", "relay.example.com", true),
        ("10.0.0.0/8", "10.1.2.3", true),
        ("10.0.0.0/8", "11.1.2.3", false),
        ("fd00::/8", "[fd00::5]", true),
    ];
    for (list, host, want) in cases {
        assert_eq!(no_proxy_matches(list, host), want, "{list:?} {host}");
    }
}

#[test]
fn connect_responses() {
    assert_eq!(
        check_connect_response(b"HTTP/1.1 200 Connection established\r\n\r\n"),
        Ok(())
    );
    assert_eq!(check_connect_response(b"HTTP/1.0 200 OK\r\n\r\n"), Ok(()));
    assert_eq!(
        check_connect_response(b"HTTP/1.1 407 Proxy Authentication Required\r\nX: y\r\n\r\n"),
        Err((407, "Proxy Authentication Required".into()))
    );
    assert_eq!(
        check_connect_response(b"SSH-2.0-OpenSSH\r\n\r\n"),
        Err((0, String::new()))
    );
    let p = Proxy::parse("http://u:pw@h:1").unwrap();
    let msg = p.refusal(407, "Proxy Authentication Required", "r:443");
    assert!(msg.contains("rejected the user and password"), "{msg}");
    let p = Proxy::parse("http://h:1").unwrap();
    assert!(p.refusal(407, "", "r:443").contains("USER:PASSWORD@"));
    let msg = p.refusal(403, "Forbidden\x1b[2J", "r:443");
    assert!(
        msg.contains("HTTP 403") && msg.contains("NO_PROXY") && !msg.contains('\x1b'),
        "{msg}"
    );
}
