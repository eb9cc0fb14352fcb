//! `iap-ssh`: SSH (or any TCP) through an Identity-Aware Proxy relay.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use iap_ssh::client::config::TargetArgs;
use iap_ssh::client::{Options, stdio};
use iap_ssh::close::ExitKind;
use tokio_util::sync::CancellationToken;

/// tunnel ssh (or any tcp) through Identity-Aware Proxy TCP forwarding. stdin/stdout carry the
/// connection, so it works as an ssh ProxyCommand:
///   ssh -o ProxyCommand='iap-ssh %h %p' vm-1.us-central1-a.my-project.iap
/// HOST is INSTANCE[.ZONE[.PROJECT]] with an optional .iap suffix, or an IP address or FQDN
/// with --region and --network. Environment: CLOUDSDK_CORE_PROJECT, CLOUDSDK_COMPUTE_ZONE,
/// CLOUDSDK_AUTH_ACCESS_TOKEN_FILE, GOOGLE_APPLICATION_CREDENTIALS, RUST_LOG.
/// Exit status: 0 ok, 1 other failure, 2 usage, 3 authentication, 4 not authorized (4033),
/// 5 not found (4047), 6 backend unreachable (4003).
#[derive(FromArgs, Debug)]
struct Args {
    /// project of the instance (default: from HOST, CLOUDSDK_CORE_PROJECT)
    #[argh(option)]
    project: Option<String>,
    /// zone of the instance (default: from HOST, CLOUDSDK_COMPUTE_ZONE)
    #[argh(option)]
    zone: Option<String>,
    /// network interface of the instance (default: nic0)
    #[argh(option)]
    interface: Option<String>,
    /// region, for an IP address or FQDN target (with --network)
    #[argh(option)]
    region: Option<String>,
    /// VPC network, for an IP address or FQDN target (with --region)
    #[argh(option)]
    network: Option<String>,
    /// destination group, for an IP address or FQDN target
    #[argh(option)]
    dest_group: Option<String>,
    /// suffix stripped from HOST (default: .iap; empty for none)
    #[argh(option, default = "String::from(\".iap\")")]
    host_suffix: String,
    /// relay URL (default: wss://tunnel.cloudproxy.app/v4)
    #[argh(option)]
    endpoint: Option<String>,
    /// PEM file of CA certificates trusted besides the system roots
    #[argh(option)]
    ca_file: Option<PathBuf>,
    /// file holding an OAuth access token (also CLOUDSDK_AUTH_ACCESS_TOKEN_FILE)
    #[argh(option)]
    access_token_file: Option<PathBuf>,
    /// service-account key file (default: Application Default Credentials)
    #[argh(option)]
    credentials_file: Option<PathBuf>,
    /// more diagnostics on stderr (-v, -vv)
    #[argh(switch, short = 'v')]
    verbose: u8,
    /// print the version and exit
    #[argh(switch)]
    version: bool,
    /// HOST (INSTANCE[.ZONE[.PROJECT]], IP address or FQDN) and PORT
    #[argh(positional, arg_name = "HOST PORT")]
    destination: Vec<String>,
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
    iap_ssh::logging::init_stderr(args.verbose, "warn");
    let [host, port] = <[String; 2]>::try_from(args.destination).unwrap_or_default();
    if host.is_empty() || port.is_empty() {
        return fail(ExitKind::Usage, "expected HOST PORT (try --help)");
    }
    let Ok(port) = port.parse::<u16>() else {
        return fail(
            ExitKind::Usage,
            &format!("PORT {port:?} is not a number from 1 to 65535"),
        );
    };
    let options = Options {
        target: TargetArgs {
            host,
            suffix: args.host_suffix,
            project: args.project,
            zone: args.zone,
            interface: args.interface,
            region: args.region,
            network: args.network,
            dest_group: args.dest_group,
        },
        port,
        endpoint: args.endpoint,
        ca_file: args.ca_file,
        access_token_file: args.access_token_file,
        credentials_file: args.credentials_file,
    };
    let config = match options.into_config(&|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(e) => return fail(e.kind, &e.message),
    };
    // One ssh connection per process: a single-threaded runtime starts fastest.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(ExitKind::Other, &format!("starting the runtime: {e}")),
    };
    let cancel = CancellationToken::new();
    let result = runtime.block_on(async {
        iap_ssh::signals::cancel_on_signal(cancel.clone());
        stdio::run(&config, &cancel).await
    });
    // The stdin thread may still be blocked in read(); it does not keep the process alive.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e.kind, &e.message),
    }
}

fn parse_args() -> Result<Args, ExitCode> {
    let argv: Vec<String> = std::env::args().collect();
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

fn fail(kind: ExitKind, message: &str) -> ExitCode {
    eprintln!("iap-ssh: {message}");
    ExitCode::from(kind.code())
}
