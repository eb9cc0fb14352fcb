//! `iap-relay`: a self-hosted identity-aware relay speaking Google's IAP TCP-forwarding
//! protocol.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use argh::FromArgs;
use iap_ssh::relay::config::RelayConfig;
use iap_ssh::relay::server::{self, Relay};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// identity-aware TCP forwarding relay: checks each client's bearer token and the bindings in
/// its configuration, then joins the client's WebSocket to the target's TCP port. Prints
/// "iap-relay listening on wss://ADDR" on stdout when ready (and "iap-relay admin on ADDR"
/// when an admin address is set); logs go to stderr (RUST_LOG). SIGHUP reloads the
/// configuration and certificate; SIGTERM or SIGINT drains and exits.
#[derive(FromArgs)]
struct Args {
    /// path of relay.toml
    #[argh(option)]
    config: PathBuf,
    /// check the configuration and exit
    #[argh(switch)]
    check_config: bool,
    /// more diagnostics on stderr (-v, -vv)
    #[argh(switch, short = 'v')]
    verbose: u8,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    iap_ssh::logging::init_stderr(args.verbose, "info");
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iap-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let config = RelayConfig::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listen = config.listen;
        let admin_listen = config.admin_listen;
        let relay = Arc::new(Relay::new(config).await?);
        if args.check_config {
            println!("iap-relay: {} is valid", args.config.display());
            return Ok(());
        }
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

        let serving = tokio::spawn(server::serve(relay.clone(), listener, stop.clone()));
        loop {
            tokio::select! {
                _ = hup.recv() => match relay.reload(&args.config).await {
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
