//! Unit tests of the client options: how flags, environment and files combine.

use std::collections::BTreeSet;

use argh::FromArgs;

use super::*;

fn parse(argv: &[&str]) -> Args {
    Args::from_args(&["iap-ssh"], argv).unwrap_or_else(|e| panic!("{}", e.output))
}

#[test]
fn the_table_and_the_command_line_agree() {
    let help = Args::from_args(&["iap-ssh"], &["--help"])
        .err()
        .map(|e| e.output)
        .unwrap_or_default();
    // Option lines start with two spaces and a dash; wrapped descriptions are indented more.
    let in_help: BTreeSet<&str> = help
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split([' ', ',']).find_map(|w| w.strip_prefix("--")))
        .filter(|name| *name != "help")
        .collect();
    let in_table: BTreeSet<&str> = OPTIONS.iter().map(|o| o.name).collect();
    assert_eq!(
        in_help, in_table,
        "--help and OPTIONS list different options"
    );
    assert_eq!(in_table.len(), OPTIONS.len(), "an option is listed twice");
    let keys: BTreeSet<&str> = file_keys().collect();
    assert_eq!(
        keys.len(),
        file_keys().count(),
        "a file key is listed twice"
    );

    // Each row reads its own field: give every option a value of its own at once.
    let mut argv: Vec<String> = Vec::new();
    let mut want = Vec::new();
    for (i, opt) in OPTIONS.iter().enumerate() {
        argv.push(format!("--{}", opt.name));
        let expected = match opt.kind {
            Kind::Switch | Kind::Count => Given::Times(1),
            Kind::Seconds => Given::Value(format!("{}", 100 + i)),
            Kind::Text | Kind::File | Kind::Source => Given::Value(format!("v{i}")),
        };
        if let Given::Value(v) = &expected {
            argv.push(v.clone());
        }
        want.push(expected);
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let args = parse(&argv);
    for (opt, want) in OPTIONS.iter().zip(want) {
        assert_eq!((opt.given)(&args), want, "--{}", opt.name);
        assert_eq!(
            takes_value(&format!("--{}", opt.name)),
            matches!(want, Given::Value(_)),
            "--{}",
            opt.name
        );
    }
    assert!(!takes_value("--help") && takes_value("--unknown"));
}

#[test]
fn proxy_command_carries_settings_in_table_order() {
    let args = parse(&[
        "-v",
        "--no-token-cache",
        "--credentials",
        "adc",
        "--ca-file",
        "ca.pem",
        "--zone",
        "z",
        "--check",
        "-v",
    ]);
    let got = proxy_command(&args, Some(Path::new("/w")));
    let want = [
        ("--zone", Some("z")),
        ("--ca-file", Some("/w/ca.pem")),
        ("--credentials", Some("adc")),
        ("--no-token-cache", None),
        ("-v", None),
        ("-v", None),
    ];
    let want: Vec<(String, Option<String>)> = want
        .iter()
        .map(|(f, v)| ((*f).to_owned(), v.map(str::to_owned)))
        .collect();
    assert_eq!(got, want);
    let args = parse(&["--credentials", "my.json"]);
    assert_eq!(
        proxy_command(&args, Some(Path::new("/w")))[0].1.as_deref(),
        Some("/w/my.json")
    );
}

#[test]
fn flags_win_over_the_file_and_say_so() {
    let file = Loaded {
        values: vec![
            ("endpoint", "wss://file".to_owned()),
            ("proxy", "http://me:s3cret@proxy:3128".to_owned()),
            ("project", "p".to_owned()),
        ],
        path: "/c.toml".into(),
    };
    let merged = merge(&parse(&["--endpoint", "wss://flag"]), Some(&file));
    assert_eq!(merged.get("endpoint"), Some("wss://flag"));
    assert_eq!(merged.get("proxy"), Some("http://me:s3cret@proxy:3128"));
    // Project and zone rank below the environment: the resolver takes them.
    assert_eq!(merged.get("project"), None);
    assert_eq!(
        merged.origins,
        [
            ("endpoint".to_owned(), "wss://flag (--endpoint)".to_owned()),
            (
                "proxy".to_owned(),
                "http://me:***@proxy:3128 (config file /c.toml)".to_owned()
            ),
        ]
    );
}

#[test]
fn passwords_in_urls_are_not_shown() {
    assert_eq!(
        without_password("http://me:s3cret@proxy:3128"),
        "http://me:***@proxy:3128"
    );
    assert_eq!(
        without_password("http://proxy:3128/x"),
        "http://proxy:3128/x"
    );
    assert_eq!(without_password("none"), "none");
}
