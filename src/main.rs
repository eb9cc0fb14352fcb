//! `iap-ssh`: SSH (or any TCP) through an Identity-Aware Proxy relay.
//!
//! This file reads the command line and the environment (the library never does), picks the
//! mode (stdio, `--listen`, `--check`, `--print-ssh-config`), builds the runtime, and turns the
//! outcome into one stderr line and an exit status.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use argh::FromArgs;
use iap_ssh::client::cli::{Args, short_forms};
use iap_ssh::client::destination::TargetArgs;
use iap_ssh::client::ssh_config::SshConfigBlock;
use iap_ssh::client::tunnel::TunnelConfig;
use iap_ssh::client::{Error, ExitKind, Options, check, listen, options, stdio, user_config};
use tokio_util::sync::CancellationToken;

/// The suffix stripped from HOST when neither `--host-suffix` nor the configuration file says.
const DEFAULT_HOST_SUFFIX: &str = ".iap";

/// What `main` reads from the environment on the library's behalf.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn home_dir(sub: &str) -> Option<PathBuf> {
    env("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(sub))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(code) => return code,
    };
    if args.version {
        println!("iap-ssh {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if args.print_ssh_config {
        return print_ssh_config(&args);
    }
    let listen = match args.listen.as_deref().map(listen::parse_addr).transpose() {
        Ok(listen) => listen,
        Err(e) => return fail(e),
    };
    if listen.is_some() && args.check {
        return fail(Error::usage(
            "--check and --listen are separate modes: give one (--listen checks at start-up)",
        ));
    }
    if args.no_check && listen.is_none() {
        return fail(Error::usage("--no-check goes with --listen"));
    }
    iap_ssh::logging::init_stderr(args.verbose, if listen.is_some() { "info" } else { "warn" });
    // google-cloud-auth signs and speaks TLS through the process's rustls provider: ring,
    // the one crypto library in this program. An error means one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match build_config(&args) {
        Ok(config) => config,
        Err(e) => return fail(e),
    };
    if let Some(code) = reexec_for_token_proxy(&config) {
        return code;
    }
    match listen {
        Some(addr) => run_listen(config, addr, !args.no_check),
        None if args.check => run_check(&config),
        None => run_stdio(&config),
    }
}

fn build_config(args: &Args) -> Result<TunnelConfig, Error> {
    let [host, port] = <[String; 2]>::try_from(args.destination.clone()).unwrap_or_default();
    if host.is_empty() || port.is_empty() {
        return Err(Error::usage("expected HOST PORT (try --help)"));
    }
    let Ok(port) = port.parse::<u16>() else {
        return Err(Error::usage(format!(
            "PORT {port:?} is not a number from 1 to 65535"
        )));
    };
    let token_cache_dir = (!args.no_token_cache)
        .then(|| {
            env("XDG_CACHE_HOME")
                .filter(|d| d.starts_with('/'))
                .map(PathBuf::from)
                .or_else(|| home_dir(".cache"))
        })
        .flatten()
        .map(|d| d.join("iap-ssh"));
    let gcloud_config_dir = env("CLOUDSDK_CONFIG")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| home_dir(".config/gcloud"));
    // The user's configuration file: each flag given wins over it.
    let file = match user_config::location(&env) {
        Some((path, named)) => user_config::load(&path, named)?,
        None => None,
    };
    let merged = options::merge(args, file.as_ref());
    let options = Options {
        target: TargetArgs {
            host,
            suffix: merged
                .get("host-suffix")
                .unwrap_or(DEFAULT_HOST_SUFFIX)
                .to_owned(),
            project: args.project.clone(),
            zone: args.zone.clone(),
            interface: args.interface.clone(),
            region: args.region.clone(),
            network: args.network.clone(),
            dest_group: args.dest_group.clone(),
        },
        port,
        endpoint: merged.get("endpoint").map(str::to_owned),
        ca_file: merged.get("ca-file").map(PathBuf::from),
        access_token_file: args.access_token_file.clone(),
        credentials: args.credentials.clone(),
        credentials_file: args.credentials_file.clone(),
        client_cert: args.client_cert.clone(),
        client_key: args.client_key.clone(),
        proxy: merged.get("proxy").map(str::to_owned),
        token_cache_dir,
        gcloud_config_dir,
        home_adc_file: home_dir(".config/gcloud/application_default_credentials.json"),
        gcloud_program: env("PATH").and_then(|p| iap_ssh::client::gcloud::find_program(&p)),
        cloudsdk_env: {
            let mut vars: Vec<(String, String)> = std::env::vars()
                .filter(|(k, _)| k.starts_with("CLOUDSDK_"))
                .collect();
            vars.sort();
            vars
        },
        on_gce: on_gce(),
        resume_timeout: merged
            .get("resume-timeout")
            .and_then(|s| s.parse::<u64>().ok())
            .map(std::time::Duration::from_secs),
        request_reason: args.request_reason.clone(),
        universe_domain: args.universe_domain.clone(),
        user_config: file,
        origins: merged.origins,
    };
    options.into_config(&env)
}

/// Whether the machine says it is a Compute Engine VM, as Google's libraries check before
/// they ask the metadata server: a file read, no network probe.
fn on_gce() -> bool {
    std::fs::read_to_string("/sys/class/dmi/id/product_name")
        .is_ok_and(|name| name.trim().starts_with("Google"))
}

/// Marks a process that has already set its proxy environment for google-cloud-auth.
const PROXY_ENV_MARK: &str = "IAP_SSH_TOKEN_PROXY_SET";

/// google-cloud-auth builds its own HTTP clients, which take their proxy from the environment
/// only, and a Rust 2024 program may not change its own environment without `unsafe`. So when
/// the library is the token source and the environment does not already say what the tunnel
/// chose (`--proxy`, gcloud's `proxy/*`, `HTTPS_PROXY`), iap-ssh runs itself again, once,
/// with `HTTPS_PROXY` and `HTTP_PROXY` set to that choice (or cleared). Nothing has been read
/// from stdin yet, so the new image takes over the same connection. Returns the exit code
/// when the re-run could not start.
fn reexec_for_token_proxy(config: &TunnelConfig) -> Option<ExitCode> {
    use std::os::unix::process::CommandExt;
    if !config.credentials.uses_library() || env(PROXY_ENV_MARK).is_some() {
        return None;
    }
    let want = config
        .token_proxy
        .as_ref()
        .map(iap_ssh::client::proxy::Proxy::url);
    let names = [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "https_proxy",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ];
    let current: Vec<Option<String>> = names.iter().map(|n| env(n)).collect();
    let matches = match &want {
        Some(url) => {
            current.first() == Some(&Some(url.clone()))
                && current.get(1) == Some(&Some(url.clone()))
                && current.iter().skip(2).all(Option::is_none)
        }
        None => current.iter().all(Option::is_none),
    };
    if matches {
        return None;
    }
    let program = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            return Some(fail(Error::other(format!(
                "finding this program to set its proxy: {e}"
            ))));
        }
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(std::env::args_os().skip(1))
        .env(PROXY_ENV_MARK, "1");
    for name in names {
        cmd.env_remove(name);
    }
    if let Some(url) = want {
        cmd.env("HTTPS_PROXY", &url).env("HTTP_PROXY", &url);
    }
    tracing::debug!("running again with the token proxy in the environment");
    let e = cmd.exec();
    Some(fail(Error::other(format!(
        "running again with the proxy set: {e}"
    ))))
}

fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        // One ssh connection per process: a single-threaded runtime starts fastest.
        tokio::runtime::Builder::new_current_thread()
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| fail(Error::other(format!("starting the runtime: {e}"))))
}

fn run_stdio(config: &TunnelConfig) -> ExitCode {
    let runtime = match runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let cancel = CancellationToken::new();
    let result = runtime.block_on(async {
        iap_ssh::signals::cancel_on_signal(cancel.clone());
        stdio::run(config, &cancel).await
    });
    // The stdin thread may still be blocked in read(); it does not keep the process alive.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn run_check(config: &TunnelConfig) -> ExitCode {
    let runtime = match runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let report = runtime.block_on(check::run(config));
    // --check is not stdio mode: its diagnosis is its output.
    let mut out = std::io::stdout().lock();
    for line in report.lines() {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
    match report.result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn run_listen(config: TunnelConfig, addr: SocketAddr, startup_check: bool) -> ExitCode {
    let runtime = match runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let config = Arc::new(config);
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Error::usage(format!(
                "listening on {addr}: {e}: pick another address or port (port 0 picks a free one)"
            ))
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::other(format!("reading the listening address: {e}")))?;
        if startup_check {
            eprintln!("Testing if tunnel connection works.");
            check::run(&config).await.result?;
        }
        // gcloud's readiness line, which scripts wait for; flushed at once.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "Listening on port [{}].", bound.port());
        let _ = out.flush();
        drop(out);
        let cancel = CancellationToken::new();
        iap_ssh::signals::cancel_on_signal(cancel.clone());
        let summary = listen::run(config.clone(), listener, cancel).await;
        eprintln!("iap-ssh: stopped listening on {bound}: {summary}");
        Ok(())
    });
    // Tunnels abandoned after the shutdown grace must not hold the process.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// The program name for a printed ProxyCommand: `iap-ssh` when `PATH` finds this very
/// binary (the block then survives upgrades and moves), else the absolute path.
fn program_for_ssh_config() -> String {
    let exe = std::env::current_exe().ok();
    let this = exe.as_ref().and_then(|p| std::fs::canonicalize(p).ok());
    let on_path = env("PATH").into_iter().flat_map(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("iap-ssh"))
            .collect::<Vec<_>>()
    });
    for candidate in on_path {
        if let Ok(found) = std::fs::canonicalize(&candidate) {
            // The first iap-ssh on PATH is the one ssh would run.
            if this.as_ref() == Some(&found) {
                return "iap-ssh".to_owned();
            }
            break;
        }
    }
    exe.and_then(|p| p.to_str().map(str::to_owned))
        .unwrap_or_else(|| "iap-ssh".to_owned())
}

fn print_ssh_config(args: &Args) -> ExitCode {
    // Everything given is either carried into the block or refused: nothing is dropped.
    let refuse = |what: &str| {
        fail(Error::usage(format!(
            "--print-ssh-config does not go with {what}"
        )))
    };
    if !args.destination.is_empty() {
        return fail(Error::usage(
            "--print-ssh-config prints a block for every HOST: drop HOST PORT (ssh fills in %h %p)",
        ));
    }
    if args.check {
        return refuse("--check (one mode at a time)");
    }
    if args.listen.is_some() || args.no_check {
        return refuse("--listen or --no-check (a ProxyCommand uses stdin and stdout)");
    }
    // ssh runs the ProxyCommand in its own working directory: paths become absolute.
    let cwd = std::env::current_dir().ok();
    let options = options::proxy_command(args, cwd.as_deref());
    let block = SshConfigBlock {
        program: program_for_ssh_config(),
        // The Host pattern follows the suffix iap-ssh will strip: the flag's, else the
        // configuration file's (read at run time, so not copied into the block).
        suffix: match &args.host_suffix {
            Some(s) => s.clone(),
            None => match user_config::location(&env) {
                Some((path, named)) => match user_config::load(&path, named) {
                    Ok(file) => file.and_then(|f| f.get("host-suffix").map(str::to_owned)),
                    Err(e) => return fail(e),
                },
                None => None,
            }
            .unwrap_or_else(|| DEFAULT_HOST_SUFFIX.to_owned()),
        },
        options,
    };
    let mut out = std::io::stdout().lock();
    match out
        .write_all(block.render().as_bytes())
        .and_then(|()| out.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(Error::other(format!("writing to stdout: {e}"))),
    }
}

fn parse_args() -> Result<Args, ExitCode> {
    let argv = short_forms(std::env::args().collect());
    let strs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (cmd, rest) = strs
        .split_first()
        .map(|(c, r)| (*c, r))
        .unwrap_or(("iap-ssh", &[]));
    Args::from_args(&[cmd], rest).map_err(|early| match early.status {
        Ok(()) => {
            println!("{}", early.output);
            ExitCode::SUCCESS
        }
        Err(()) => {
            eprint!("iap-ssh: {}", early.output);
            ExitCode::from(ExitKind::Usage.code())
        }
    })
}

/// Prints `e` as the one stderr line and turns its kind into the exit status.
fn fail(e: Error) -> ExitCode {
    eprintln!("iap-ssh: {e}");
    ExitCode::from(e.kind.code())
}
