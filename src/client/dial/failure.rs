//! Turning a failed WebSocket upgrade into one line for the user: the HTTP status and what to
//! do about it, or the client- or server-certificate trouble behind a TLS alert.

use crate::client::error::{Error, ExitKind};

/// The one-line error for a failed WebSocket upgrade: its HTTP status and what to do about it,
/// or the TLS trouble behind it.
pub(super) fn upgrade_error(relay: &str, e: tokio_tungstenite::tungstenite::Error) -> Error {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e {
        WsError::Http(response) => {
            let status = response.status();
            let (kind, hint) = match status.as_u16() {
                401 => (
                    ExitKind::Authentication,
                    "the relay did not accept the credentials: check the token source (--access-token-file, --credentials-file, or `gcloud auth application-default login`)",
                ),
                403 => (
                    ExitKind::NotAuthorized,
                    "the relay refused access: ask for roles/iap.tunnelResourceAccessor, or check that a proxy allows WebSocket upgrades",
                ),
                404 => (
                    ExitKind::NotFound,
                    "the relay has no such endpoint: check --endpoint (its path should end in /v4)",
                ),
                _ => (ExitKind::Other, "check --endpoint and the relay's logs"),
            };
            Error {
                http_status: Some(status.as_u16()),
                ..Error::new(
                    kind,
                    format!(
                        "the relay at {relay} answered the WebSocket upgrade with HTTP {status}: {hint}"
                    ),
                )
            }
        }
        WsError::Io(io) if tls_alert_hint(&io, relay).is_some() => {
            Error::auth(tls_alert_hint(&io, relay).unwrap_or_default())
        }
        other => Error::other(format!(
            "WebSocket upgrade at the relay {relay} failed: {other}"
        )),
    }
}

/// A clear message when the relay ended TLS because of our client certificate (or its
/// absence). In TLS 1.3 the server checks the client's certificate after the client has
/// finished its side, so the alert shows up on the first read, during the upgrade.
pub(super) fn tls_alert_hint(e: &std::io::Error, relay: &str) -> Option<String> {
    use rustls::AlertDescription as A;
    let alert = match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => *alert,
        e => return server_cert_hint(e, relay),
    };
    match alert {
        A::CertificateRequired => Some(format!(
            "the relay at {relay} requires a client certificate: pass --client-cert and --client-key"
        )),
        A::BadCertificate
        | A::UnknownCA
        | A::CertificateUnknown
        | A::CertificateExpired
        | A::CertificateRevoked
        | A::UnsupportedCertificate
        | A::AccessDenied
        // What rustls sends when a certificate's signature does not verify against the CA.
        | A::DecryptError => Some(format!(
            "the relay at {relay} did not accept the client certificate (TLS alert {alert:?}): use one issued by a CA the relay trusts, and check that it has not expired"
        )),
        _ => None,
    }
}

/// What to do when the relay's own certificate is refused for a reason the operator can fix.
fn server_cert_hint(e: &rustls::Error, relay: &str) -> Option<String> {
    use crate::relay::tls::{CA_AS_LEAF_FIX, is_ca_used_as_end_entity};
    is_ca_used_as_end_entity(e).then(|| {
        format!(
            "the relay at {relay} presents a CA certificate as its own (CaUsedAsEndEntity), which TLS clients refuse: on the relay, {CA_AS_LEAF_FIX}"
        )
    })
}
