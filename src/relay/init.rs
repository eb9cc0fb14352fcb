//! `iap-relay init DIR`: everything a first relay needs, in one folder, ready to run.
//!
//! A private CA, a server certificate signed by it (a leaf: clients refuse a CA certificate
//! used as the server's own), a static token whose SHA-256 goes into the configuration, and a
//! commented `relay.toml` with one instance and one binding. Nothing is overwritten.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The principal the written token authenticates as.
pub const PRINCIPAL: &str = "user:admin@localhost";
/// The example instance the written configuration serves: `vm-1.zone-a.my-project`.
pub const EXAMPLE_TARGET: (&str, &str, &str) = ("my-project", "zone-a", "vm-1");
/// The address the written configuration listens on when `--listen` is not given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Names the server certificate carries when no `--name` is given.
pub const DEFAULT_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// File names inside the folder.
pub mod files {
    /// The written configuration.
    pub const CONFIG: &str = "relay.toml";
    /// The CA certificate: what clients trust (`iap-ssh --ca-file`).
    pub const CA: &str = "ca.pem";
    /// The CA's private key (0600); only needed to issue more certificates.
    pub const CA_KEY: &str = "ca-key.pem";
    /// The server certificate chain (leaf, then CA).
    pub const CERT: &str = "server.pem";
    /// The server's private key (0600).
    pub const KEY: &str = "server-key.pem";
    /// The static token (0600), unless it is printed instead.
    pub const TOKEN: &str = "token";
}

/// What `init` is asked to do.
#[derive(Debug)]
pub struct InitOptions {
    /// The folder to write into (created when missing).
    pub dir: PathBuf,
    /// DNS names and IP addresses the server certificate is valid for.
    pub names: Vec<String>,
    /// Where the relay listens.
    pub listen: SocketAddr,
    /// Print the token instead of writing it to `DIR/token`.
    pub print_token: bool,
}

/// What `init` wrote.
#[derive(Debug)]
pub struct Written {
    /// Every file written, in order.
    pub files: Vec<PathBuf>,
    /// The token, when it was to be printed (it is in no file then).
    pub token: Option<String>,
    /// The URL clients use.
    pub endpoint: String,
}

/// Writes the folder.
///
/// # Errors
/// When a file already exists (nothing is written then), a name is not a valid DNS name or
/// IP address, or a file cannot be written.
pub fn init(opts: &InitOptions) -> anyhow::Result<Written> {
    let dir = &opts.dir;
    let names = if opts.names.is_empty() {
        DEFAULT_NAMES.iter().map(|n| (*n).to_owned()).collect()
    } else {
        opts.names.clone()
    };
    if let Some(bad) = names.iter().find(|n| !is_host_name(n)) {
        bail!("--name {bad:?} is neither a DNS name nor an IP address");
    }
    let mut targets = vec![
        files::CONFIG,
        files::CA,
        files::CA_KEY,
        files::CERT,
        files::KEY,
    ];
    if !opts.print_token {
        targets.push(files::TOKEN);
    }
    let taken: Vec<String> = targets
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if !taken.is_empty() {
        bail!(
            "{} already exist{}: init writes only new files; choose another folder or move them away",
            taken.join(", "),
            if taken.len() == 1 { "s" } else { "" }
        );
    }

    let pki = make_pki(&names)?;
    let token = new_token()?;
    let endpoint = endpoint(opts.listen, &names);
    let config = relay_toml(
        opts,
        &names,
        &hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref()),
        &endpoint,
    );

    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let mut write = |name: &str, text: &str, private: bool| -> anyhow::Result<()> {
        let path = dir.join(name);
        write_new(&path, text.as_bytes(), private)?;
        written.push(path);
        Ok(())
    };
    write(files::CA, &pki.ca_pem, false)?;
    write(files::CA_KEY, &pki.ca_key_pem, true)?;
    write(files::CERT, &pki.chain_pem, false)?;
    write(files::KEY, &pki.key_pem, true)?;
    let token = if opts.print_token {
        Some(token)
    } else {
        write(files::TOKEN, &format!("{token}\n"), true)?;
        None
    };
    write(files::CONFIG, &config, false)?;
    Ok(Written {
        files: written,
        token,
        endpoint,
    })
}

/// An IP address, or a DNS name (labels of letters, digits and `-`, the first may be `*`).
fn is_host_name(name: &str) -> bool {
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    let label = |(i, l): (usize, &str)| {
        (i == 0 && l == "*")
            || (!l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').enumerate().all(label)
}

/// Creates `path` (never replacing a file), mode 0600 when `private`.
fn write_new(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

struct Pki {
    ca_pem: String,
    ca_key_pem: String,
    chain_pem: String,
    key_pem: String,
}

/// The current year, for certificate validity (a day's error does not matter).
fn this_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + i32::try_from(secs / 31_556_952).unwrap_or(0)
}

fn make_pki(names: &[String]) -> anyhow::Result<Pki> {
    let year = this_year();
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca.distinguished_name
        .push(DnType::CommonName, "iap-relay private CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    ca.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    let ca_cert = ca.self_signed(&ca_key).context("signing the CA")?;
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().context("generating the server key")?;
    let mut leaf = CertificateParams::new(names.to_vec()).with_context(|| {
        format!(
            "server certificate names {names:?}: each --name must be a DNS name or an IP address"
        )
    })?;
    let first = names.first().map_or("localhost", String::as_str);
    leaf.distinguished_name.push(DnType::CommonName, first);
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    // Two years: long enough to forget, short enough that a lost key ages out.
    leaf.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
    let cert = leaf
        .signed_by(&key, &issuer)
        .context("signing the server certificate")?;
    Ok(Pki {
        chain_pem: format!("{}{ca_pem}", cert.pem()),
        ca_pem,
        ca_key_pem: issuer.key().serialize_pem(),
        key_pem: key.serialize_pem(),
    })
}

/// 32 random bytes as 64 hex digits.
fn new_token() -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(text, "{b:02x}");
    }
    text
}

/// The URL clients use: the first name (or the address itself) and the port.
fn endpoint(listen: SocketAddr, names: &[String]) -> String {
    let host = if listen.ip().is_unspecified() {
        names.first().cloned().unwrap_or_else(|| "localhost".into())
    } else if names.iter().any(|n| n.parse::<IpAddr>() == Ok(listen.ip())) {
        listen.ip().to_string()
    } else {
        names
            .first()
            .cloned()
            .unwrap_or_else(|| listen.ip().to_string())
    };
    let host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host,
    };
    format!("wss://{host}:{}", listen.port())
}

fn relay_toml(opts: &InitOptions, names: &[String], token_sha256: &str, endpoint: &str) -> String {
    let (project, zone, name) = EXAMPLE_TARGET;
    let token_line = if opts.print_token {
        "# The token was printed once by `iap-relay init`; only its SHA-256 is kept here."
    } else {
        "# The token is in the file `token` beside this one (mode 0600); only its SHA-256 is here."
    };
    format!(
        r#"# iap-relay configuration written by `iap-relay init`.
# Run:     iap-relay --config {config}
# Connect: iap-ssh --endpoint {endpoint} --ca-file {ca} --access-token-file {token} {name}.{zone}.{project} 22
# Relative paths are taken from this file's folder. deploy/relay.toml.example in the source
# describes every setting.

# Where clients connect. The server certificate is valid for: {names}
listen = "{listen}"

# One JSON line per connect, refusal, reconnect, close and stall.
audit_log = "audit.jsonl"

# Health and Prometheus metrics (/healthz, /metrics); off unless set.
# admin_listen = "127.0.0.1:9090"

[tls]
# Signed by the private CA in ca.pem (its key, ca-key.pem, is only needed to issue more).
cert = "{cert}"
key = "{key}"

{token_line}
# Add a token: printf %s "$TOKEN" | sha256sum
[[static_tokens]]
principal = "{principal}"
sha256 = "{token_sha256}"

# The machines the relay may reach, by project, zone and name; it dials nothing else.
[[instances]]
project = "{project}"
zone = "{zone}"
name = "{name}"
interfaces = {{ nic0 = "127.0.0.1" }}

# Who may reach what: default deny. This grants the token's principal SSH on the project.
[[bindings]]
role = "roles/iap.tunnelResourceAccessor"
members = ["{principal}"]
resource = "projects/{project}"
ports = [22]
"#,
        config = opts.dir.join(files::CONFIG).display(),
        ca = opts.dir.join(files::CA).display(),
        token = if opts.print_token {
            "FILE-HOLDING-THE-TOKEN".to_owned()
        } else {
            opts.dir.join(files::TOKEN).display().to_string()
        },
        names = names.join(", "),
        listen = opts.listen,
        cert = files::CERT,
        key = files::KEY,
        principal = PRINCIPAL,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path) -> InitOptions {
        InitOptions {
            dir: dir.to_owned(),
            names: Vec::new(),
            listen: DEFAULT_LISTEN.parse().unwrap(),
            print_token: false,
        }
    }

    #[test]
    fn the_folder_holds_a_valid_config_private_keys_and_no_overwrite() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("relay");
        let written = init(&opts(&dir)).unwrap();
        assert_eq!(written.files.len(), 6);
        assert_eq!(written.token, None);
        assert_eq!(written.endpoint, "wss://127.0.0.1:8443");
        for private in [files::CA_KEY, files::KEY, files::TOKEN] {
            let mode = std::fs::metadata(dir.join(private))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{private}");
        }
        let config = crate::relay::config::RelayConfig::load(&dir.join(files::CONFIG)).unwrap();
        let token = std::fs::read_to_string(dir.join(files::TOKEN)).unwrap();
        assert_eq!(config.tokens.authenticate(token.trim()), Some(PRINCIPAL));
        let (cert, key) = config.tls.unwrap();
        crate::relay::tls::server_config(&cert, &key, None).unwrap();

        let err = format!("{:#}", init(&opts(&dir)).unwrap_err());
        assert!(err.contains("already exist"), "{err}");
        let printed = InitOptions {
            print_token: true,
            ..opts(&tmp.path().join("other"))
        };
        let written = init(&printed).unwrap();
        assert_eq!(written.token.as_deref().map(str::len), Some(64));
        assert!(!tmp.path().join("other").join(files::TOKEN).exists());
    }

    #[test]
    fn names_and_addresses_make_the_endpoint() {
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let at = |a: &str| a.parse::<SocketAddr>().unwrap();
        assert_eq!(
            endpoint(at("0.0.0.0:443"), &names(&["relay.example.com"])),
            "wss://relay.example.com:443"
        );
        assert_eq!(
            endpoint(at("[::1]:8443"), &names(&["localhost", "::1"])),
            "wss://[::1]:8443"
        );
        let bad = InitOptions {
            names: names(&["not a name"]),
            ..opts(&tempfile::tempdir().unwrap().path().join("x"))
        };
        assert!(format!("{:#}", init(&bad).unwrap_err()).contains("--name"));
    }
}
