//! Diagnostics to stderr only: stdout may be the tunnel itself.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs a stderr logger. `RUST_LOG` wins when set; otherwise `default` (e.g. `warn`),
/// raised to `info` by one `-v` and `debug` by two. google-cloud-auth logs retries at warn with
/// details we do not want in an ssh user's terminal, so it is held to errors by default.
pub fn init_stderr(verbose: u8, default: &str) {
    let level = match verbose {
        0 => default,
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!("{level},google_cloud_auth=error,rustls=error"))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
