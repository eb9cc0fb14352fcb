//! `iap-relay`: a self-hosted identity-aware relay speaking Google's IAP TCP-forwarding
//! protocol.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use argh::FromArgs;
use iap_ssh::relay::config::{ConfigProblems, RelayConfig};
use iap_ssh::relay::serve::{self, Relay};
use iap_ssh::relay::{check, init};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// identity-aware TCP forwarding relay: checks each client's bearer token and the bindings in
/// its configuration, then joins the client's WebSocket to the target's TCP port. Prints
/// "iap-relay listening on wss://ADDR" on stdout when ready (and "iap-relay admin on ADDR"
/// when an admin address is set); logs go to stderr (RUST_LOG). SIGHUP reloads the
/// configuration and certificate; SIGTERM or SIGINT drains and exits.
/// First relay: iap-relay init DIR, then iap-relay --config DIR/relay.toml.
/// Exit status: 0 ok, 1 failure (or problems found by --check-config), 2 usage.
#[derive(FromArgs)]
struct Args {
    /// path of relay.toml
    #[argh(option)]
    config: Option<PathBuf>,
    /// check the configuration and the files it names, list every problem, and exit
    #[argh(switch)]
    check_config: bool,
    /// with --check-config: also fetch JWKS URLs
    #[argh(switch)]
    online: bool,
    /// more diagnostics on stderr (-v, -vv)
    #[argh(switch, short = 'v')]
    verbose: u8,
    /// print the version and exit (also -V)
    #[argh(switch)]
    version: bool,
    #[argh(subcommand)]
    command: Option<Command>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Init(InitArgs),
}

/// write a private CA, a server certificate signed by it, a static token (DIR/token, mode
/// 0600) and a commented relay.toml that runs as is: iap-relay --config DIR/relay.toml.
/// Existing files are never overwritten.
#[derive(FromArgs)]
#[argh(subcommand, name = "init")]
struct InitArgs {
    /// folder to write into (created when missing)
    #[argh(positional, arg_name = "DIR")]
    dir: PathBuf,
    /// DNS name or IP address the server certificate is valid for; repeat for more
    /// (default: localhost and 127.0.0.1)
    #[argh(option)]
    name: Vec<String>,
    /// address the relay listens on (default: 127.0.0.1:8443)
    #[argh(option)]
    listen: Option<String>,
    /// print the token once on stdout instead of writing DIR/token
    #[argh(switch)]
    print_token: bool,
}

/// Exit status for usage errors, as iap-ssh.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(code) => return code,
    };
    if args.version {
        println!("iap-relay {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Init(init)) = &args.command {
        if args.config.is_some() || args.check_config || args.online {
            return usage("init takes no --config, --check-config or --online");
        }
        return run_init(init);
    }
    let Some(config) = args.config.clone() else {
        return usage("--config FILE is required (or iap-relay init DIR to write one; try --help)");
    };
    if args.online && !args.check_config {
        return usage("--online goes with --check-config");
    }
    iap_ssh::logging::init_stderr(args.verbose, "info");
    if args.check_config {
        return check_config(&config, args.online);
    }
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<ConfigProblems>() {
                Some(problems) => {
                    for p in &problems.0 {
                        eprintln!("iap-relay: relay config {}: {p}", config.display());
                    }
                }
                None => eprintln!("iap-relay: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Parses the command line. `-h`, `-V` and `-vv` are rewritten first: argh knows only
/// `--help`, and counts `-v` only when repeated as separate words.
fn parse_args() -> Result<Args, ExitCode> {
    let argv: Vec<String> = std::env::args().collect();
    // Usage text names the program as people type it, not by the path it was run from.
    let (cmd, rest) = ("iap-relay", argv.get(1..).unwrap_or_default());
    let rest = normalise(rest);
    let strs: Vec<&str> = rest.iter().map(String::as_str).collect();
    Args::from_args(&[cmd], &strs).map_err(|early| match early.status {
        Ok(()) => {
            println!("{}", early.output);
            ExitCode::SUCCESS
        }
        Err(()) => {
            eprint!("iap-relay: {}", early.output);
            ExitCode::from(USAGE)
        }
    })
}

/// `-h` → `--help`, `-V` → `--version`, `-vv` → `-v -v`; option values and anything after
/// `--` are left alone.
fn normalise(args: &[String]) -> Vec<String> {
    const TAKES_VALUE: [&str; 3] = ["--config", "--name", "--listen"];
    let mut out = Vec::with_capacity(args.len());
    let mut value_next = false;
    let mut literal = false;
    for arg in args {
        if value_next || literal {
            value_next = false;
            out.push(arg.clone());
            continue;
        }
        match arg.as_str() {
            "--" => {
                literal = true;
                out.push(arg.clone());
            }
            "-h" => out.push("--help".into()),
            "-V" => out.push("--version".into()),
            a if a.len() > 2 && a.starts_with('-') && a.bytes().skip(1).all(|b| b == b'v') => {
                out.extend(std::iter::repeat_n("-v".to_owned(), a.len() - 1));
            }
            a => {
                value_next = TAKES_VALUE.contains(&a);
                out.push(arg.clone());
            }
        }
    }
    out
}

fn usage(message: &str) -> ExitCode {
    eprintln!("iap-relay: {message}");
    ExitCode::from(USAGE)
}

fn run_init(args: &InitArgs) -> ExitCode {
    let listen = match args
        .listen
        .as_deref()
        .unwrap_or(init::DEFAULT_LISTEN)
        .parse()
    {
        Ok(addr) => addr,
        Err(_) => {
            return usage("--listen must be an address and port, e.g. 0.0.0.0:443 or [::1]:8443");
        }
    };
    let opts = init::InitOptions {
        dir: args.dir.clone(),
        names: args.name.clone(),
        listen,
        print_token: args.print_token,
    };
    let written = match init::init(&opts) {
        Ok(written) => written,
        Err(e) => {
            eprintln!("iap-relay: init {}: {e:#}", args.dir.display());
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    let config = args.dir.join(init::files::CONFIG);
    let ca = args.dir.join(init::files::CA);
    let (project, zone, name) = init::EXAMPLE_TARGET;
    let mut text = String::new();
    for f in &written.files {
        text.push_str(&format!(
            "wrote {}
",
            f.display()
        ));
    }
    let token_arg = match &written.token {
        // Shown this once: the relay keeps only its SHA-256.
        Some(token) => {
            text.push_str(&format!(
                "token (shown once; save it to a file of mode 0600): {token}
"
            ));
            "FILE".to_owned()
        }
        None => args.dir.join(init::files::TOKEN).display().to_string(),
    };
    text.push_str(&format!(
        "start:   iap-relay --config {}
connect: iap-ssh --endpoint {} --ca-file {} --access-token-file {token_arg} {name}.{zone}.{project} 22
",
        config.display(),
        written.endpoint,
        ca.display(),
    ));
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iap-relay: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Lists every problem in `path` and the files it names, one line each; creates nothing.
fn check_config(path: &Path, online: bool) -> ExitCode {
    let shown = path.display();
    let (config, mut problems) = match std::fs::read_to_string(path) {
        Ok(text) => RelayConfig::parse_all(&text, path.parent().unwrap_or(Path::new("."))),
        Err(e) => (None, vec![format!("cannot be read: {e}")]),
    };
    if let Some(config) = &config {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("iap-relay: starting the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        problems.extend(runtime.block_on(check::problems(config, online)));
    }
    if let Some(warning) = config.as_ref().and_then(RelayConfig::plaintext_warning) {
        eprintln!("iap-relay: relay config {shown}: warning: {warning}");
    }
    if problems.is_empty() {
        println!("iap-relay: {shown} is valid");
        return ExitCode::SUCCESS;
    }
    for p in &problems {
        eprintln!("iap-relay: relay config {shown}: {p}");
    }
    ExitCode::FAILURE
}

fn run(path: &Path) -> anyhow::Result<()> {
    let config = RelayConfig::load(path)?;
    if let Some(warning) = config.plaintext_warning() {
        warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listen = config.listen;
        let admin_listen = config.admin_listen;
        let relay = Arc::new(Relay::new(config).await?);
        let listener = bind(listen).map_err(|e| anyhow::anyhow!("binding {listen}: {e}"))?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        // The admin endpoint outlives the drain, so a load balancer sees /healthz turn 503.
        let admin_stop = CancellationToken::new();
        let admin = match admin_listen {
            Some(admin_addr) => {
                let admin = tokio::net::TcpListener::bind(admin_addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("binding admin address {admin_addr}: {e}"))?;
                let bound = admin.local_addr()?;
                let (metrics, draining) = (relay.metrics(), relay.draining());
                tokio::spawn(iap_ssh::relay::admin::serve(admin, metrics, draining, admin_stop.clone()));
                Some(bound)
            }
            None => None,
        };
        // Handlers first: once the readiness line is out, a supervisor may signal at once, and
        // SIGHUP's default action would end the process.
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "iap-relay listening on {}://{addr}", relay.scheme())?;
        if let Some(admin) = admin {
            writeln!(stdout, "iap-relay admin on http://{admin}")?;
        }
        stdout.flush()?;
        drop(stdout);

        let serving = tokio::spawn(serve::serve(relay.clone(), listener, stop.clone()));
        loop {
            tokio::select! {
                _ = hup.recv() => match relay.reload(path).await {
                    Ok(revoked) => info!(revoked, "configuration reloaded"),
                    Err(e) => error!(error = %format!("{e:#}"), "reload failed; keeping the running configuration"),
                },
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        info!("stopping: draining live sessions");
        stop.cancel();
        let _ = serving.await;
        admin_stop.cancel();
        Ok(())
    })
}

/// Listens with a deep accept queue: tokio's default of 1024 overflows when thousands of
/// clients connect at once, and SYN cookies then leave clients believing they are connected.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
