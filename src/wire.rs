//! What both ends of a tunnel share on the wire: the WebSocket subprotocol, the WebSocket
//! limits, and the TLS client settings (the relay dials token-info and JWKS endpoints with
//! the same verified roots the client uses).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::frame::MAX_MESSAGE_LEN;

mod roots;

/// The WebSocket subprotocol of the IAP relay.
pub const SUBPROTOCOL: &str = "relay.tunnel.cloudproxy.app";

/// A client certificate for mutual TLS: PEM chain and PEM private key.
#[derive(Clone, Copy, Debug)]
pub struct ClientIdentity<'a> {
    /// `--client-cert`: the certificate chain, leaf first.
    pub cert: &'a Path,
    /// `--client-key`: its private key.
    pub key: &'a Path,
}

/// The TLS settings for a long-running process (the relay's token-info and JWKS clients):
/// system roots plus `ca_file`, ring crypto, HTTP/1.1. Start-up time does not matter there, so
/// this waits for the system roots and a missing trust set stops start-up.
///
/// # Errors
/// When `ca_file` cannot be read or holds no certificate, or no trusted root is found at all.
pub fn tls_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    build(ca_file.as_slice(), None, true)
}

/// The client's TLS settings for talking to relays, presenting a client certificate when
/// `client` is given (mutual TLS).
///
/// Unlike [`tls_config`], this does not wait for the system roots: they are parsed on a
/// thread of their own while the caller goes on to fetch a token and connect, and finding no
/// trusted root at all is reported by the first TLS handshake.
///
/// # Errors
/// When a CA file cannot be read or holds no certificate, or the client certificate and key
/// cannot be read or do not match.
pub fn tls_config_with_client(
    ca_files: &[&Path],
    client: Option<ClientIdentity<'_>>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    build(ca_files, client, false)
}

fn build(
    ca_files: &[&Path],
    client: Option<ClientIdentity<'_>>,
    wait_for_roots: bool,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    // The CA files are the user's own and small: read them now, so a bad one is a usage
    // error at start-up, as before.
    let mut extra = RootCertStore::empty();
    for &path in ca_files {
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading CA file {}", path.display()))?
        {
            let cert = cert.with_context(|| format!("parsing CA file {}", path.display()))?;
            extra.add(cert).with_context(|| {
                format!("CA file {} holds an unusable certificate", path.display())
            })?;
            added += 1;
        }
        if added == 0 {
            bail!("CA file {} holds no PEM certificate", path.display());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = roots::SystemRootsVerifier::start(extra, provider.clone());
    if wait_for_roots && let Err(e) = verifier.wait() {
        bail!("{e}");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("configuring TLS")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain = CertificateDer::pem_file_iter(id.cert)
                .with_context(|| format!("reading client certificate {}", id.cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing client certificate {}", id.cert.display()))?;
            if chain.is_empty() {
                bail!(
                    "client certificate file {} holds no PEM certificate",
                    id.cert.display()
                );
            }
            let key = PrivateKeyDer::from_pem_file(id.key).with_context(|| {
                format!(
                    "reading client key {} (expected a PEM private key)",
                    id.key.display()
                )
            })?;
            builder.with_client_auth_cert(chain, key).with_context(|| {
                format!(
                    "client certificate {} and key {} do not form a usable pair",
                    id.cert.display(),
                    id.key.display()
                )
            })?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// WebSocket limits for relay traffic: one relay message per WebSocket message, 16 KiB
/// payloads, so anything much larger is refused before it is buffered.
///
/// Reads are [`WS_READ_CHUNK`] at a time: tungstenite zero-fills the room for one read before
/// every read attempt, including the many that find nothing (an uploading client polls for
/// ACKs after each message it sends). Its 128 KiB default cost most of the CPU on the data
/// path (memset) and 128 KiB of memory per idle tunnel in the relay; one message (17 KiB)
/// still cost 14 % of an upload's instructions. A full message is reserved once its header is
/// read, so a 16 KiB message now takes a few reads from the TLS buffer instead of one, which
/// costs far less than the zero-filling it saves (profiles in BENCHMARKS.md).
///
/// The write buffer is bounded too. A peer that sends pings and never reads makes tungstenite
/// queue a pong for every ping; with no bound, each queued pong stayed in the write buffer and
/// one such peer grew the other side by about 115 MiB/s. With a bound, pongs that do not fit
/// are coalesced into the one pending pong, so such a peer costs at most
/// [`WS_MAX_WRITE_BUFFER`] per connection. Our own DATA never reaches the bound: the pump
/// sends only after a flush, so at most [`WS_WRITE_BUFFER`] plus one message is queued.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_CHUNK)
        .max_message_size(Some(MAX_MESSAGE_LEN + 1024))
        .max_frame_size(Some(MAX_MESSAGE_LEN + 1024))
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER)
}

/// The most tungstenite reads (and zero-fills first) at a time, and its initial read buffer.
pub const WS_READ_CHUNK: usize = 4 * 1024;
/// Bytes tungstenite collects before writing to the socket (its default).
pub const WS_WRITE_BUFFER: usize = 128 * 1024;
/// The most a WebSocket's write buffer may hold: the collecting buffer, one message, and
/// room for control frames (pongs, the close) while the peer is not reading.
pub const WS_MAX_WRITE_BUFFER: usize = WS_WRITE_BUFFER + 4 * (MAX_MESSAGE_LEN + 1024);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here").unwrap();
        let err = format!("{:#}", tls_config(Some(&empty)).unwrap_err());
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let missing = dir.path().join("missing.pem");
        let err = format!("{:#}", tls_config(Some(&missing)).unwrap_err());
        assert!(err.contains("reading CA file"), "{err}");
    }
}
