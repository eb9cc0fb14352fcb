//! A throw-away test PKI made with rcgen: a CA and a loopback server certificate.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use tempfile::TempDir;

/// A throw-away CA and a server certificate for 127.0.0.1, ::1 and localhost signed by it.
#[derive(Debug)]
pub struct TestPki {
    /// Holds the files below.
    pub dir: TempDir,
    /// The CA certificate (PEM): what clients trust.
    pub ca_pem: PathBuf,
    /// The server certificate chain (PEM: leaf, then the CA).
    pub cert_pem: PathBuf,
    /// The server's private key (PEM, PKCS#8).
    pub key_pem: PathBuf,
}

/// Makes a fresh [`TestPki`] in a new temp dir.
pub fn test_pki() -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let dir = TempDir::new().expect("temp dir for PKI");

    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "iap-ssh test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-signing CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec![
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
        "localhost".to_owned(),
    ])
    .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&server_key, &issuer)
        .expect("signing server cert");

    let ca_pem = dir.path().join("ca.pem");
    let cert_pem = dir.path().join("relay-cert.pem");
    let key_pem = dir.path().join("relay-key.pem");
    fs::write(&ca_pem, ca_cert.pem()).expect("writing CA");
    fs::write(&cert_pem, format!("{}{}", cert.pem(), ca_cert.pem())).expect("writing cert");
    fs::write(&key_pem, server_key.serialize_pem()).expect("writing key");
    fs::set_permissions(&key_pem, fs::Permissions::from_mode(0o600)).expect("chmod key");
    TestPki {
        dir,
        ca_pem,
        cert_pem,
        key_pem,
    }
}
