//! Who the client is behind a proxy: `X-Forwarded-For` is believed only from the relay's
//! trusted proxies, and only as far back as the hops they added.

use std::net::IpAddr;

use super::inventory::Cidr;

/// The client's address: the peer, or the nearest untrusted address in `X-Forwarded-For`
/// when the peer is a trusted proxy. Hops are read from the right (the nearest first); the
/// first untrusted one is the client, and one that is not an address ends the walk.
pub fn client_address(trusted: &[Cidr], peer: IpAddr, forwarded: Option<&str>) -> IpAddr {
    let trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !trusted(peer) {
        return peer;
    }
    let Some(list) = forwarded else { return peer };
    let mut client = peer;
    for hop in list.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted(ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_nearest_untrusted_hop() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases = [
            // An untrusted peer is the client, whatever it forwards.
            ("192.0.2.1", Some("203.0.113.9"), "192.0.2.1"),
            ("10.0.0.1", None, "10.0.0.1"),
            ("10.0.0.1", Some("203.0.113.9"), "203.0.113.9"),
            // Hops are read from the right; trusted ones are skipped.
            (
                "10.0.0.1",
                Some("198.51.100.7, 203.0.113.9, 10.0.0.2"),
                "203.0.113.9",
            ),
            // Garbage stops the walk at the last address believed.
            ("10.0.0.1", Some("203.0.113.9, junk, 10.0.0.2"), "10.0.0.2"),
            ("10.0.0.1", Some("10.0.0.3, 10.0.0.2"), "10.0.0.3"),
        ];
        for (peer, forwarded, want) in cases {
            assert_eq!(
                client_address(&trusted, ip(peer), forwarded),
                ip(want),
                "{peer} {forwarded:?}"
            );
        }
    }
}
