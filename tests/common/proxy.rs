//! A real HTTP proxy on 127.0.0.1: Debian's tinyproxy with a temporary configuration.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::{ChildGuard, POLL, READY_TIMEOUT, free_port, read_log, tool_path};

/// A running tinyproxy; killed on drop.
#[derive(Debug)]
pub struct Tinyproxy {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its log file.
    pub log: PathBuf,
    _child: ChildGuard,
    _dir: TempDir,
}

/// Starts tinyproxy at `log_level` (`Connect`, `Info`, ...) with `extra` configuration lines
/// (e.g. `BasicAuth USER PASS`), waiting until it accepts connections.
///
/// # Panics
/// If it does not start after five ports; check `require_tool("tinyproxy")` first.
pub fn spawn_tinyproxy(log_level: &str, extra: &str) -> Tinyproxy {
    let bin = tool_path("tinyproxy").expect("tinyproxy installed");
    let dir = TempDir::new().expect("temp dir for tinyproxy");
    let log = dir.path().join("tinyproxy.log");
    for _ in 0..5 {
        let port = free_port();
        let config = dir.path().join("tinyproxy.conf");
        fs::write(
            &config,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 50\nLogLevel {log_level}\n\
                 LogFile \"{}\"\nPidFile \"{}\"\nAllow 127.0.0.1\n{extra}\n",
                log.display(),
                dir.path().join("tinyproxy.pid").display()
            ),
        )
        .expect("writing tinyproxy.conf");
        let stderr = fs::File::create(dir.path().join("stderr")).expect("tinyproxy stderr");
        let mut child = ChildGuard::new(
            Command::new(&bin)
                .arg("-d")
                .arg("-c")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("spawning tinyproxy"),
        );
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline && child.try_wait().is_none() {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Tinyproxy {
                    port,
                    url: format!("http://127.0.0.1:{port}"),
                    log,
                    _child: child,
                    _dir: dir,
                };
            }
            thread::sleep(POLL);
        }
        // The port was taken between free_port() and tinyproxy's bind, or it failed: retry.
    }
    panic!(
        "tinyproxy did not start\n{}\n{}",
        read_log(&log),
        read_log(&dir.path().join("stderr"))
    );
}
