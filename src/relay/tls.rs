//! The relay's TLS settings: its certificate and key, and optionally verification of client
//! certificates (mutual TLS, "device certificates") against a CA of the operator's choice.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;

/// Whether clients must present a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    /// The TLS handshake fails without a certificate issued by the CA.
    Required,
    /// A certificate is checked when presented; bindings with `require_client_cert` admit only
    /// clients that presented one.
    Optional,
}

/// Client-certificate verification: the CA file and the mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCa {
    /// PEM file of the CA certificates client certificates must chain to.
    pub ca: PathBuf,
    /// Required or optional.
    pub mode: ClientAuthMode,
}

fn read_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {what} {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {what} {}", path.display()))?;
    if certs.is_empty() {
        bail!("{what} file {} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// Builds the server TLS configuration: `cert` chain and `key`, HTTP/1.1, and client
/// certificate verification when `client` is given.
///
/// # Errors
/// When a file cannot be read, holds no certificate or key, or the key does not match.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client: Option<&ClientCa>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = read_certs(cert, "certificate")?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    refuse_ca_as_leaf(&chain, cert, &provider)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("configuring TLS")?;
    let builder = match client {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let mut roots = RootCertStore::empty();
            for ca in read_certs(&client.ca, "client CA")? {
                roots.add(ca).with_context(|| {
                    format!(
                        "client CA file {} holds an unusable certificate",
                        client.ca.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match client.mode {
                ClientAuthMode::Required => verifier,
                ClientAuthMode::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .with_context(|| format!("using client CA {}", client.ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("the certificate and private key do not form a usable pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What to do about a CA certificate used as the relay's own.
pub const CA_AS_LEAF_FIX: &str = "use `iap-relay init` or a CA-signed leaf certificate";

/// Whether a TLS error is webpki's `CaUsedAsEndEntity`: the peer's certificate is a CA
/// certificate (basic constraints CA:TRUE), which is not valid as a server's own.
pub fn is_ca_used_as_end_entity(e: &rustls::Error) -> bool {
    // rustls passes this webpki error on as an opaque `Other`; its name is the only handle.
    format!("{e:?}").contains("CaUsedAsEndEntity")
}

/// rustls does not check the server's own certificate; clients do, and every one of them
/// refuses a CA certificate used as the server's (what `openssl req -x509` makes by default).
/// Checked here, so the relay refuses to start instead of failing every handshake.
fn refuse_ca_as_leaf(
    chain: &[CertificateDer<'static>],
    path: &Path,
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<()> {
    use rustls::client::danger::ServerCertVerifier;
    let Some(leaf) = chain.first() else {
        return Ok(());
    };
    // The certificate as its own trust anchor: webpki checks the end entity's basic
    // constraints before it looks for an issuer, so only that check can fail here.
    let mut roots = RootCertStore::empty();
    if roots.add(leaf.clone()).is_err() {
        return Ok(());
    }
    let Ok(verifier) = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build() else {
        return Ok(());
    };
    let Ok(name) = rustls_pki_types::ServerName::try_from("localhost") else {
        return Ok(());
    };
    let rest = chain.get(1..).unwrap_or_default();
    match verifier.verify_server_cert(leaf, rest, &name, &[], rustls_pki_types::UnixTime::now()) {
        Err(e) if is_ca_used_as_end_entity(&e) => bail!(
            "certificate {} is a CA certificate (CA:TRUE), which clients refuse as a server certificate (CaUsedAsEndEntity; the usual `openssl req -x509` one-liner makes one): {CA_AS_LEAF_FIX}",
            path.display()
        ),
        _ => Ok(()),
    }
}

/// Whether the client presented a certificate. With a client CA configured, rustls has already
/// verified any certificate it reports (an unverifiable one fails the handshake).
pub fn presented_client_cert(conn: &rustls::ServerConnection) -> bool {
    conn.peer_certificates().is_some_and(|c| !c.is_empty())
}

/// [`presented_client_cert`] for the relay's accepted stream (TLS, or plain TCP: never).
pub fn stream_has_client_cert(stream: &Either<TlsStream<TcpStream>, TcpStream>) -> bool {
    match stream {
        Either::Left(tls) => presented_client_cert(tls.get_ref().1),
        Either::Right(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here").unwrap();
        let missing = dir.path().join("missing.pem");
        let err = format!("{:#}", server_config(&missing, &empty, None).unwrap_err());
        assert!(
            err.contains("reading certificate") && err.contains("missing.pem"),
            "{err}"
        );
        let err = format!("{:#}", server_config(&empty, &empty, None).unwrap_err());
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }
}
