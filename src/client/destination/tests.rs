//! Unit tests of destination resolution: the HOST forms, flag and environment precedence,
//! the gcloud-configuration fallback, and the one-line errors.

use super::*;
use crate::target::tests::inst;

/// Runs `resolve` for one table row: HOST, `name=value` flags (suffix
/// defaults to `.iap`), and `P=`/`Z=` environment values or `cfg` for a
/// gcloud-configuration fallback.
fn run(host: &str, flags: &str, env: &str) -> Result<String, String> {
    let mut a = TargetArgs {
        host: host.into(),
        suffix: ".iap".into(),
        ..Default::default()
    };
    for (name, value) in flags.split_whitespace().filter_map(|f| f.split_once('=')) {
        let v = Some(value.to_owned());
        match name {
            "suffix" => a.suffix = value.into(),
            "project" => a.project = v,
            "zone" => a.zone = v,
            "interface" => a.interface = v,
            "region" => a.region = v,
            "network" => a.network = v,
            _ => a.dest_group = v,
        }
    }
    let label = "gcloud config default".to_owned();
    let mut fb = Fallback {
        looked_at: vec![label.clone(), "key file".into()],
        ..Default::default()
    };
    if env.contains("cfg") {
        fb.project = Some(("cfg-proj".into(), label.clone()));
        fb.zone = Some(("cfg-zone".into(), label));
    }
    let vars: Vec<(&str, &str)> = env
        .split_whitespace()
        .filter_map(|e| e.split_once('='))
        .collect();
    let lookup = |k: &str| {
        let short = if k == PROJECT_ENV { "P" } else { "Z" };
        vars.iter()
            .find(|(n, _)| *n == short)
            .map(|(_, v)| (*v).to_owned())
    };
    resolve(&a, &lookup, &fb)
        .map(|t| t.describe(22))
        .map_err(|e| e.to_string())
}

#[test]
fn resolve_table() {
    // HOST | flags | environment | Target::describe(22), or "!" and part of the error.
    let cases = "\
            vm-1.us-central1-a.my-proj.iap |  |  | vm-1 port 22 in my-proj/us-central1-a
            vm-1.us-central1-a.my-proj |  |  | vm-1 port 22 in my-proj/us-central1-a
            vm-1.z.example.com:proj.IAP |  |  | vm-1 port 22 in example.com:proj/z
            vm-1.z.p.corp | suffix=.corp interface=nic1 |  | vm-1 port 22 in p/z interface nic1
            vm-1.z.iap | suffix= project=p |  | vm-1 port 22 in iap/z
            vm-1.iap | zone=z project=p |  | vm-1 port 22 in p/z
            vm.hz.hp | zone=fz project=fp | P=ep Z=ez cfg | vm port 22 in hp/hz
            vm.hz | zone=fz project=fp | P=ep Z=ez cfg | vm port 22 in fp/hz
            vm | zone=fz project=fp | P=ep Z=ez cfg | vm port 22 in fp/fz
            vm | zone=fz | P=ep Z=ez cfg | vm port 22 in ep/fz
            vm |  | P=ep Z=ez cfg | vm port 22 in ep/ez
            vm |  | P= Z= cfg | vm port 22 in cfg-proj/cfg-zone
            10.0.0.5 | region=us-central1 network=default | P=ep Z=ez | 10.0.0.5 port 22 in ep/us-central1 network default
            fd00::5.iap | region=r network=n | P=ep | fd00::5 port 22 in ep/r network n
            [fd00::5] | region=r network=n | P=ep | fd00::5 port 22 in ep/r network n
            db.p.example.iap | region=r network=n group=g project=p |  | db.p.example port 22 in p/r network n group g
            vm-1 |  |  | !no zone for vm-1: give it as vm-1.ZONE.PROJECT, --zone, or CLOUDSDK_COMPUTE_ZONE (looked at: HOST, --zone, CLOUDSDK_COMPUTE_ZONE, gcloud config default, key file)
            vm-1.z |  |  | !no project for vm-1: give it as vm-1.z.PROJECT, --project, or CLOUDSDK_CORE_PROJECT (looked at: HOST, --project, CLOUDSDK_CORE_PROJECT, gcloud config default, key file)
            10.0.0.5 | region=r network=n |  | !no project for 10.0.0.5: give --project or CLOUDSDK_CORE_PROJECT (looked at: --project, CLOUDSDK_CORE_PROJECT, gcloud config default, key file)
            10.0.0.5 | region=r project=p |  | !--region and --network go together
            10.0.0.5 | network=n project=p |  | !--region and --network go together
            vm | group=g |  | !--dest-group needs --region and --network
            h | region=r network=n zone=z |  | !--zone and --interface are for instances: drop them
            10.0.0.5 | project=p |  | !HOST 10.0.0.5 is an address: add --region and --network
            fd00::5 | project=p |  | !is an address
            .iap |  |  | !HOST \".iap\" is empty: use INSTANCE
            vm..p |  |  | !HOST vm..p has an empty part
            vm\x07. |  |  | !HOST vm\\u{7}. has an empty part
            VM-1.z.p |  |  | !invalid instance name \"VM-1\" from HOST: use 1-63 lowercase
            1vm.z.p |  |  | !starting with a letter
            vm-.z.p |  |  | !starting with a letter
            vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv.z.p |  |  | !1-63
            vm | zone= project=p |  | !invalid zone \"\" from --zone
            vm.bad_zone.p |  |  | !invalid zone \"bad_zone\" from HOST
            vm.z | project=My_Proj |  | !invalid project \"My_Proj\" from --project: use a project id
            vm.z |  | P=a/b | !invalid project \"a/b\" from CLOUDSDK_CORE_PROJECT
            a%b | region=r network=n project=p |  | !invalid host \"a%b\" from HOST
            h | region=R network=n project=p |  | !invalid region \"R\" from --region
            h | region=r network=n project=p group=G |  | !invalid destination group \"G\"
            vm.z.p | interface=nic/0 |  | !invalid interface
            vm.zone.proj.extra |  |  | !HOST vm.zone.proj.extra does not match INSTANCE[.ZONE[.PROJECT]] with the suffix \".iap\": \"proj.extra\" is not a project id
            vm.z.p.iap | suffix=.gcp |  | !\"p.iap\" is not a project id (e.g. my-project or example.com:my-project); if \".iap\" is a suffix, pass --host-suffix .iap
            vm.z.example.com | suffix= |  | !with no suffix
            vm.z.example.com:proj.x |  |  | !is not a project id
            vm.z | project=a.b |  | !invalid project \"a.b\" from --project
            vm.z | project=:p |  | !invalid project \":p\" from --project";
    for line in cases.lines() {
        let cols: Vec<&str> = line.trim().split(" | ").collect();
        let [h, flags, env, want] = cols[..] else {
            panic!("bad row {line}")
        };
        let got = run(h, flags.trim(), env.trim());
        match want.strip_prefix('!') {
            Some(part) => assert!(
                matches!(&got, Err(e) if e.contains(part)),
                "{line}\n{got:?}"
            ),
            None => assert_eq!(got, Ok(want.to_owned()), "{line}"),
        }
    }
}

#[test]
fn resolve_returns_exact_fields_and_one_line_errors() {
    let args = TargetArgs {
        host: "vm-1.z.p.iap".into(),
        suffix: ".iap".into(),
        ..Default::default()
    };
    let got = resolve(&args, &|_| None, &Fallback::default());
    assert_eq!(got, Ok(inst("p", "z", "vm-1", "nic0")));
    let args = TargetArgs {
        host: "vm.z".into(),
        ..Default::default()
    };
    let err =
        resolve(&args, &|_| Some("x\ny".into()), &Fallback::default()).map_err(|e| e.to_string());
    assert_eq!(err, Err("invalid project \"x\\ny\" from CLOUDSDK_CORE_PROJECT: use a project id such as my-project or example.com:my-project".into()));
}

#[test]
fn fallback_reads_the_active_configuration_then_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let gcloud = dir.path().join("gcloud");
    std::fs::create_dir_all(gcloud.join("configurations")).unwrap();
    let key = dir.path().join("key.json");
    std::fs::write(
        &key,
        r#"{"type":"service_account","project_id":"key-proj"}"#,
    )
    .unwrap();
    let write = |name: &str, text: &str| {
        std::fs::write(gcloud.join("configurations").join(name), text).unwrap()
    };
    write(
        "config_default",
        "[core]\nproject = def-proj\n[compute]\nzone = def-zone\n",
    );
    write("config_work", "[compute]\nzone = work-zone\n");

    let fb = Fallback::load(Some(&gcloud), None, Some(&key));
    assert_eq!(fb.project.as_ref().map(|p| p.0.as_str()), Some("def-proj"));
    assert!(
        fb.project
            .unwrap()
            .1
            .contains("config_default [core] project")
    );
    assert_eq!(fb.zone.map(|z| z.0), Some("def-zone".into()));
    assert_eq!(fb.looked_at.len(), 2);

    std::fs::write(gcloud.join("active_config"), "work\n").unwrap();
    let fb = Fallback::load(Some(&gcloud), None, Some(&key));
    assert_eq!(fb.zone.map(|z| z.0), Some("work-zone".into()));
    assert_eq!(fb.project.map(|p| p.0), Some("key-proj".into()));

    // CLOUDSDK_ACTIVE_CONFIG_NAME wins over the active_config file.
    let fb = Fallback::load(Some(&gcloud), Some("default"), None);
    assert_eq!(fb.zone.map(|z| z.0), Some("def-zone".into()));

    let fb = Fallback::load(Some(&dir.path().join("missing")), None, None);
    assert!(fb.project.is_none() && fb.zone.is_none());
    assert!(
        fb.looked_at[0].contains("config_default"),
        "{:?}",
        fb.looked_at
    );

    // The full chain through resolve(): the environment beats the configuration file.
    let fb = Fallback::load(Some(&gcloud), Some("default"), Some(&key));
    let args = TargetArgs {
        host: "vm".into(),
        ..Default::default()
    };
    let env = |k: &str| (k == ZONE_ENV).then(|| "env-zone".to_owned());
    let got = resolve(&args, &env, &fb).map(|t| t.describe(22));
    assert_eq!(got, Ok("vm port 22 in def-proj/env-zone".into()));
}
