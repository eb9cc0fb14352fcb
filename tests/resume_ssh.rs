//! Real OpenSSH sessions that survive the network: scp through connection resets, an
//! interactive session through a reset and a 10 s black hole, the resume notices reaching an
//! interactive user's terminal (tmux), and unmodified gcloud resuming through `iap-relay`
//! when the relay forces re-authentication (4004).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;
mod fault;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use fault::{FaultProxy, Mode};

const ALICE: &str = "user:alice@example.com";

/// ProxyCommand running iap-ssh through `proxy` (the fault injector) to `relay`, with a short
/// keepalive so a black hole is noticed quickly.
fn proxy_command_via(proxy: &FaultProxy, relay: &Relay, token_file: &Path) -> String {
    format!(
        "{} --endpoint {} --ca-file {} --access-token-file {} %h %p",
        proxy_quote_path(&iap_ssh_bin()),
        proxy_quote(&format!("wss://{}", proxy.addr)),
        proxy_quote_path(relay.ca_pem()),
        proxy_quote_path(token_file),
    )
}

/// A relay, the fault injector in front of it, an sshd, and alice's token file.
fn faulty_path() -> (Relay, FaultProxy, Sshd, std::path::PathBuf) {
    let token = random_hex(24);
    let relay = spawn_relay(&RelaySpec::standard(ALICE, &token));
    let proxy = FaultProxy::start(relay.addr);
    let sshd = spawn_sshd();
    let token_file = write_token_file(&sshd.subdir("secrets"), &token);
    (relay, proxy, sshd, token_file)
}

#[test]
fn scp_128_mib_survives_5_resets() {
    if !require_openssh() {
        return;
    }
    let (relay, proxy, sshd, token_file) = faulty_path();
    let local = sshd.subdir("local");
    let remote = sshd.subdir("remote");
    let len = 128usize << 20;
    let src = random_file(&local, "big.bin", len);
    let want = sha256_file(&src);
    let dest = remote.join("big.bin");

    let pc = proxy_command_via(&proxy, &relay, &token_file);
    let mut cmd = ssh_command("scp", &sshd);
    cmd.args(ssh_base_args(&sshd, &pc)).arg(&src).arg(format!(
        "{}:{}",
        dotted_host(),
        dest.display()
    ));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let resets = thread::scope(|s| {
        let (proxy, dest) = (&proxy, &dest);
        let chaos = s.spawn(move || {
            // Reset whenever the copy passes another fifth of the file (by the remote size).
            let mut hits = 0;
            for i in 1..=5u64 {
                let point = (len as u64) * i / 6;
                loop {
                    if done_rx.try_recv().is_ok() {
                        return hits;
                    }
                    if dest.metadata().map(|m| m.len()).unwrap_or(0) >= point {
                        break;
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                if proxy.reset_all() > 0 {
                    hits += 1;
                }
            }
            hits
        });
        let out = run_with_timeout(&mut cmd, TRANSFER_TIMEOUT);
        let _ = done_tx.send(());
        assert!(
            out.status.success(),
            "{}\n--- relay ---\n{}",
            describe(&out),
            relay.log()
        );
        chaos.join().unwrap()
    });
    assert_eq!(resets, 5, "every reset hit a live connection");
    assert_eq!(
        sha256_file(&dest),
        want,
        "scp through resets corrupted the file"
    );
    assert!(
        relay.log().matches(" reconnect ").count() >= 5,
        "{}",
        relay.log()
    );
}

#[test]
fn interactive_session_survives_reset_and_black_hole() {
    if !require_openssh() {
        return;
    }
    let (relay, proxy, sshd, token_file) = faulty_path();
    let pc = proxy_command_via(&proxy, &relay, &token_file);
    let mut cmd = ssh_command("ssh", &sshd);
    cmd.args(ssh_base_args(&sshd, &pc))
        .arg(dotted_host())
        .arg("while read line; do echo \"got $line\"; done")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(tempfile::tempfile().unwrap()));
    let mut child = ChildGuard::new(cmd.spawn().unwrap());
    let mut stdin = child.child_mut().stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.child_mut().stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let mut say = |text: &str| {
        writeln!(stdin, "{text}").unwrap();
        let got = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("an answer within 60 s");
        assert_eq!(got, format!("got {text}"));
    };
    say("one");
    assert!(proxy.reset_all() >= 1);
    say("two, after a reset");
    assert!(proxy.set_all(Mode::BlackHole) >= 1);
    // Ten seconds of silence in the black hole, then type.
    thread::sleep(Duration::from_secs(10));
    let started = Instant::now();
    say("three, after a 10 s black hole");
    eprintln!("answer after the black hole took {:?}", started.elapsed());
    say("four");
    drop(stdin);
    let started = Instant::now();
    while child.try_wait().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "ssh did not exit"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        relay.log().matches(" reconnect ").count() >= 2,
        "{}",
        relay.log()
    );
}

/// gcloud resumes only on 4004; our relay forces it every 2 s during a 16 MiB upload.
#[test]
fn gcloud_resumes_through_forced_reauthentication() {
    if !require_openssh() || !require_tool("gcloud") {
        return;
    }
    let token = random_hex(24);
    let spec = RelaySpec::standard(ALICE, &token).limits(|l| l.reauthenticate_after_secs = Some(2));
    let relay = spawn_relay(&spec);
    let sshd = spawn_sshd();
    let token_file = write_token_file(&sshd.subdir("secrets"), &token);
    let local = sshd.subdir("local");
    let remote = sshd.subdir("remote");
    let src = random_file(&local, "up.bin", 16 << 20);
    let want = sha256_file(&src);
    let dest = remote.join("up.bin");

    let gcloud = tool_path("gcloud").expect("gcloud installed");
    let pc = format!(
        "{} compute start-iap-tunnel {INSTANCE} %p --zone {ZONE} --project {PROJECT} \
         --listen-on-stdin --iap-tunnel-url-override={} --verbosity=warning",
        proxy_quote_path(&gcloud),
        proxy_quote(&relay.url),
    );
    let mut cmd = ssh_command("ssh", &sshd);
    cmd.env("CLOUDSDK_CORE_PROJECT", PROJECT)
        .env("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", &token_file)
        .env("CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE", relay.ca_pem())
        .env("CLOUDSDK_CORE_DISABLE_USAGE_REPORTING", "true")
        .env("CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK", "true")
        .args(ssh_base_args(&sshd, &pc))
        .arg(INSTANCE)
        // The remote side reads 256 KiB every 100 ms (about 2.5 MB/s), so the upload spans
        // several forced re-authentications whatever gcloud's own speed.
        .arg(format!(
            "/usr/bin/python3 -c {}",
            sh_quote(&format!(
                "import sys,time\nout=open({:?},'wb')\nwhile True:\n b=sys.stdin.buffer.read(262144)\n if not b: break\n out.write(b); time.sleep(0.1)\nout.close()",
                dest.display().to_string()
            ))
        ));
    let started = Instant::now();
    let out = run_with_io(
        &mut cmd,
        Stdio::from(File::open(&src).unwrap()),
        None,
        TRANSFER_TIMEOUT,
    );
    let took = started.elapsed();
    assert!(out.status.success(), "{}\n{}", describe(&out), relay.log());
    assert_eq!(
        sha256_file(&dest),
        want,
        "upload through gcloud resumes corrupted"
    );
    let log = relay.log();
    let forced = log.matches("code: 4004").count();
    let resumed = log.matches(" reconnect ").count();
    eprintln!(
        "gcloud upload of 16 MiB took {took:?}: {forced} forced re-authentications, {resumed} resumes"
    );
    assert!(
        forced >= 2,
        "expected several forced re-authentications:\n{log}"
    );
    assert!(
        resumed >= forced,
        "gcloud did not resume after every 4004:\n{log}"
    );
}

/// ssh ends its ProxyCommand with SIGHUP; the tunnel must close in order (not look like a lost
/// connection that the relay parks for resume).
#[test]
fn finished_ssh_session_closes_in_order() {
    if !require_openssh() {
        return;
    }
    let token = random_hex(24);
    let relay = spawn_relay(&RelaySpec::standard(ALICE, &token));
    let sshd = spawn_sshd();
    let token_file = write_token_file(&sshd.subdir("secrets"), &token);
    let mut cmd = ssh_command("ssh", &sshd);
    cmd.args(ssh_base_args(
        &sshd,
        &proxy_command(&relay, &token_file, ""),
    ))
    .arg(dotted_host())
    .arg("echo hello");
    let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT);
    assert!(out.status.success(), "{}", describe(&out));
    let started = Instant::now();
    loop {
        let log = relay.log();
        if log.contains(" close ") {
            assert!(
                !log.contains("parked"),
                "a finished session was parked:\n{log}"
            );
            assert!(
                log.contains("client closed") || log.contains("backend closed"),
                "{log}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no close line:\n{log}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A tmux server of our own (its own socket in a temp folder), killed when dropped.
struct Tmux {
    socket: std::path::PathBuf,
    sshd_dir: std::path::PathBuf,
}

impl Tmux {
    fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(tool_path("tmux").expect("tmux installed"));
        // The same hermetic environment as the ssh tests: the pane's ssh and its ProxyCommand
        // inherit it from the tmux server this starts.
        hermetic_env(&mut cmd, &self.sshd_dir);
        cmd.arg("-S").arg(&self.socket).args(["-f", "/dev/null"]);
        cmd
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = self.command();
        cmd.args(args);
        run_with_timeout(&mut cmd, Duration::from_secs(10))
    }

    /// The pane's text, wrapped lines joined, with its scrollback.
    fn screen(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-J", "-S", "-500", "-t", "notice"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn type_line(&self, text: &str) {
        let out = self.run(&["send-keys", "-t", "notice", "-l", text]);
        assert!(out.status.success(), "{}", describe(&out));
        self.run(&["send-keys", "-t", "notice", "Enter"]);
    }

    /// Waits up to `limit` for `want` on the screen; returns the screen.
    fn wait_for(&self, want: &str, limit: Duration) -> String {
        let started = Instant::now();
        loop {
            let screen = self.screen();
            if screen.contains(want) {
                return screen;
            }
            assert!(
                started.elapsed() < limit,
                "{want:?} not on the screen after {limit:?}:\n{screen}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Ends the server on our own socket (and the ssh it runs), nothing else.
        let _ = self.run(&["kill-server"]);
    }
}

/// An interactive ssh user in a terminal (tmux) sees why the session froze: the relay is cut
/// and refuses connections for 4 s, iap-ssh's notices reach the terminal ("resuming …",
/// then "resumed …", each starting at the left margin although ssh keeps the terminal in raw
/// mode), and the same session then runs a command.
#[test]
fn resume_notices_reach_an_interactive_terminal() {
    if !require_openssh() || !require_tool("tmux") {
        return;
    }
    let (relay, proxy, sshd, token_file) = faulty_path();
    let pc = proxy_command_via(&proxy, &relay, &token_file);
    let ssh = tool_path("ssh").expect("ssh installed");
    let mut words = vec![ssh.display().to_string()];
    words.extend(ssh_base_args(&sshd, &pc));
    words.extend(["-tt".to_owned(), dotted_host()]);
    let line: Vec<String> = words.iter().map(|w| sh_quote(w)).collect();
    let tmux = Tmux {
        socket: sshd.subdir("tmux").join("socket"),
        sshd_dir: sshd.subdir(""),
    };
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "notice",
        "-x",
        "250",
        "-y",
        "50",
        &line.join(" "),
    ]);
    assert!(out.status.success(), "tmux: {}", describe(&out));

    // The shell answers: arithmetic proves the command ran remotely, not just its echo.
    let started = Instant::now();
    loop {
        tmux.type_line("echo ready-$((20+1))");
        if tmux.screen().contains("ready-21") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no shell:\n{}\n--- sshd ---\n{}\n--- relay ---\n{}",
            tmux.screen(),
            sshd.log(),
            relay.log()
        );
        thread::sleep(Duration::from_secs(2));
    }

    // The relay goes away: the connection is cut and new ones are refused for 4 s.
    proxy.refuse_new(true);
    assert!(proxy.reset_all() >= 1, "a live connection was cut");
    tmux.wait_for(
        &format!("iap-ssh: resuming the tunnel to vm-1 port {} in", sshd.port),
        Duration::from_secs(20),
    );
    thread::sleep(Duration::from_secs(3));
    proxy.refuse_new(false);
    let screen = tmux.wait_for(
        "iap-ssh: resumed the tunnel to vm-1",
        Duration::from_secs(60),
    );
    assert!(
        screen.lines().any(|l| l.starts_with(&format!(
            "iap-ssh: resumed the tunnel to vm-1 port {} in ",
            sshd.port
        ))),
        "the notice starts at the left margin:\n{screen}"
    );
    assert!(
        screen.contains("the connection to the relay was lost ("),
        "{screen}"
    );
    eprintln!("the terminal after the resume:\n{screen}");

    // The same session works.
    tmux.type_line("echo after-$((40+2))");
    tmux.wait_for("after-42", Duration::from_secs(30));
    tmux.type_line("exit");
    assert!(
        relay.log().matches(" reconnect ").count() >= 1,
        "{}",
        relay.log()
    );
}
