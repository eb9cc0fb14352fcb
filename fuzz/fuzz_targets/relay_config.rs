//! `relay.toml` parsing and checking (`RelayConfig::parse`): any text is a config or an error
//! message, never a panic. Paths resolve against a folder that does not exist, so nothing is
//! read from disk.
#![no_main]

use std::path::Path;

use iap_ssh::relay::config::RelayConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match RelayConfig::parse(text, Path::new("/nonexistent/iap-ssh-fuzz")) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(e) => assert!(!format!("{e:#}").is_empty()),
    }
});
