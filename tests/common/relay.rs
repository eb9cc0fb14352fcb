//! A test relay, two ways: `iap-relay` as a subprocess ([`spawn_relay`]) for what needs a
//! separate process (signals, exit status, the binary's stderr, its RSS), and the relay
//! library served in this process ([`spawn_relay_in_process`]), which starts faster. Both
//! write the same relay.toml and dereference to a [`RelayEndpoint`].

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use super::pki::{TestPki, test_pki};
use super::process::{
    ChildGuard, POLL, READY_TIMEOUT, hermetic_env, iap_relay_bin, iap_ssh_bin, proxy_quote,
    proxy_quote_path, read_log, signal,
};
use super::relay_spec::RelaySpec;

/// What a client needs of a running relay, however it runs.
#[derive(Debug)]
pub struct RelayEndpoint {
    /// Base URL, e.g. `wss://127.0.0.1:PORT`.
    pub url: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The PKI it serves (None for `ws://`); `ca_pem` is what clients trust.
    pub pki: Option<TestPki>,
    /// Its log (the subprocess's stderr, or the in-process relay's tracing output).
    pub stderr_log: PathBuf,
    /// The relay.toml it runs with.
    pub config_path: PathBuf,
    dir: TempDir,
}

impl RelayEndpoint {
    /// The test CA to trust (panics for a `ws://` relay).
    pub fn ca_pem(&self) -> &Path {
        &self.pki.as_ref().expect("relay has no TLS").ca_pem
    }

    /// The relay's log so far.
    pub fn log(&self) -> String {
        read_log(&self.stderr_log)
    }

    /// The port part of [`RelayEndpoint::addr`].
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The folder holding the config, certificate and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits (at most 15 s) until the log holds `text` at least `count` times.
    ///
    /// # Panics
    /// When it does not, with the log.
    pub fn wait_for_log(&self, text: &str, count: usize) {
        let started = Instant::now();
        while self.log().matches(text).count() < count {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "no {text:?} in:\n{}",
                self.log()
            );
            thread::sleep(POLL);
        }
    }
}

/// The config folder for `spec`: relay.toml, and with TLS a fresh PKI whose cert and key are
/// copied beside the config and named relatively (which also checks that relative paths
/// resolve against the config file's folder, not the working dir).
fn write_config(spec: &RelaySpec) -> (TempDir, Option<TestPki>, PathBuf) {
    let dir = TempDir::new().expect("temp dir for relay");
    let pki = spec.tls.then(test_pki);
    let tls = pki.as_ref().map(|pki| {
        fs::copy(&pki.cert_pem, dir.path().join("relay-cert.pem")).expect("copying cert");
        fs::copy(&pki.key_pem, dir.path().join("relay-key.pem")).expect("copying key");
        ("relay-cert.pem", "relay-key.pem")
    });
    let config_path = dir.path().join("relay.toml");
    fs::write(&config_path, spec.to_toml(tls)).expect("writing relay.toml");
    (dir, pki, config_path)
}

// ---------------------------------------------------------------------------------------------
// Subprocess
// ---------------------------------------------------------------------------------------------

/// A running `iap-relay` subprocess; killed on drop.
#[derive(Debug)]
pub struct Relay {
    endpoint: RelayEndpoint,
    child: ChildGuard,
}

impl Deref for Relay {
    type Target = RelayEndpoint;
    fn deref(&self) -> &RelayEndpoint {
        &self.endpoint
    }
}

impl Relay {
    /// The relay's process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the relay process is still running (reaps it once it has exited).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().is_none()
    }

    /// Sends `sig` to the relay process.
    pub fn signal(&self, sig: rustix::process::Signal) {
        signal(self.pid(), sig);
    }

    /// Rewrites relay.toml from `spec` (same certificate) and reloads it with SIGHUP; returns
    /// once the log says "configuration reloaded" once more.
    pub fn reload(&self, spec: &RelaySpec) {
        let before = self.log().matches("configuration reloaded").count();
        let tls = spec.tls.then_some(("relay-cert.pem", "relay-key.pem"));
        fs::write(&self.config_path, spec.to_toml(tls)).expect("rewriting relay.toml");
        self.signal(rustix::process::Signal::HUP);
        self.wait_for_log("configuration reloaded", before + 1);
    }
}

/// Writes the config for `spec` and starts `iap-relay --config …`, waiting (at most
/// [`READY_TIMEOUT`]) for its `iap-relay listening on …` line.
///
/// # Panics
/// If the relay exits or is not ready in time; the message carries its stderr.
pub fn spawn_relay(spec: &RelaySpec) -> Relay {
    let (dir, pki, config_path) = write_config(spec);
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
        endpoint: RelayEndpoint {
            url,
            addr,
            pki,
            stderr_log,
            config_path,
            dir,
        },
        child,
    }
}

// ---------------------------------------------------------------------------------------------
// In process
// ---------------------------------------------------------------------------------------------

/// How long a stopped in-process relay may drain before its runtime is shut down: tests
/// observe nothing after the drop, so only a short wait for tidy closes.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// The relay library serving on 127.0.0.1 in this process, on its own runtime thread;
/// stopped (cancelled, then its thread joined) on drop.
#[derive(Debug)]
pub struct RelayGuard {
    endpoint: RelayEndpoint,
    stop: CancellationToken,
    thread: Option<thread::JoinHandle<()>>,
}

impl Deref for RelayGuard {
    type Target = RelayEndpoint;
    fn deref(&self) -> &RelayEndpoint {
        &self.endpoint
    }
}

impl Drop for RelayGuard {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every call into the relay library, in one place: loads the config the way `iap-relay`
/// does (`RelayConfig::load`, relative paths from the file's folder), builds the relay,
/// binds 127.0.0.1:0 with the binary's deep accept queue, and spawns the server; returns the
/// address, the URL scheme and the server's task (which ends once `stop` fires and the relay
/// has drained).
async fn start_relay_library(
    config_path: &Path,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, &'static str, tokio::task::JoinHandle<()>)> {
    use iap_ssh::relay::config::RelayConfig;
    use iap_ssh::relay::serve::{Relay, serve};
    let config = RelayConfig::load(config_path)?;
    let relay = Arc::new(Relay::new(config).await?);
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let listener = socket.listen(4096)?;
    let addr = listener.local_addr()?;
    let scheme = relay.scheme();
    Ok((addr, scheme, tokio::spawn(serve(relay, listener, stop))))
}

/// A tracing dispatcher writing the relay's log to `path`, in the binary's format: no
/// target, every field value escaped, `info` and up.
fn log_to_file(path: &Path) -> tracing::Dispatch {
    use tracing_subscriber::field::MakeExt;
    use tracing_subscriber::fmt::format::{Writer, debug_fn};
    // Append mode: panics are appended to the same file by another handle.
    let file = File::options()
        .create(true)
        .append(true)
        .open(path)
        .expect("creating the in-process relay's log");
    let fields = debug_fn(
        |w: &mut Writer<'_>, field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
            match field.name() {
                "message" => {}
                name if name.starts_with("log.") => return Ok(()),
                name => write!(w, "{name}=")?,
            }
            let mut escaped = String::new();
            iap_ssh::logging::escape_into(&format!("{value:?}"), &mut escaped);
            w.write_str(&escaped)
        },
    )
    .delimited(" ");
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "info,google_cloud_auth=error,gcp_auth=error,rustls=error",
        ))
        .fmt_fields(fields)
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .with_target(false)
        .finish();
    tracing::Dispatch::new(subscriber)
}

thread_local! {
    /// The log of the in-process relay this thread works for, if any.
    static PANIC_LOG: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

/// Makes a panic on this thread also land in `log`, as it would on the binary's stderr, so
/// a test that looks for "panicked" in the relay's log sees it in process too.
fn log_panics_of_this_thread(log: &Path) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = PANIC_LOG.try_with(|log| {
                if let Some(path) = &*log.borrow() {
                    let name = thread::current().name().unwrap_or("<unnamed>").to_owned();
                    let line = format!("thread '{name}' {info}\n");
                    let _ = fs::OpenOptions::new()
                        .append(true)
                        .open(path)
                        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
                }
            });
            previous(info);
        }));
    });
    PANIC_LOG.with(|p| *p.borrow_mut() = Some(log.to_owned()));
}

/// Writes the config for `spec` and serves it in this process on a two-worker runtime of its
/// own (as the binary's multi-threaded one), with its log captured to
/// [`RelayEndpoint::stderr_log`]. No admin endpoint: tests of that run the binary.
///
/// # Panics
/// If the relay cannot start within [`READY_TIMEOUT`]; the message carries the error.
pub fn spawn_relay_in_process(spec: &RelaySpec) -> RelayGuard {
    let (dir, pki, config_path) = write_config(spec);
    let stderr_log = dir.path().join("relay.log");
    let dispatch = log_to_file(&stderr_log);
    let stop = CancellationToken::new();
    let (tx, rx) = mpsc::channel();
    let thread = {
        let (config_path, stop, log_path) = (config_path.clone(), stop.clone(), stderr_log.clone());
        thread::Builder::new()
            .name("in-process-relay".into())
            .spawn(move || {
                let _log = tracing::dispatcher::set_default(&dispatch);
                log_panics_of_this_thread(&log_path);
                let on_start = dispatch.clone();
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    // Each runtime thread logs to this relay's file, for as long as it lives.
                    .on_thread_start(move || {
                        std::mem::forget(tracing::dispatcher::set_default(&on_start));
                        log_panics_of_this_thread(&log_path);
                    })
                    .build()
                    .expect("building the in-process relay's runtime");
                rt.block_on(async {
                    match start_relay_library(&config_path, stop.clone()).await {
                        Err(e) => {
                            let _ = tx.send(Err(format!("{e:#}")));
                        }
                        Ok((addr, scheme, serving)) => {
                            let _ = tx.send(Ok((addr, scheme)));
                            tokio::select! {
                                _ = serving => {}
                                () = async {
                                    stop.cancelled().await;
                                    tokio::time::sleep(STOP_GRACE).await;
                                } => {}
                            }
                        }
                    }
                });
                rt.shutdown_timeout(STOP_GRACE);
            })
            .expect("spawning the in-process relay's thread")
    };
    let (addr, scheme) = match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(started)) => started,
        Ok(Err(e)) => panic!(
            "the in-process relay did not start: {e}\n--- config ---\n{}",
            fs::read_to_string(&config_path).unwrap_or_default()
        ),
        Err(e) => panic!("the in-process relay did not start within {READY_TIMEOUT:?}: {e}"),
    };
    RelayGuard {
        endpoint: RelayEndpoint {
            url: format!("{scheme}://{addr}"),
            addr,
            pki,
            stderr_log,
            config_path,
            dir,
        },
        stop,
        thread: Some(thread),
    }
}

/// The ProxyCommand line for `relay`:
/// `<iap-ssh> --endpoint URL [--ca-file CA] --access-token-file FILE <extra> %h %p`,
/// with every path quoted for /bin/sh and ssh's `%` expansion.
pub fn proxy_command(relay: &RelayEndpoint, token_file: &Path, extra: &str) -> String {
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
