//! `iap-relay`: a self-hosted identity-aware relay speaking Google's IAP TCP-forwarding
//! protocol.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use argh::FromArgs;
use iap_ssh::relay::config::RelayConfig;
use iap_ssh::relay::server::{self, Relay};
use tokio_util::sync::CancellationToken;

/// identity-aware TCP forwarding relay: checks each client's bearer token and the bindings in
/// its configuration, then joins the client's WebSocket to the target's TCP port. Prints
/// "iap-relay listening on wss://ADDR" on stdout when ready; logs go to stderr (RUST_LOG).
#[derive(FromArgs)]
struct Args {
    /// path of relay.toml
    #[argh(option)]
    config: PathBuf,
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
    let listen = config.listen;
    let relay = Arc::new(Relay::new(config)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding {listen}: {e}"))?;
        let addr = listener.local_addr()?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "iap-relay listening on {}://{addr}", relay.scheme())?;
        stdout.flush()?;
        drop(stdout);
        let cancel = CancellationToken::new();
        iap_ssh::signals::cancel_on_signal(cancel.clone());
        server::serve(relay, listener, cancel).await;
        Ok(())
    })
}
