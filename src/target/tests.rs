//! Unit tests of the target query strings; `inst` also serves other modules' tests.

use super::*;

/// An instance target from its four fields.
pub(crate) fn inst(project: &str, zone: &str, instance: &str, interface: &str) -> Target {
    let s = |v: &str| v.to_owned();
    let (project, zone, instance, interface) = (s(project), s(zone), s(instance), s(interface));
    Target::Instance {
        project,
        zone,
        instance,
        interface,
    }
}

fn host(project: &str, region: &str, network: &str, addr: &str, group: Option<&str>) -> Target {
    let s = |v: &str| v.to_owned();
    let (project, region, network, host) = (s(project), s(region), s(network), s(addr));
    Target::Host {
        project,
        region,
        network,
        host,
        dest_group: group.map(s),
    }
}

#[test]
fn golden_queries() {
    let vm = inst("my-proj", "us-central1-a", "vm-1", "nic0");
    let addr = host("p", "us-central1", "default", "10.0.0.5", Some("my-group"));
    let got = [
        vm.connect_query(22),
        addr.connect_query(3389),
        host("p", "r", "n", "fd00::5", None).connect_query(22),
        inst("p", "z", "vm", "nic0").reconnect_query("AbC+/=x", 123),
        addr.reconnect_query("s", u64::MAX),
    ];
    let want = "\
project=my-proj&port=22&newWebsocket=True&zone=us-central1-a&instance=vm-1&interface=nic0
project=p&port=3389&newWebsocket=True&region=us-central1&network=default&host=10.0.0.5&group=my-group
project=p&port=22&newWebsocket=True&region=r&network=n&host=fd00%3A%3A5
sid=AbC%2B%2F%3Dx&ack=123&newWebsocket=True&zone=z
sid=s&ack=18446744073709551615&newWebsocket=True&region=us-central1";
    assert_eq!(got.join("\n"), want);
}

#[test]
fn encoding_matches_python_urlencode() {
    // Expected values printed by Python 3's urllib.parse.urlencode.
    let cases = [
        ("+/= @:", "%2B%2F%3D+%40%3A"),
        ("*~é!'()", "%2A~%C3%A9%21%27%28%29"),
        ("a-b_c.d", "a-b_c.d"),
    ];
    for (value, want) in cases {
        assert_eq!(encode(&[("k", value)]), format!("k={want}"), "{value:?}");
    }
    let theirs = form_urlencoded::Serializer::new(String::new())
        .append_pair("k", "+/= @:")
        .finish();
    assert_eq!(encode(&[("k", "+/= @:")]), theirs);
}

#[test]
fn queries_round_trip() {
    let targets = [
        inst("my-proj", "us-central1-a", "vm-1", "nic0"),
        inst("example.com:proj", "europe-west4-b", "a", "nic1"),
        host("p", "us-central1", "default", "10.0.0.5", None),
        host("p", "r", "n", "fd00::5", Some("g")),
        host("p", "r", "n", "db.internal.example.com", Some("a_b-c")),
    ];
    for t in targets {
        for port in [1, 22, 3389, 65535] {
            assert_eq!(
                parse_connect_query(&t.connect_query(port)),
                Ok((t.clone(), port))
            );
        }
        let back = parse_reconnect_query(&t.reconnect_query("AbC+/=x", 7));
        assert_eq!(back.map(|r| (r.sid, r.ack)), Ok(("AbC+/=x".to_owned(), 7)));
    }
}

#[test]
fn connect_query_accepts_other_clients() {
    // IAP Desktop: its own order, a `_` cache buster, no newWebsocket.
    let q = "project=p&zone=z&instance=vm&port=22&_=0b6d3f&newWebsocket=true";
    assert_eq!(
        parse_connect_query(q),
        Ok((inst("p", "z", "vm", "nic0"), 22))
    );
    let q = format!("?{q}&interface=nic2");
    assert_eq!(
        parse_connect_query(&q),
        Ok((inst("p", "z", "vm", "nic2"), 22))
    );
}

#[test]
fn connect_query_errors() {
    let long = "x".repeat(MAX_VALUE_LEN + 1);
    let cases = "\
            port=22&zone=z&instance=i => query parameter project is missing
            project=p&zone=z&instance=i => query parameter port is missing
            project=p&port=22&instance=i => query parameter zone is missing
            project=p&port=22&zone=z => query parameter instance is missing
            project=p&port=22 => query parameter zone is missing
            project=p&port=22&region=r&host=h => query parameter network is missing
            project=p&port=22&region=r&network=n => query parameter host is missing
            project=p&port=22&zone=z&instance=i&zone=y => query parameter zone is repeated
            project=&port=22&zone=z&instance=i => query parameter project is empty
            project=p&port=22&zone=z&instance=i&interface= => query parameter interface is empty
            project=p&port=0&zone=z&instance=i => query parameter port must be a number from 1 to 65535
            project=p&port=65536&zone=z&instance=i => query parameter port must be a number from 1 to 65535
            project=p&port=%2B22&zone=z&instance=i => query parameter port must be a number from 1 to 65535
            project=p&port=ssh&zone=z&instance=i => query parameter port must be a number from 1 to 65535
            project=p&port=22&zone=z&instance=i%0A => query parameter instance may hold only letters, digits and - . _ : + / =
            project=p&port=22&region=r&network=n%E2%80%AEx&host=h => query parameter network may hold only letters, digits and - . _ : + / =
            project=p%20q&port=22&zone=z&instance=i => query parameter project may hold only letters, digits and - . _ : + / =
            project=LONG&port=22&zone=z&instance=i => query parameter project is longer than 1024 bytes
            project=p&port=22&zone=z&instance=i&host=h => query parameters zone and host do not go together
            project=p&port=22&interface=nic0&group=g => query parameters interface and group do not go together";
    for line in cases.lines() {
        let (query, want) = line.trim().split_once(" => ").unwrap_or_default();
        let got = parse_connect_query(&query.replace("LONG", &long)).map_err(|e| e.to_string());
        assert_eq!(got, Err(want.to_owned()), "{query}");
    }
    let mixed = parse_connect_query("zone=z&host=h");
    assert_eq!(mixed, Err(QueryError::Mixed("zone", "host")));
}

#[test]
fn reconnect_query_parsing() {
    let max = "s".repeat(MAX_VALUE_LEN);
    let cases = "\
            sid=AbC%2B%2F%3Dx&ack=123&newWebsocket=True&zone=z => AbC+/=x 123 Some(\"z\") None
            _=1&region=r&ack=0&sid=s => s 0 None Some(\"r\")
            sid=MAX&ack=1 => MAX 1 None None
            sid=MAXs&ack=1 => query parameter sid is longer than 1024 bytes
            ack=1 => query parameter sid is missing
            sid=&ack=1 => query parameter sid is empty
            sid=s => query parameter ack is missing
            sid=s&ack=1&ack=2 => query parameter ack is repeated
            sid=s&ack=-1 => query parameter ack must be a whole number of bytes
            sid=s&ack=18446744073709551616 => query parameter ack must be a whole number of bytes";
    for line in cases.lines() {
        let (query, want) = line.trim().split_once(" => ").unwrap_or_default();
        let got = match parse_reconnect_query(&query.replace("MAX", &max)) {
            Ok(r) => format!("{} {} {:?} {:?}", r.sid, r.ack, r.zone, r.region),
            Err(e) => e.to_string(),
        };
        assert_eq!(got, want.replace("MAX", &max), "{query}");
    }
}

#[test]
fn describe_targets() {
    let got = [
        inst("my-project", "us-central1-a", "vm-1", "nic0").describe(22),
        inst("p", "z", "vm-1", "nic1").describe(2222),
        host("my-project", "us-central1", "default", "10.0.0.5", None).describe(22),
        host("p", "r", "n", "fd00::5", Some("g")).describe(3389),
    ];
    let want = "\
vm-1 port 22 in my-project/us-central1-a
vm-1 port 2222 in p/z interface nic1
10.0.0.5 port 22 in my-project/us-central1 network default
fd00::5 port 3389 in p/r network n group g";
    assert_eq!(got.join("\n"), want);
    assert_eq!(inst("p", "z", "i", "n").project(), "p");
    assert_eq!(host("q", "r", "n", "h", None).project(), "q");
}
