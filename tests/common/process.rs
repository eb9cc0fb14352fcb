//! Tools, child processes and their output: every child is owned by a guard that kills it
//! (by pid) on drop, and every wait has a deadline.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a spawned server (relay, sshd) may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval for readiness checks and child-exit polling.
pub const POLL: Duration = Duration::from_millis(20);
/// Default deadline for one short client command (ssh true, ansible ping, ...).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for one bulk transfer (tens of MiB through the tunnel).
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(180);

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

/// A finished command's stderr as text.
pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
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

/// Asks the kernel for a free port on 127.0.0.1 (bind :0, read, drop). Only for programs that
/// must bind by themselves; the caller retries if the port is taken in between.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// `(VmRSS, VmHWM)` of `pid` in KiB (zeros if unreadable).
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Raises this process's open-file limit as far as allowed (children inherit it); returns it.
pub fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    let _ = setrlimit(Resource::Nofile, lim);
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Sends `sig` to process `pid`.
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a positive pid");
    rustix::process::kill_process(pid, sig).expect("sending a signal");
}
