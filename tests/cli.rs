//! The command line as a user meets it: help in sections with examples that work, strict HOST
//! parsing with the accepted forms in the error, and `--print-ssh-config` that keeps every
//! flag it is given, refuses what it would drop, and names the binary the way ssh will find it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;

/// Runs iap-ssh with `args` in `dir` (its state folder too), `PATH` as given.
fn run_iap_ssh(dir: &Path, args: &[&str], path_env: Option<&str>) -> Output {
    let mut cmd = iap_ssh(dir).command();
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    cmd.current_dir(dir).args(args);
    run_with_timeout(&mut cmd, Duration::from_secs(30))
}

#[test]
fn help_comes_in_sections_with_examples() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_iap_ssh(dir.path(), &["--help"], None);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for section in ["Options:", "Examples:", "Notes:", "Error codes:"] {
        assert!(text.contains(section), "no {section} in:\n{text}");
    }
    assert!(
        text.contains("ssh -o ProxyCommand='iap-ssh %h %p'"),
        "{text}"
    );
    assert!(text.contains("4 not authorized (4033)"), "{text}");
    // The --print-ssh-config example runs as written.
    let example = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("iap-ssh --print-ssh-config"))
        .expect("a --print-ssh-config example");
    let words: Vec<&str> = example
        .split(" >>")
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .collect();
    let out = run_iap_ssh(dir.path(), &words, None);
    assert!(out.status.success(), "{example}: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Host *.iap"));
}

#[test]
fn host_parsing_is_strict_and_shows_the_forms() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_iap_ssh(dir.path(), &["vm-1.zone-a.proj.extra", "22"], None);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("does not match INSTANCE[.ZONE[.PROJECT]]")
            && err.contains("\"proj.extra\" is not a project id"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    // A name with another suffix than --host-suffix says which suffix to pass.
    let out = run_iap_ssh(
        dir.path(),
        &["--host-suffix", ".gcp", "vm-1.zone-a.proj.iap", "22"],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr_of(&out).contains("pass --host-suffix .iap"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn print_ssh_config_keeps_every_flag_and_refuses_what_it_would_drop() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), "").unwrap();
    let out = run_iap_ssh(
        dir.path(),
        &[
            "--print-ssh-config",
            "--project",
            "my-proj",
            "--ca-file",
            "ca.pem",
            "--resume-timeout",
            "60",
            "--no-token-cache",
            "-v",
        ],
        Some("/nonexistent"),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("ProxyCommand"))
        .unwrap();
    let ca = dir.path().join("ca.pem").display().to_string();
    for want in [
        "--project my-proj",
        &format!("--ca-file {ca}"),
        "--resume-timeout 60",
        "--no-token-cache",
        " -v ",
    ] {
        assert!(line.contains(want), "{want:?} missing from {line:?}");
    }
    // Not on PATH: the absolute path of the binary.
    let bin = iap_ssh_bin().canonicalize().unwrap();
    assert!(
        line.contains(&format!("ProxyCommand {} ", bin.display())),
        "{line}"
    );

    for (args, word) in [
        (vec!["--print-ssh-config", "vm-1", "22"], "drop HOST PORT"),
        (vec!["--print-ssh-config", "--check"], "--check"),
        (
            vec!["--print-ssh-config", "--listen", "127.0.0.1:0"],
            "--listen",
        ),
    ] {
        let out = run_iap_ssh(dir.path(), &args, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(
            stderr_of(&out).contains(word),
            "{args:?}: {}",
            stderr_of(&out)
        );
        assert!(out.stdout.is_empty(), "{args:?} printed a block anyway");
    }
}

#[test]
fn print_ssh_config_names_the_binary_as_path_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = iap_ssh_bin().canonicalize().unwrap();
    let bin_dir = bin_dir.parent().unwrap().display().to_string();
    let out = run_iap_ssh(
        dir.path(),
        &["--print-ssh-config"],
        Some(&format!("/nonexistent:{bin_dir}")),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("    ProxyCommand iap-ssh %h %p\n"),
        "PATH finds this binary, so its name is enough:\n{text}"
    );
}

#[test]
fn conflicting_modes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (args, word) in [
        (
            vec!["--check", "--listen", "127.0.0.1:0", "vm-1.z.p", "22"],
            "separate modes",
        ),
        (
            vec!["--no-check", "vm-1.z.p", "22"],
            "--no-check goes with --listen",
        ),
    ] {
        let out = run_iap_ssh(dir.path(), &args, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(
            stderr_of(&out).contains(word),
            "{args:?}: {}",
            stderr_of(&out)
        );
    }
}

/// A backend that accepts and holds connections (enough for `--check`).
fn backend() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

/// The configuration file: its settings apply below flags and the environment and above
/// gcloud's configuration, and `--check` says where each came from.
#[test]
fn the_configuration_file_fills_in_what_flags_and_environment_do_not() {
    let relay = spawn_relay(&RelaySpec::standard(
        "user:alice@example.com",
        "config-file-token",
    ));
    let port = backend().to_string();
    let dir = tempfile::tempdir().unwrap();
    let token = write_token_file(dir.path(), "config-file-token");
    let conf_dir = dir.path().join("conf");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::copy(relay.ca_pem(), conf_dir.join("relay-ca.pem")).unwrap();
    let config = conf_dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "endpoint = \"{}\"\nca_file = \"relay-ca.pem\"\nhost_suffix = \".corp\"\nproject = \"{PROJECT}\"\nzone = \"{ZONE}\"\nresume_timeout_secs = 30\n",
            relay.url
        ),
    )
    .unwrap();
    let run = |extra_env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = iap_ssh(dir.path()).command();
        cmd.env("IAP_SSH_CONFIG", &config);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.args(["--check", "--no-token-cache", "--access-token-file"])
            .arg(&token)
            .args(args);
        run_with_timeout(&mut cmd, Duration::from_secs(60))
    };
    let host = format!("{INSTANCE}.corp");
    let out = run(&[], &[&host, &port]);
    assert!(out.status.success(), "{}", describe(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    let from_file = format!("(config file {})", config.display());
    for name in [
        "endpoint",
        "ca-file",
        "host-suffix",
        "resume-timeout",
        "project",
        "zone",
    ] {
        let line = report
            .lines()
            .find(|l| {
                l.trim_start_matches("settings:")
                    .trim_start()
                    .starts_with(&format!("{name} "))
            })
            .unwrap_or_else(|| panic!("no {name} setting in:\n{report}"));
        assert!(line.ends_with(&from_file), "{line}");
    }
    assert!(
        report.contains(&format!(" project {PROJECT} (config file")),
        "{report}"
    );

    // The environment wins over the file, and a flag over both.
    let out = run(&[("CLOUDSDK_CORE_PROJECT", "other-proj")], &[&host, &port]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(" project other-proj (CLOUDSDK_CORE_PROJECT)"),
        "{report}"
    );
    // No binding covers that project: the relay says not authorized.
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let out = run(
        &[("CLOUDSDK_CORE_PROJECT", "other-proj")],
        &["--project", PROJECT, "--host-suffix", ".corp", &host, &port],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!(" project {PROJECT} (--project)")),
        "{report}"
    );
    assert!(
        report.contains(" host-suffix .corp (--host-suffix)"),
        "{report}"
    );

    // A mistyped key is a one-line error that names the file.
    std::fs::write(&config, "endpont = \"wss://x\"\n").unwrap();
    let out = run(&[], &[&host, &port]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("unknown field `endpont`") && err.contains(&config.display().to_string()),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
