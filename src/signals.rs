//! Turning SIGINT, SIGTERM and SIGHUP into a cancellation, for `iap-ssh`'s `main`.
//!
//! SIGHUP matters: ssh sends it to its ProxyCommand when the session ends, and the tunnel
//! should then close in order rather than look to the relay like a lost connection.

use tokio_util::sync::CancellationToken;

/// Spawns a task that cancels `token` on the first SIGINT, SIGTERM or SIGHUP.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
        token.cancel();
    });
}
