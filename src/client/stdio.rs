//! ProxyCommand mode: one tunnel joined to this process's stdin and stdout.
//!
//! stdin and stdout are the session's local ends ([`crate::session::stdio`]): served by the
//! runtime when they are pipes or sockets, by two plain threads otherwise.

use std::io;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::error::Error;
use super::tunnel::TunnelConfig;
use crate::session::pump::Session;
use crate::session::state::DEFAULT_MAX_UNACKED;
use crate::session::stdio;

/// After the tunnel ends, how long to let the stdout thread finish writing what it holds.
const STDOUT_DRAIN_WAIT: Duration = Duration::from_secs(10);

/// Runs one tunnel over stdin/stdout until either side ends.
///
/// # Errors
/// An [`Error`] when the tunnel fails or stdout cannot take the received bytes.
pub async fn run(config: &TunnelConfig, cancel: &CancellationToken) -> Result<(), Error> {
    let (input, output, done) =
        stdio::open().map_err(|e| Error::other(format!("opening stdin and stdout: {e}")))?;
    let mut session = Session::new(input, output, DEFAULT_MAX_UNACKED);
    let result = config.run(&mut session, cancel).await;
    // Dropping the session closes the channel, so the writer thread finishes once it has
    // written and flushed everything it holds.
    drop(session);
    let written = done.wait(STDOUT_DRAIN_WAIT).await;
    match (result, written) {
        (Err(e), _) => Err(e),
        (Ok(()), Some(Err(e))) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(Error::other(format!("writing to stdout: {e}")))
        }
        (Ok(()), _) => Ok(()),
    }
}
