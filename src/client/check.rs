//! `--check`: open one tunnel, wait for the relay's session id, close it, and say what
//! happened. Listener mode runs the same check once at start-up, as gcloud does.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::error::Error;
use super::tunnel::TunnelConfig;
use crate::close;

/// How long to wait for the relay to answer our close before dropping the connection.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The result of a check, with the facts for the diagnosis.
#[derive(Debug)]
pub struct Report {
    /// The relay's `host:port`, and the proxy on the way if any.
    pub endpoint: String,
    /// Where the token came from, and whose it is when the credential says.
    pub credentials: String,
    /// The destination and port.
    pub target: String,
    /// The session id and time to it, or the failure.
    pub result: Result<(String, Duration), Error>,
    /// Where settings came from: `(name, "value (source)")`.
    pub origins: Vec<(String, String)>,
}

impl Report {
    /// The diagnosis, one `name: value` line each.
    pub fn lines(&self) -> Vec<String> {
        let result = match &self.result {
            Ok((_, took)) => format!("ok, tunnel opened in {} ms", took.as_millis()),
            Err(e) => format!("failed: {e}"),
        };
        let mut lines = vec![
            format!("endpoint:    {}", self.endpoint),
            format!("credentials: {}", self.credentials),
            format!("target:      {}", self.target),
        ];
        for (i, (name, value)) in self.origins.iter().enumerate() {
            let head = if i == 0 { "settings:" } else { "" };
            lines.push(format!("{head:<13}{name} {value}"));
        }
        lines.push(format!("result:      {result}"));
        lines
    }
}

/// Opens one tunnel and closes it at once.
pub async fn run(config: &TunnelConfig) -> Report {
    let started = Instant::now();
    let result = match config.connect().await {
        Ok((mut ws, sid)) => {
            let took = started.elapsed();
            let frame = CloseFrame {
                code: close::NORMAL.into(),
                reason: "".into(),
            };
            // The relay has already dialed the backend; a polite close lets it hang up cleanly.
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                let _ = ws.send(Message::Close(Some(frame))).await;
                while let Some(Ok(_)) = futures_util::StreamExt::next(&mut ws).await {}
            })
            .await;
            Ok((sid, took))
        }
        Err(e) => Err(e),
    };
    // After the connection, so that the principal learned with the token is shown too.
    let credentials = match config.credentials.identity() {
        Some(who) => format!("{} ({who})", config.credentials.describe()),
        None => config.credentials.describe(),
    };
    let endpoint = &config.dialer.endpoint;
    Report {
        endpoint: match endpoint.proxy() {
            Some(proxy) => format!(
                "{} (through the proxy at {})",
                endpoint.authority(),
                proxy.authority()
            ),
            None => endpoint.authority(),
        },
        credentials,
        target: config.target.describe(config.port),
        result,
        origins: config.origins.clone(),
    }
}
