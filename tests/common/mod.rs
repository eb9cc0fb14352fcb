//! Shared harness for the end-to-end tests: a test PKI made with rcgen, `iap-relay` as a
//! subprocess, a real OpenSSH `sshd` on loopback, a local OAuth token endpoint, and process helpers
//! that never wait without a deadline.
//!
//! Every child process is owned by a guard that kills it (by pid) on drop, every wait has a
//! deadline, and nothing binds anything but 127.0.0.1. Test files include this with `mod common;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// How long a spawned server (relay, sshd) may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval for readiness checks and child-exit polling.
const POLL: Duration = Duration::from_millis(20);
/// Default deadline for one short client command (ssh true, ansible ping, ...).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for one bulk transfer (tens of MiB through the tunnel).
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(180);

/// Instance coordinates the tests use everywhere.
pub const PROJECT: &str = "test-proj";
/// Zone of the test instance.
pub const ZONE: &str = "test-zone-a";
/// Name of the test instance.
pub const INSTANCE: &str = "vm-1";
/// The IAP tunnel role named in bindings and in iap-ssh's 4033 message.
pub const TUNNEL_ROLE: &str = "roles/iap.tunnelResourceAccessor";

/// `INSTANCE.ZONE.PROJECT`, the dotted host name iap-ssh parses from ssh's `%h`.
pub fn dotted_host() -> String {
    format!("{INSTANCE}.{ZONE}.{PROJECT}")
}

// ---------------------------------------------------------------------------------------------
// Tools and CI policy
// ---------------------------------------------------------------------------------------------

/// True when running under CI (`CI=true`), where a missing tool is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Finds an executable: a path containing `/` is taken as is; otherwise `PATH` is searched, then
/// the sbin directories (`sshd` lives in /usr/sbin, which a non-login `PATH` may lack).
pub fn tool_path(name: &str) -> Option<PathBuf> {
    let is_exe = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exe(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_exe(p))
}

/// Reports a missing prerequisite: panics under CI, else prints the skip reason and returns false.
pub fn skip_or_fail(what: &str) -> bool {
    if in_ci() {
        panic!("{what} is required when CI=true (install it: see .ci/run)");
    }
    eprintln!("skipping: {what}");
    false
}

/// True if `name` is installed. If not: panics under CI, else prints
/// "skipping: NAME not installed" and returns false (the caller returns early).
pub fn require_tool(name: &str) -> bool {
    tool_path(name).is_some() || skip_or_fail(&format!("{name} not installed"))
}

/// `require_tool` for everything the OpenSSH tests use.
pub fn require_openssh() -> bool {
    ["sshd", "ssh", "ssh-keygen", "scp", "sftp"]
        .iter()
        .all(|t| require_tool(t))
}

/// The `iap-ssh` binary under test.
pub fn iap_ssh_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_iap-ssh"))
}

/// The `iap-relay` binary under test.
pub fn iap_relay_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_iap-relay"))
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// Owns a child process and kills it (by its pid) when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// Wraps a spawned child.
    pub fn new(child: Child) -> Self {
        Self { child }
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the child has already exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Mutable access to the child (for its pipes).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs `cmd` with stdin from /dev/null, capturing stdout and stderr, and waits at most `timeout`.
///
/// # Panics
/// On spawn failure, or on timeout (after killing the child), with the captured stderr.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    run_with_io(cmd, Stdio::null(), None, timeout)
}

/// Like [`run_with_timeout`] with `stdin` as given and, when `stdout_to` is given, stdout written
/// to that file (then `Output::stdout` is empty).
///
/// Output goes to anonymous temporary files rather than pipes, so a grandchild that keeps the
/// descriptors open (ssh's ControlPersist master, a lingering ProxyCommand) cannot make us hang.
///
/// # Panics
/// On spawn failure, or on timeout (after killing the child), with the captured stderr.
pub fn run_with_io(
    cmd: &mut Command,
    stdin: Stdio,
    stdout_to: Option<File>,
    timeout: Duration,
) -> Output {
    let mut err_file = tempfile::tempfile().expect("creating a temp file for stderr");
    let mut out_file = tempfile::tempfile().expect("creating a temp file for stdout");
    let capture_stdout = stdout_to.is_none();
    let stdout = match stdout_to {
        Some(f) => Stdio::from(f),
        None => Stdio::from(out_file.try_clone().expect("cloning stdout file")),
    };
    cmd.stdin(stdin).stdout(stdout).stderr(Stdio::from(
        err_file.try_clone().expect("cloning stderr file"),
    ));
    let started = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut guard = ChildGuard::new(child);
    let status = loop {
        if let Some(status) = guard.try_wait() {
            break status;
        }
        if started.elapsed() > timeout {
            drop(guard);
            panic!(
                "timed out after {timeout:?}: {cmd:?}\n--- stderr ---\n{}\n--- stdout (tail) ---\n{}",
                read_all(&mut err_file),
                tail(&read_all(&mut out_file), 4000),
            );
        }
        thread::sleep(POLL);
    };
    let stdout = if capture_stdout {
        read_bytes(&mut out_file)
    } else {
        Vec::new()
    };
    Output {
        status,
        stdout,
        stderr: read_bytes(&mut err_file),
    }
}

fn read_bytes(f: &mut File) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.read_to_end(&mut buf);
    buf
}

fn read_all(f: &mut File) -> String {
    String::from_utf8_lossy(&read_bytes(f)).into_owned()
}

fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Formats an `Output` for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        tail(&String::from_utf8_lossy(&out.stdout), 4000),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Reads a log file for an assertion message (empty string if unreadable).
pub fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// Clears the variables of this machine (CA bundles, gcloud and Google credentials, proxies,
/// log filters) that would leak into a child, and points caches and gcloud's configuration at
/// `state_dir`, so iap-ssh and gcloud start from nothing but what a test gives them.
pub fn hermetic_env<'a>(cmd: &'a mut Command, state_dir: &Path) -> &'a mut Command {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let upper = key.to_ascii_uppercase();
        if upper.starts_with("CLOUDSDK_")
            || upper.starts_with("GOOGLE_")
            || upper.starts_with("ANSIBLE_")
            || upper.ends_with("_PROXY")
            || upper.starts_with("SSL_CERT_")
            || upper == "RUST_LOG"
            || upper == "SSH_AUTH_SOCK"
            || upper == "IAP_SSH_CONFIG"
        {
            cmd.env_remove(key);
        }
    }
    // No configuration file of the person running the tests: a test that wants one writes it
    // here, or names it with IAP_SSH_CONFIG.
    let _ = fs::create_dir_all(state_dir.join("xdg-config"));
    cmd.env("XDG_CONFIG_HOME", state_dir.join("xdg-config"));
    let cache = state_dir.join("xdg-cache");
    let gcloud = state_dir.join("gcloud-config");
    let _ = fs::create_dir_all(&cache);
    let _ = fs::create_dir_all(&gcloud);
    cmd.env("XDG_CACHE_HOME", cache)
        .env("CLOUDSDK_CONFIG", gcloud)
        .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1")
        // Never Google's token-info endpoint from a test: a closed loopback port unless the
        // test names a stand-in (then fresh tokens are cached with the stand-in's expiry).
        .env("IAP_SSH_TOKENINFO_URL", "http://127.0.0.1:9/tokeninfo")
}

/// Quotes `s` for /bin/sh (single quotes; `'` becomes `'\''`).
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Quotes `s` for a word of ssh's ProxyCommand: shell quoting, then `%` doubled because ssh
/// expands `%` tokens before handing the line to /bin/sh.
pub fn proxy_quote(s: &str) -> String {
    sh_quote(s).replace('%', "%%")
}

/// [`proxy_quote`] for a path.
pub fn proxy_quote_path(p: &Path) -> String {
    proxy_quote(p.to_str().expect("test paths are UTF-8"))
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// Lowercase hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SHA-256 (lowercase hex) of a string.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// SHA-256 (lowercase hex) of a file's contents.
pub fn sha256_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    hex(ctx.finish().as_ref())
}

/// Writes `size_bytes` random bytes to `dir/name` (1 MiB chunks from the system RNG).
pub fn random_file(dir: &Path, name: &str, size_bytes: usize) -> PathBuf {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let path = dir.join(name);
    let mut f = File::create(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size_bytes;
    while left > 0 {
        let n = left.min(buf.len());
        rng.fill(&mut buf[..n]).expect("system RNG");
        f.write_all(&buf[..n]).expect("writing random file");
        left -= n;
    }
    f.sync_all().ok();
    path
}

/// A random lowercase-hex string of `bytes` random bytes (tokens, key ids).
pub fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .expect("system RNG");
    hex(&buf)
}

/// Writes a bearer token (with a trailing newline, as `echo TOKEN > file` would) to a new
/// mode-0600 file in `dir` and returns its path.
pub fn write_token_file(dir: &Path, token: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = dir.join(format!("token-{}", N.fetch_add(1, Ordering::Relaxed)));
    fs::write(&path, format!("{token}\n")).expect("writing token file");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod token file");
    path
}

// ---------------------------------------------------------------------------------------------
// PKI
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// iap-relay
// ---------------------------------------------------------------------------------------------

/// What a test relay knows: tokens, inventory, bindings.
#[derive(Debug, Clone)]
pub struct RelaySpec {
    /// `(principal, plaintext token)`; only the SHA-256 goes into the config.
    pub tokens: Vec<(String, String)>,
    /// `(project, zone, name, nic0 address)`.
    pub instances: Vec<(String, String, String, String)>,
    /// `(members, resource, ports)` granting the tunnel role.
    pub bindings: Vec<(Vec<String>, String, Option<Vec<u16>>)>,
    /// Raw TOML inserted right after `listen`, before any table: may hold top-level keys and
    /// whole tables.
    pub extra_toml: String,
    /// Serve `wss://` with a fresh [`TestPki`] (default) or plain `ws://`.
    pub tls: bool,
}

impl Default for RelaySpec {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            instances: Vec::new(),
            bindings: Vec::new(),
            extra_toml: String::new(),
            tls: true,
        }
    }
}

impl RelaySpec {
    /// One principal with one token, one instance (nic0 = 127.0.0.1), and a binding of that
    /// principal on the whole project.
    pub fn single(principal: &str, token: &str, project: &str, zone: &str, instance: &str) -> Self {
        Self {
            tokens: vec![(principal.to_owned(), token.to_owned())],
            instances: vec![(
                project.to_owned(),
                zone.to_owned(),
                instance.to_owned(),
                "127.0.0.1".to_owned(),
            )],
            bindings: vec![(
                vec![principal.to_owned()],
                format!("projects/{project}"),
                None,
            )],
            ..Self::default()
        }
    }

    /// The usual test setup: `single` on [`PROJECT`]/[`ZONE`]/[`INSTANCE`].
    pub fn standard(principal: &str, token: &str) -> Self {
        Self::single(principal, token, PROJECT, ZONE, INSTANCE)
    }

    /// Adds a principal and token with no binding at all.
    pub fn with_token(mut self, principal: &str, token: &str) -> Self {
        self.tokens.push((principal.to_owned(), token.to_owned()));
        self
    }

    /// Renders relay.toml; `tls` gives the cert and key paths (relative to the config's folder).
    pub fn to_toml(&self, tls: Option<(&str, &str)>) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("string to TOML string");
        let mut t = String::from("# written by tests/common/mod.rs\nlisten = \"127.0.0.1:0\"\n");
        if !self.extra_toml.is_empty() {
            t.push_str(&self.extra_toml);
            t.push('\n');
        }
        if let Some((cert, key)) = tls {
            let _ = write!(t, "\n[tls]\ncert = {}\nkey = {}\n", q(cert), q(key));
        }
        for (principal, token) in &self.tokens {
            let _ = write!(
                t,
                "\n[[static_tokens]]\nprincipal = {}\nsha256 = {}\n",
                q(principal),
                q(&sha256_hex(token.as_bytes()))
            );
        }
        for (project, zone, name, addr) in &self.instances {
            let _ = write!(
                t,
                "\n[[instances]]\nproject = {}\nzone = {}\nname = {}\ninterfaces = {{ nic0 = {} }}\n",
                q(project),
                q(zone),
                q(name),
                q(addr)
            );
        }
        for (members, resource, ports) in &self.bindings {
            let members: Vec<String> = members.iter().map(|m| q(m)).collect();
            let _ = write!(
                t,
                "\n[[bindings]]\nrole = {}\nmembers = [{}]\nresource = {}\n",
                q(TUNNEL_ROLE),
                members.join(", "),
                q(resource)
            );
            if let Some(ports) = ports {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                let _ = writeln!(t, "ports = [{}]", ports.join(", "));
            }
        }
        t
    }
}

/// A running `iap-relay` subprocess; killed on drop.
#[derive(Debug)]
pub struct Relay {
    /// Base URL from its readiness line, e.g. `wss://127.0.0.1:PORT`.
    pub url: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The PKI it serves (None for `ws://`); `ca_pem` is what clients trust.
    pub pki: Option<TestPki>,
    /// Its stderr (logs).
    pub stderr_log: PathBuf,
    /// The relay.toml it runs with.
    pub config_path: PathBuf,
    dir: TempDir,
    child: ChildGuard,
}

impl Relay {
    /// The test CA to trust (panics for a `ws://` relay).
    pub fn ca_pem(&self) -> &Path {
        &self.pki.as_ref().expect("relay has no TLS").ca_pem
    }

    /// The relay's log so far.
    pub fn log(&self) -> String {
        read_log(&self.stderr_log)
    }

    /// The port part of [`Relay::addr`].
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The relay's process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the relay process is still running (reaps it once it has exited).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().is_none()
    }
}

/// Writes the config for `spec` and starts `iap-relay --config …`, waiting (at most
/// [`READY_TIMEOUT`]) for its `iap-relay listening on …` line.
///
/// # Panics
/// If the relay exits or is not ready in time; the message carries its stderr.
pub fn spawn_relay(spec: &RelaySpec) -> Relay {
    let dir = TempDir::new().expect("temp dir for relay");
    let pki = spec.tls.then(test_pki);
    // The cert and key are copied beside the config and named relatively, which also checks
    // that relative paths resolve against the config file's folder (not the working dir).
    let tls = pki.as_ref().map(|pki| {
        fs::copy(&pki.cert_pem, dir.path().join("relay-cert.pem")).expect("copying cert");
        fs::copy(&pki.key_pem, dir.path().join("relay-key.pem")).expect("copying key");
        ("relay-cert.pem", "relay-key.pem")
    });
    let config_path = dir.path().join("relay.toml");
    fs::write(&config_path, spec.to_toml(tls)).expect("writing relay.toml");
    let stderr_log = dir.path().join("relay.stderr.log");
    let stderr = File::create(&stderr_log).expect("creating relay log");

    let mut cmd = Command::new(iap_relay_bin());
    hermetic_env(&mut cmd, dir.path());
    cmd.arg("--config")
        .arg(&config_path)
        // Run from elsewhere so that relative paths can only resolve via the config's folder.
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut child = ChildGuard::new(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}")),
    );

    // Read stdout on a thread so the wait below has a deadline; the thread keeps draining (and
    // ends at EOF when the relay dies) so a later stdout write cannot block the relay.
    let stdout = child.child_mut().stdout.take().expect("relay stdout");
    let (tx, rx) = mpsc::channel::<String>();
    thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines.by_ref() {}
    });

    let deadline = Instant::now() + READY_TIMEOUT;
    let line = loop {
        match rx.recv_timeout(POLL) {
            Ok(line) => break line,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "iap-relay closed stdout before its readiness line (exit: {:?})\n--- config ---\n{}\n--- stderr ---\n{}",
                    child.try_wait(),
                    fs::read_to_string(&config_path).unwrap_or_default(),
                    read_log(&stderr_log)
                );
            }
        }
        if Instant::now() > deadline {
            panic!(
                "iap-relay not ready within {READY_TIMEOUT:?} (exit: {:?})\n--- stderr ---\n{}",
                child.try_wait(),
                read_log(&stderr_log)
            );
        }
    };
    let url = line
        .strip_prefix("iap-relay listening on ")
        .unwrap_or_else(|| {
            panic!(
                "unexpected readiness line {line:?}\n--- stderr ---\n{}",
                read_log(&stderr_log)
            )
        })
        .trim()
        .to_owned();
    let scheme = if spec.tls { "wss://" } else { "ws://" };
    let hostport = url
        .strip_prefix(scheme)
        .unwrap_or_else(|| panic!("readiness URL {url:?} does not start with {scheme}"));
    let addr: SocketAddr = hostport
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("readiness URL {url:?}: bad address: {e}"));
    assert!(
        addr.ip().is_loopback(),
        "relay must listen on loopback: {url}"
    );
    Relay {
        url,
        addr,
        pki,
        stderr_log,
        config_path,
        dir,
        child,
    }
}

/// The ProxyCommand line for `relay`:
/// `<iap-ssh> --endpoint URL [--ca-file CA] --access-token-file FILE <extra> %h %p`,
/// with every path quoted for /bin/sh and ssh's `%` expansion.
pub fn proxy_command(relay: &Relay, token_file: &Path, extra: &str) -> String {
    let mut pc = format!(
        "{} --endpoint {}",
        proxy_quote_path(&iap_ssh_bin()),
        proxy_quote(&relay.url)
    );
    if let Some(pki) = &relay.pki {
        let _ = write!(pc, " --ca-file {}", proxy_quote_path(&pki.ca_pem));
    }
    let _ = write!(pc, " --access-token-file {}", proxy_quote_path(token_file));
    if !extra.trim().is_empty() {
        let _ = write!(pc, " {}", extra.trim());
    }
    pc.push_str(" %h %p");
    pc
}

// ---------------------------------------------------------------------------------------------
// sshd
// ---------------------------------------------------------------------------------------------

/// A real OpenSSH server on 127.0.0.1 with throw-away keys; killed on drop.
#[derive(Debug)]
pub struct Sshd {
    /// The port it listens on (127.0.0.1 only).
    pub port: u16,
    /// Keys, config, log, and scratch space for the test (the "remote" files live here too).
    pub dir: TempDir,
    /// Private key authorized for root.
    pub client_key: PathBuf,
    /// A known_hosts file holding the server's host key for any host name (`*`).
    pub known_hosts: PathBuf,
    /// sshd's stderr (`-e`).
    pub log_path: PathBuf,
    child: ChildGuard,
}

impl Sshd {
    /// sshd's log so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// A fresh empty folder under [`Sshd::dir`].
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::create_dir_all(&p).expect("creating test subdir");
        p
    }
}

/// Asks the kernel for a free port on 127.0.0.1 (bind :0, read, drop). Only for programs that
/// must bind by themselves; the caller retries if the port is taken in between.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

fn ssh_keygen(path: &Path, comment: &str) {
    let out = run_with_timeout(
        Command::new(tool_path("ssh-keygen").expect("ssh-keygen installed"))
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "ssh-keygen failed\n{}",
        describe(&out)
    );
}

/// Starts Debian's sshd as root on 127.0.0.1 (`-D -e -f <tmp config>`) with a fresh ed25519
/// host key and client key, and waits (at most [`READY_TIMEOUT`]) until it sends its banner.
///
/// # Panics
/// If sshd cannot be started; the message carries its log. Check [`require_openssh`] first.
pub fn spawn_sshd() -> Sshd {
    let sshd = tool_path("sshd").expect("sshd installed (check require_openssh first)");
    // sshd insists on its privilege-separation directory even when it never uses it.
    fs::create_dir_all("/run/sshd").expect("mkdir -p /run/sshd");
    let dir = TempDir::new().expect("temp dir for sshd");
    let host_key = dir.path().join("ssh_host_ed25519_key");
    let client_key = dir.path().join("id_ed25519");
    ssh_keygen(&host_key, "iap-ssh-test-host");
    ssh_keygen(&client_key, "iap-ssh-test-client");
    let authorized_keys = dir.path().join("authorized_keys");
    fs::copy(client_key.with_extension("pub"), &authorized_keys).expect("authorized_keys");
    let host_pub = fs::read_to_string(host_key.with_extension("pub")).expect("host key");
    let mut host_pub_fields = host_pub.split_whitespace();
    let (kt, kb) = (
        host_pub_fields.next().expect("key type"),
        host_pub_fields.next().expect("key"),
    );
    let known_hosts = dir.path().join("known_hosts");
    // `*` matches every name ssh looks up, including the `[name]:port` form used for a
    // non-default port and the dotted instance names that only iap-ssh can resolve.
    fs::write(&known_hosts, format!("* {kt} {kb}\n")).expect("known_hosts");

    // OpenSSH 9.8 and later penalise addresses whose connections end before authentication (our
    // readiness probe, refused tunnels) by refusing them for a while; every test client comes
    // from 127.0.0.1, so turn that off where the option exists (older sshd rejects it).
    let penalties = if openssh_version() >= (9, 8) {
        "PerSourcePenalties no\n"
    } else {
        ""
    };
    let config_path = dir.path().join("sshd_config");
    let log_path = dir.path().join("sshd.log");
    for attempt in 1..=5 {
        let port = free_port();
        let config = format!(
            "ListenAddress 127.0.0.1:{port}\n\
             AddressFamily inet\n\
             HostKey {host_key}\n\
             AuthorizedKeysFile {authorized_keys}\n\
             PidFile none\n\
             UsePAM no\n\
             StrictModes no\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UseDNS no\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             MaxStartups 64\n\
             MaxSessions 64\n\
             LogLevel INFO\n\
             Subsystem sftp internal-sftp\n\
             {penalties}",
            host_key = host_key.display(),
            authorized_keys = authorized_keys.display(),
        );
        fs::write(&config_path, config).expect("writing sshd_config");
        let log = File::create(&log_path).expect("creating sshd log");
        let mut cmd = Command::new(&sshd);
        cmd.args(["-D", "-e", "-f"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = ChildGuard::new(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}")),
        );
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait() {
                let log = read_log(&log_path);
                if log.contains("Address already in use") && attempt < 5 {
                    break; // the port was taken between free_port() and sshd's bind: retry
                }
                panic!("sshd exited ({status}) before it was ready\n--- log ---\n{log}");
            }
            if ssh_banner(port) {
                return Sshd {
                    port,
                    dir,
                    client_key,
                    known_hosts,
                    log_path,
                    child,
                };
            }
            if Instant::now() > deadline {
                panic!(
                    "sshd not ready on port {port} within {READY_TIMEOUT:?}\n--- log ---\n{}",
                    read_log(&log_path)
                );
            }
            thread::sleep(POLL);
        }
    }
    unreachable!("the loop above returns or panics on its last attempt")
}

/// OpenSSH's (major, minor) version from `ssh -V` (client and server come from one source
/// package), or (0, 0) if it cannot be told.
pub fn openssh_version() -> (u32, u32) {
    let Some(ssh) = tool_path("ssh") else {
        return (0, 0);
    };
    let out = run_with_timeout(Command::new(ssh).arg("-V"), Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stderr);
    let Some(rest) = text.split("OpenSSH_").nth(1) else {
        return (0, 0);
    };
    let mut nums = rest
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse().unwrap_or(0));
    (nums.next().unwrap_or(0), nums.next().unwrap_or(0))
}

/// True if something on 127.0.0.1:port answers with an SSH banner.
fn ssh_banner(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).is_ok() && &buf == b"SSH-2.0-"
}

/// Options for ssh, scp and sftp alike (all in `-o` form, which all three accept): no user or
/// system config, the test key only, strict host key checking against [`Sshd::known_hosts`],
/// user root, the sshd's port, and `proxy_command` (empty: none).
pub fn ssh_base_args(sshd: &Sshd, proxy_command: &str) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-F".into(),
        "/dev/null".into(),
        "-i".into(),
        sshd.client_key.display().to_string(),
    ];
    let opts = [
        format!("Port={}", sshd.port),
        "User=root".into(),
        "IdentitiesOnly=yes".into(),
        "BatchMode=yes".into(),
        format!("UserKnownHostsFile={}", sshd.known_hosts.display()),
        "GlobalKnownHostsFile=/dev/null".into(),
        "StrictHostKeyChecking=yes".into(),
        "UpdateHostKeys=no".into(),
        "LogLevel=ERROR".into(),
        "ConnectTimeout=30".into(),
        "ControlMaster=no".into(),
        "ControlPath=none".into(),
    ];
    for o in opts {
        args.push("-o".into());
        args.push(o);
    }
    if !proxy_command.is_empty() {
        args.push("-o".into());
        args.push(format!("ProxyCommand={proxy_command}"));
    }
    args
}

/// A `Command` for `program` (ssh, scp, sftp) with [`hermetic_env`] state under the sshd's dir.
/// The ProxyCommand inherits this environment.
pub fn ssh_command(program: &str, sshd: &Sshd) -> Command {
    let mut cmd = Command::new(tool_path(program).unwrap_or_else(|| PathBuf::from(program)));
    hermetic_env(&mut cmd, sshd.dir.path());
    cmd
}

/// Runs `ssh <base args> HOST COMMAND` through `proxy_command`, bounded by `timeout`.
pub fn ssh_run(
    sshd: &Sshd,
    proxy_command: &str,
    host: &str,
    remote_cmd: &str,
    timeout: Duration,
) -> Output {
    let mut cmd = ssh_command("ssh", sshd);
    cmd.args(ssh_base_args(sshd, proxy_command))
        .arg(host)
        .arg(remote_cmd);
    run_with_timeout(&mut cmd, timeout)
}

/// Closes an ssh ControlMaster listening on `socket` (`ssh -O exit`), then makes sure the master
/// process (pid from `ssh -O check`) is gone, killing that pid if it lingers.
pub fn close_control_master(socket: &Path) {
    let Some(ssh) = tool_path("ssh") else { return };
    let ctl = |op: &str| {
        run_with_timeout(
            Command::new(&ssh)
                .args(["-F", "/dev/null", "-o", "LogLevel=ERROR", "-o"])
                .arg(format!("ControlPath={}", socket.display()))
                .args(["-O", op, "control-master-host"]),
            Duration::from_secs(15),
        )
    };
    let check = ctl("check");
    let text = String::from_utf8_lossy(&check.stderr).into_owned();
    let pid = text
        .split("pid=")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|p| p.trim().parse::<u32>().ok());
    let _ = ctl("exit");
    let Some(pid) = pid else { return };
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_dir.exists() && Instant::now() < deadline {
        thread::sleep(POLL);
    }
    if proc_dir.exists() {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// Closes every ControlMaster socket found in `dir` (see [`close_control_master`]) when dropped.
#[derive(Debug)]
pub struct ControlMasters {
    /// Folder holding the ControlPath sockets.
    pub dir: PathBuf,
}

impl Drop for ControlMasters {
    fn drop(&mut self) {
        use std::os::unix::fs::FileTypeExt;
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_socket()) {
                close_control_master(&entry.path());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// OAuth token endpoint and service-account keys
// ---------------------------------------------------------------------------------------------

/// A tiny HTTP/1.1 server on 127.0.0.1 answering every POST with a fixed access token, like
/// Google's OAuth token endpoint does for a service-account JWT grant.
#[derive(Debug)]
pub struct TokenEndpoint {
    /// `http://127.0.0.1:PORT/token`.
    pub url: String,
    /// The bound address.
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TokenEndpoint {
    /// Its token-info stand-in (`/tokeninfo`: a one-hour expiry for any token), for
    /// `IAP_SSH_TOKENINFO_URL`. Token-info requests are not counted in [`requests`](Self::requests).
    pub fn tokeninfo_url(&self) -> String {
        format!("http://{}/tokeninfo", self.addr)
    }

    /// How many token POST requests it has answered.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The request bodies received so far (form-encoded).
    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().expect("bodies lock").clone()
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a [`TokenEndpoint`] that hands out `token`.
pub fn spawn_token_endpoint(token: &str) -> TokenEndpoint {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding token endpoint");
    let addr = listener.local_addr().expect("token endpoint address");
    let requests = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let body = serde_json::json!({
        "access_token": token,
        "expires_in": 3600,
        "token_type": "Bearer",
    })
    .to_string();
    let thread = {
        let (requests, bodies, stop) = (requests.clone(), bodies.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                serve_token_request(conn, &body, |req_body| {
                    // Recorded before the answer goes out, so a client that has its token
                    // always sees itself counted.
                    bodies.lock().expect("bodies lock").push(req_body);
                    requests.fetch_add(1, Ordering::SeqCst);
                });
            }
        })
    };
    TokenEndpoint {
        url: format!("http://{addr}/token"),
        addr,
        requests,
        bodies,
        stop,
        thread: Some(thread),
    }
}

/// Reads one HTTP/1.1 request (headers, then a Content-Length body, bounded in size and time),
/// answers POST with `body` (after handing the request body to `record`), anything else with 405.
fn serve_token_request(mut conn: TcpStream, body: &str, record: impl FnOnce(String)) -> Option<()> {
    const MAX: usize = 1 << 20;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    conn.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 || buf.len() > MAX {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let headers: BTreeMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(MAX);
    while buf.len() < header_end + len {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let req_body = String::from_utf8_lossy(&buf[header_end..header_end + len]).into_owned();
    let is_post = head.starts_with("POST ");
    let info;
    let (status, payload) = if head.starts_with("POST /tokeninfo") {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 3600;
        info = serde_json::json!({ "exp": exp.to_string(), "expires_in": "3600" }).to_string();
        ("200 OK", info.as_str())
    } else if is_post {
        record(req_body);
        ("200 OK", body)
    } else {
        ("405 Method Not Allowed", "{}")
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    conn.write_all(resp.as_bytes()).ok()?;
    conn.flush().ok()
}

/// The `client_email` of the keys written by [`service_account_key`].
pub fn service_account_email(project_id: &str) -> String {
    format!("iap-ssh-test@{project_id}.iam.gserviceaccount.com")
}

/// Writes a service-account key JSON to `dir/sa-key.json`: a fresh RSA-2048 PKCS#8 key made by
/// `openssl genpkey`, `client_email` = [`service_account_email`], and `token_uri`.
///
/// # Panics
/// If openssl is missing or fails (check `require_tool("openssl")` first).
pub fn service_account_key(dir: &Path, token_uri: &str, project_id: &str) -> PathBuf {
    let pem_path = dir.join("sa-private-key.pem");
    let out = run_with_timeout(
        Command::new(tool_path("openssl").expect("openssl installed"))
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&pem_path),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "openssl genpkey failed\n{}",
        describe(&out)
    );
    let pem = fs::read_to_string(&pem_path).expect("reading generated key");
    assert!(
        pem.contains("BEGIN PRIVATE KEY"),
        "expected a PKCS#8 key from openssl genpkey"
    );
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": random_hex(20),
        "private_key": pem,
        "client_email": service_account_email(project_id),
        "client_id": "100000000000000000001",
        "auth_uri": "http://127.0.0.1/unused-auth-uri",
        "token_uri": token_uri,
    });
    let path = dir.join("sa-key.json");
    fs::write(&path, serde_json::to_vec_pretty(&key).expect("key JSON")).expect("writing key");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod key");
    path
}
