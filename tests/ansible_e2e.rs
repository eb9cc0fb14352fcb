//! Real Ansible (ansible-core from PyPI, in the virtualenv that .ci/run makes) driving the test
//! sshd through `iap-ssh` as the ProxyCommand and `iap-relay`, with ssh connection sharing on as
//! Ansible users run it. Skips when Ansible or OpenSSH is missing, except under CI=true.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const ALICE: &str = "user:alice@example.com";
/// Ansible's first task on a fresh host runs several ssh/sftp commands; allow for slow machines.
const ANSIBLE_TIMEOUT: Duration = Duration::from_secs(180);

/// The folder with `ansible`: `$IAP_SSH_ANSIBLE_BIN_DIR`, else `target/ansible-venv/bin` in this
/// crate (made by .ci/run), else wherever `ansible` is on PATH.
fn ansible_bin_dir() -> Option<PathBuf> {
    let has_ansible = |d: &Path| d.join("ansible").is_file();
    if let Some(dir) = std::env::var_os("IAP_SSH_ANSIBLE_BIN_DIR") {
        let dir = PathBuf::from(dir);
        assert!(
            has_ansible(&dir),
            "IAP_SSH_ANSIBLE_BIN_DIR={} has no ansible",
            dir.display()
        );
        return Some(dir);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ansible-venv/bin");
    if has_ansible(&venv) {
        return Some(venv);
    }
    tool_path("ansible").and_then(|p| p.parent().map(Path::to_path_buf))
}

fn require_ansible() -> Option<PathBuf> {
    if !require_openssh() {
        return None;
    }
    match ansible_bin_dir() {
        Some(dir) => Some(dir),
        None => {
            skip_or_fail("ansible not installed (run .ci/run, or set IAP_SSH_ANSIBLE_BIN_DIR)");
            None
        }
    }
}

/// An inventory with one host reached through `proxy_command`, plus the hermetic settings and
/// the ControlPersist sockets (closed on drop).
struct AnsibleRun<'a> {
    sshd: &'a Sshd,
    bin_dir: PathBuf,
    dir: PathBuf,
    inventory: PathBuf,
    masters: ControlMasters,
}

impl<'a> AnsibleRun<'a> {
    fn new(sshd: &'a Sshd, bin_dir: PathBuf, proxy_command: &str) -> Self {
        let dir = sshd.subdir("ansible");
        let cm_dir = sshd.subdir("cm");
        let masters = ControlMasters {
            dir: cm_dir.clone(),
        };
        let opts = [
            "-F /dev/null".to_owned(),
            "-o IdentitiesOnly=yes".to_owned(),
            "-o BatchMode=yes".to_owned(),
            format!(
                "-o {}",
                sh_quote(&format!(
                    "UserKnownHostsFile={}",
                    sshd.known_hosts.display()
                ))
            ),
            "-o GlobalKnownHostsFile=/dev/null".to_owned(),
            "-o LogLevel=ERROR".to_owned(),
            format!("-o {}", sh_quote(&format!("ProxyCommand={proxy_command}"))),
            "-o ControlMaster=auto".to_owned(),
            "-o ControlPersist=60s".to_owned(),
            format!(
                "-o {}",
                sh_quote(&format!("ControlPath={}/cm-%C", cm_dir.display()))
            ),
        ];
        let inventory_json = serde_json::json!({
            "all": { "hosts": { "vm1": {
                "ansible_host": dotted_host(),
                "ansible_port": sshd.port,
                "ansible_user": "root",
                "ansible_ssh_private_key_file": sshd.client_key,
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_ssh_common_args": opts.join(" "),
            }}}
        });
        // JSON is YAML; the .yml name selects ansible's yaml inventory plugin, which takes the
        // strings verbatim (the INI format would re-parse the quoting).
        let inventory = dir.join("inventory.yml");
        fs::write(&inventory, inventory_json.to_string()).unwrap();
        fs::write(dir.join("ansible.cfg"), "[defaults]\n").unwrap();
        Self {
            sshd,
            bin_dir,
            dir,
            inventory,
            masters,
        }
    }

    /// `ansible all -i INVENTORY ARGS…` with a hermetic environment, bounded in time.
    fn ansible(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(self.bin_dir.join("ansible"));
        hermetic_env(&mut cmd, self.sshd.dir.path());
        let d = &self.dir;
        cmd.current_dir(d)
            .env("ANSIBLE_CONFIG", d.join("ansible.cfg"))
            .env("ANSIBLE_HOME", d.join("home"))
            .env("ANSIBLE_LOCAL_TEMP", d.join("local-tmp"))
            .env("ANSIBLE_REMOTE_TEMP", d.join("remote-tmp"))
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", d.join("cp"))
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
            .env("ANSIBLE_NOCOLOR", "1")
            // Connection sharing comes from ansible_ssh_common_args alone.
            .env("ANSIBLE_SSH_ARGS", "")
            .env("LC_ALL", "C.UTF-8")
            .env("LANG", "C.UTF-8")
            .arg("all")
            .arg("-i")
            .arg(&self.inventory)
            .args(args);
        run_with_timeout(&mut cmd, ANSIBLE_TIMEOUT)
    }

    fn ping(&self) -> Output {
        self.ansible(&["-m", "ping"])
    }

    /// How many ControlPersist master sockets exist (the masters outlive each ansible run).
    fn control_sockets(&self) -> usize {
        use std::os::unix::fs::FileTypeExt;
        fs::read_dir(&self.masters.dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
                    .count()
            })
            .unwrap_or(0)
    }
}

fn assert_ping(out: &Output, context: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("SUCCESS") && stdout.contains("\"pong\""),
        "ansible ping failed\n{}\n{context}",
        describe(out)
    );
}

/// The harness itself: Ansible through a plain TCP ProxyCommand (socat), no iap-ssh. When this
/// fails, the problem is the Ansible setup, not iap-ssh.
#[test]
fn harness_ansible_ping_through_plain_proxy() {
    let Some(bin_dir) = require_ansible() else {
        return;
    };
    if !require_tool("socat") {
        return;
    }
    let sshd = spawn_sshd();
    let pc = format!(
        "{} - TCP:127.0.0.1:%p",
        proxy_quote_path(&tool_path("socat").unwrap())
    );
    let run = AnsibleRun::new(&sshd, bin_dir, &pc);
    assert_ping(&run.ping(), &sshd.log());
    assert_eq!(
        run.control_sockets(),
        1,
        "expected one ControlPersist master"
    );
}

#[test]
fn ansible_ping_and_copy_through_iap_ssh() {
    let Some(bin_dir) = require_ansible() else {
        return;
    };
    let token = random_hex(24);
    let relay = spawn_relay(&RelaySpec::standard(ALICE, &token));
    let sshd = spawn_sshd();
    let token_file = write_token_file(&sshd.subdir("secrets"), &token);
    let pc = proxy_command(&relay, &token_file, "");
    let run = AnsibleRun::new(&sshd, bin_dir, &pc);
    let logs = || {
        format!(
            "--- iap-relay log ---\n{}\n--- sshd log ---\n{}",
            relay.log(),
            sshd.log()
        )
    };

    assert_ping(&run.ping(), &logs());
    assert_eq!(
        run.control_sockets(),
        1,
        "expected one ControlPersist master"
    );

    let local = sshd.subdir("local");
    let remote = sshd.subdir("remote");
    let src = random_file(&local, "payload.bin", 1 << 20);
    let dest = remote.join("copied.bin");
    let out = run.ansible(&[
        "-m",
        "copy",
        "-a",
        &format!("src={} dest={} mode=0600", src.display(), dest.display()),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CHANGED"),
        "ansible copy failed\n{}\n{}",
        describe(&out),
        logs()
    );
    assert_eq!(sha256_file(&dest), sha256_file(&src), "copied file differs");

    // A second run over the shared connection: the file is already there, nothing changes.
    let out = run.ansible(&[
        "-m",
        "copy",
        "-a",
        &format!("src={} dest={} mode=0600", src.display(), dest.display()),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("SUCCESS") && !stdout.contains("CHANGED"),
        "second copy should be a no-op\n{}\n{}",
        describe(&out),
        logs()
    );
}
