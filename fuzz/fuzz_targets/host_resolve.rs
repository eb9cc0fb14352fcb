//! HOST resolution (`client::destination::resolve`) and the gcloud configuration parser.
//!
//! Input: lines `HOST`, suffix, --project, --zone, --interface, --region, --network,
//! --dest-group, CLOUDSDK_CORE_PROJECT, CLOUDSDK_COMPUTE_ZONE, fallback project, fallback zone;
//! a line `~` (or a missing line) is "not given". Whatever `iap-ssh` accepts, the relay's
//! query parser must accept too, unchanged.
#![no_main]

use iap_ssh::client::destination::{Fallback, TargetArgs, resolve};
use iap_ssh::client::gcloud_properties::GcloudProperties;
use iap_ssh::target::parse_connect_query;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let props = GcloudProperties::parse(text);
    for value in [&props.project, &props.zone].into_iter().flatten() {
        assert!(!value.is_empty() && value.trim() == value, "{value:?}");
    }

    let mut lines = text.split('\n');
    let mut next = || match lines.next() {
        None | Some("~") => None,
        Some(line) => Some(line.to_owned()),
    };
    let args = TargetArgs {
        host: next().unwrap_or_default(),
        suffix: next().unwrap_or_else(|| ".iap".into()),
        project: next(),
        zone: next(),
        interface: next(),
        region: next(),
        network: next(),
        dest_group: next(),
    };
    let (env_project, env_zone) = (next(), next());
    let fallback = Fallback {
        project: next().map(|p| (p, "fallback project".into())),
        zone: next().map(|z| (z, "fallback zone".into())),
        looked_at: vec!["a gcloud configuration".into()],
    };
    let env = move |name: &str| match name {
        "CLOUDSDK_CORE_PROJECT" => env_project.clone(),
        "CLOUDSDK_COMPUTE_ZONE" => env_zone.clone(),
        _ => None,
    };
    match resolve(&args, &env, &fallback) {
        Ok(target) => {
            for port in [1, 22, 65535] {
                let parsed = parse_connect_query(&target.connect_query(port));
                assert_eq!(parsed, Ok((target.clone(), port)), "args {args:?}");
            }
        }
        // A usage message is one line on the terminal, whatever HOST held.
        Err(e) => assert!(!e.to_string().contains(['\n', '\r']), "{e}"),
    }
});
