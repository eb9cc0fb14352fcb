//! A real OpenSSH `sshd` on 127.0.0.1 with throw-away keys, and the ssh, scp and sftp
//! command lines that reach it.

use std::fs::{self, File};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::{
    ChildGuard, POLL, READY_TIMEOUT, describe, free_port, hermetic_env, read_log, run_with_timeout,
    tool_path,
};

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
