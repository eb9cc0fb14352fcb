//! A whole loopback deployment with no cloud account: a throw-away CA, `iap-relay` with a
//! static token, an inventory and one binding, a TCP echo service as the "VM", and `iap-ssh`
//! carrying data to it through the relay. Then a refused principal, to show the error path.
//!
//! Run: `cargo build --release && cargo run --release --example demo`
//! With `--keep` it leaves the relay running and prints an ssh_config block to try by hand.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn binary(name: &str) -> PathBuf {
    // target/<profile>/examples/demo → target/<profile>/<name>
    let exe = std::env::current_exe().expect("own path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    if !path.exists() {
        eprintln!(
            "{} is missing: run `cargo build --release` first",
            path.display()
        );
        std::process::exit(1);
    }
    path
}

fn sha256_hex(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keep = std::env::args().any(|a| a == "--keep");
    let dir = tempfile::tempdir()?;
    let d = dir.path();

    // 1. A private CA and a certificate for the relay on 127.0.0.1.
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let relay_key = KeyPair::generate()?;
    let relay_cert = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?
        .signed_by(&relay_key, &issuer)?;
    std::fs::write(d.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(d.join("relay-cert.pem"), relay_cert.pem())?;
    std::fs::write(d.join("relay-key.pem"), relay_key.serialize_pem())?;

    // 2. The "VM": an echo service on loopback.
    let echo = TcpListener::bind("127.0.0.1:0")?;
    let echo_port = echo.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut out = stream.try_clone().expect("clone socket");
                let mut input = stream;
                let _ = std::io::copy(&mut input, &mut out);
            });
        }
    });

    // 3. The relay: alice may reach demo-vm, bob is known but has no binding.
    let (alice, bob) = ("demo-token-alice", "demo-token-bob");
    std::fs::write(d.join("alice.token"), alice)?;
    std::fs::write(d.join("bob.token"), bob)?;
    let config = format!(
        r#"listen = "127.0.0.1:0"
[tls]
cert = "relay-cert.pem"
key = "relay-key.pem"
[[static_tokens]]
principal = "user:alice@example.com"
sha256 = "{}"
[[static_tokens]]
principal = "user:bob@example.com"
sha256 = "{}"
[[instances]]
project = "demo-project"
zone = "demo-zone"
name = "demo-vm"
interfaces = {{ nic0 = "127.0.0.1" }}
[[bindings]]
role = "roles/iap.tunnelResourceAccessor"
members = ["user:alice@example.com"]
resource = "projects/demo-project/zones/demo-zone/instances/demo-vm"
"#,
        sha256_hex(alice.as_bytes()),
        sha256_hex(bob.as_bytes())
    );
    std::fs::write(d.join("relay.toml"), &config)?;
    let mut relay = Command::new(binary("iap-relay"))
        .arg("--config")
        .arg(d.join("relay.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(d.join("relay.log"))?))
        .spawn()?;
    let mut ready = String::new();
    BufReader::new(relay.stdout.take().ok_or("relay stdout")?).read_line(&mut ready)?;
    let relay = Killed(relay);
    let url = ready
        .trim()
        .rsplit(' ')
        .next()
        .ok_or("readiness line")?
        .to_owned();
    println!("relay:   {url} (log: {})", d.join("relay.log").display());
    println!(
        "target:  demo-vm.demo-zone.demo-project nic0 = 127.0.0.1, echo service on port {echo_port}"
    );

    let iap_ssh = |token: &str| {
        let mut cmd = Command::new(binary("iap-ssh"));
        cmd.args(["--endpoint", &url, "--ca-file"])
            .arg(d.join("ca.pem"))
            .arg("--access-token-file")
            .arg(d.join(token))
            .args(["demo-vm.demo-zone.demo-project.iap", &echo_port.to_string()]);
        cmd
    };

    // 4. 64 MiB through the tunnel and back, checked by SHA-256.
    let data: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let started = Instant::now();
    let mut child = iap_ssh("alice.token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or("stdin")?;
    let mut stdout = child.stdout.take().ok_or("stdout")?;
    let sent = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&sent).map(|()| stdin));
    let mut echoed = vec![0u8; data.len()];
    stdout.read_exact(&mut echoed)?;
    drop(writer.join().map_err(|_| "writer panicked")??); // close stdin: the tunnel ends
    let status = child.wait()?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "echo:    64 MiB up and back in {secs:.2}s ({:.0} MiB/s each way), SHA-256 {} ({}), iap-ssh exit {}",
        64.0 / secs,
        &sha256_hex(&echoed)[..16],
        if echoed == data {
            "identical"
        } else {
            "DIFFERENT"
        },
        status.code().unwrap_or(-1)
    );

    // 5. The error path: bob has a valid token but no binding.
    let out = iap_ssh("bob.token").stdin(Stdio::null()).output()?;
    println!(
        "bob:     exit {} — {}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).trim()
    );

    if keep {
        println!(
            "\nThe relay keeps running until you press Enter. Point ssh at any service listed in the inventory, e.g.:\n  ssh -o ProxyCommand='{} --endpoint {url} --ca-file {} --access-token-file {} %h %p' -p {echo_port} demo-vm.demo-zone.demo-project.iap",
            binary("iap-ssh").display(),
            d.join("ca.pem").display(),
            d.join("alice.token").display()
        );
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
    drop(relay);
    if echoed != data {
        return Err("echoed data differs".into());
    }
    Ok(())
}
