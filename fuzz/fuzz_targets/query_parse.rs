//! The relay's `/v4/connect` and `/v4/reconnect` query parsers: any query parses or gives a
//! typed error, and what parses survives the client's encoder unchanged (first byte picks the
//! parser, the rest is the query).
#![no_main]

use iap_ssh::target::{Target, parse_connect_query, parse_reconnect_query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let query = String::from_utf8_lossy(rest);
    if which & 1 == 0 {
        match parse_connect_query(&query) {
            Ok((target, port)) => {
                assert_ne!(port, 0);
                let again = parse_connect_query(&target.connect_query(port));
                assert_eq!(again, Ok((target.clone(), port)), "query {query:?}");
                let shown = target.describe(port);
                assert!(!shown.contains('\n'), "{shown:?}");
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    } else {
        match parse_reconnect_query(&query) {
            Ok(q) => {
                let target = Target::Instance {
                    project: "p".into(),
                    zone: q.zone.clone().unwrap_or_else(|| "z".into()),
                    instance: "i".into(),
                    interface: "nic0".into(),
                };
                let again = parse_reconnect_query(&target.reconnect_query(&q.sid, q.ack))
                    .expect("a reconnect query we built parses");
                assert_eq!((&again.sid, again.ack), (&q.sid, q.ack), "query {query:?}");
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});
