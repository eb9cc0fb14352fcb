//! The system's trusted roots, parsed off the start-up path.
//!
//! Reading and decoding the platform's CA bundle (base64 and PEM for some 150 certificates)
//! cost about 3 ms of a 6 ms start-up, before the first byte went to the relay. A thread
//! started with the TLS settings now does it while the caller fetches a token, connects and
//! sends its ClientHello; certificate verification, the first step that needs the roots,
//! waits for it. The trust set is the same as before: the system's roots plus `--ca-file`,
//! checked by rustls' own WebPKI verifier with the same crypto provider. The relay, for which
//! start-up time does not matter, waits for the roots at once (`wire::tls_config`).

use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// What a missing trust set tells the user (the handshake reports it).
const NO_ROOTS: &str =
    "no trusted root certificates found: install ca-certificates or pass --ca-file";

type Loaded = Result<Arc<WebPkiServerVerifier>, String>;

/// A server certificate verifier whose system roots are still being loaded.
#[derive(Debug)]
pub(super) struct SystemRootsVerifier {
    provider: Arc<CryptoProvider>,
    loader: Mutex<Option<JoinHandle<Loaded>>>,
    loaded: OnceLock<Loaded>,
}

impl SystemRootsVerifier {
    /// Starts loading the system roots, to be trusted along with `extra`.
    pub(super) fn start(extra: RootCertStore, provider: Arc<CryptoProvider>) -> Self {
        let loaded = OnceLock::new();
        let spawned = std::thread::Builder::new().name("tls-roots".into()).spawn({
            let (extra, provider) = (extra.clone(), provider.clone());
            move || load(extra, provider)
        });
        let loader = match spawned {
            Ok(handle) => Some(handle),
            // No thread to spare: load here, as before.
            Err(_) => {
                let _ = loaded.set(load(extra, provider.clone()));
                None
            }
        };
        SystemRootsVerifier {
            provider,
            loader: Mutex::new(loader),
            loaded,
        }
    }

    /// Waits for the roots: what went wrong when there is no usable trust set.
    pub(super) fn wait(&self) -> Result<(), String> {
        self.loaded().as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// The loaded roots' verifier, or what went wrong; waits for the loading thread.
    fn loaded(&self) -> &Loaded {
        self.loaded.get_or_init(|| {
            let handle = self.loader.lock().ok().and_then(|mut h| h.take());
            match handle.map(JoinHandle::join) {
                Some(Ok(loaded)) => loaded,
                _ => Err("loading the system root certificates failed".into()),
            }
        })
    }

    /// The verifier over the loaded roots, waiting for the loading thread if need be.
    fn verifier(&self) -> Result<&WebPkiServerVerifier, rustls::Error> {
        self.loaded()
            .as_deref()
            .map_err(|e| rustls::Error::General(e.clone()))
    }
}

/// Parses the platform's roots (honours SSL_CERT_FILE / SSL_CERT_DIR) into one store with
/// `extra`; unreadable entries are skipped, as browsers do.
fn load(mut roots: RootCertStore, provider: Arc<CryptoProvider>) -> Loaded {
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if roots.is_empty() {
        return Err(NO_ROOTS.into());
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("building the certificate verifier: {e}"))
}

impl ServerCertVerifier for SystemRootsVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    // The signature checks and the schemes offered in the ClientHello depend on the crypto
    // provider only, so they never wait for the roots.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
