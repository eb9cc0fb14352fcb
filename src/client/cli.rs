//! The `iap-ssh` command line, as argh reads it. Each option's other forms (configuration
//! file key, `--print-ssh-config`, `--check`'s settings) come from its row in
//! [`options::OPTIONS`]; a test there checks that the two agree.

use std::path::PathBuf;

use argh::FromArgs;

use super::options;

/// tunnel ssh (or any TCP) through Identity-Aware Proxy TCP forwarding
// These doc comments are the `--help` text, where `[::1]:0` and `[USER:PASSWORD@]` are
// literal text, not links.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(FromArgs, Debug)]
#[argh(
    example = "As an ssh ProxyCommand (stdin and stdout are the tunnel):\n  ssh -o ProxyCommand='iap-ssh %h %p' vm-1.us-central1-a.my-project.iap\n  ssh -o ProxyCommand='iap-ssh --project my-project --zone us-central1-a %h %p' vm-1",
    example = "A local port, one tunnel per connection (RDP, databases):\n  iap-ssh --listen 127.0.0.1:0 vm-1.us-central1-a.my-project 3389",
    example = "Check a tunnel, or write a Host block for ~/.ssh/config:\n  iap-ssh --check vm-1.us-central1-a.my-project 22\n  iap-ssh --print-ssh-config --project my-project >> ~/.ssh/config",
    note = "HOST is INSTANCE[.ZONE[.PROJECT]] with an optional suffix (--host-suffix, default .iap),\nor an IP address or DNS name with --region and --network.\n\nProject and zone, first found: HOST, --project and --zone, CLOUDSDK_CORE_PROJECT and\nCLOUDSDK_COMPUTE_ZONE, the active gcloud configuration (CLOUDSDK_CONFIG), the credentials\nfile.\n\nCredentials, first found: --access-token-file, --credentials, CLOUDSDK_AUTH_ACCESS_TOKEN_FILE,\ngcloud's auth/access_token_file, the gcloud account, GOOGLE_APPLICATION_CREDENTIALS, gcloud's\nADC file, the metadata server (GCE_METADATA_HOST, or on a GCE VM).\n\nEnvironment: CLOUDSDK_CORE_REQUEST_REASON, CLOUDSDK_CORE_UNIVERSE_DOMAIN, HTTPS_PROXY,\nNO_PROXY, XDG_CACHE_HOME (token cache), IAP_SSH_TOKENINFO_URL, RUST_LOG.",
    error_code(1, "other failure, network trouble included"),
    error_code(2, "usage"),
    error_code(3, "authentication"),
    error_code(4, "not authorized (4033)"),
    error_code(5, "not found (4047)"),
    error_code(6, "backend unreachable (4003)")
)]
pub struct Args {
    /// project of the instance (default: from HOST, CLOUDSDK_CORE_PROJECT, gcloud config)
    #[argh(option)]
    pub project: Option<String>,
    /// zone of the instance (default: from HOST, CLOUDSDK_COMPUTE_ZONE, gcloud config)
    #[argh(option)]
    pub zone: Option<String>,
    /// network interface of the instance (default: nic0)
    #[argh(option)]
    pub interface: Option<String>,
    /// region, for an IP address or FQDN target (with --network)
    #[argh(option)]
    pub region: Option<String>,
    /// VPC network, for an IP address or FQDN target (with --region)
    #[argh(option)]
    pub network: Option<String>,
    /// destination group, for an IP address or FQDN target
    #[argh(option)]
    pub dest_group: Option<String>,
    /// suffix stripped from HOST (default: .iap; empty for none)
    #[argh(option)]
    pub host_suffix: Option<String>,
    /// listen on ADDR (e.g. 127.0.0.1:0 or [::1]:0) and open one tunnel per connection
    #[argh(option)]
    pub listen: Option<String>,
    /// open one tunnel, report whether it works, and exit with its status
    #[argh(switch)]
    pub check: bool,
    /// with --listen: skip the start-up connection check
    #[argh(switch)]
    pub no_check: bool,
    /// print a Host block for ~/.ssh/config (with --project, --zone, --endpoint ...) and exit
    #[argh(switch)]
    pub print_ssh_config: bool,
    /// relay URL (default: wss://tunnel.cloudproxy.app/v4, or the mTLS host with --client-cert)
    #[argh(option)]
    pub endpoint: Option<String>,
    /// PEM file of CA certificates trusted besides the system roots
    #[argh(option)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --client-key)
    #[argh(option)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert
    #[argh(option)]
    pub client_key: Option<PathBuf>,
    /// HTTP proxy URL, http://[USER:PASSWORD@]HOST:PORT (default: HTTPS_PROXY; "none" for none)
    #[argh(option)]
    pub proxy: Option<String>,
    /// file holding an OAuth access token (also CLOUDSDK_AUTH_ACCESS_TOKEN_FILE)
    #[argh(option)]
    pub access_token_file: Option<PathBuf>,
    /// credential source: gcloud (the gcloud account), adc (Application Default
    /// Credentials), or a credentials file of any type (default: gcloud's account if active,
    /// else ADC)
    #[argh(option)]
    pub credentials: Option<String>,
    /// credentials file of any type (service account, authorized user, impersonated,
    /// external account): the same as --credentials FILE
    #[argh(option)]
    pub credentials_file: Option<PathBuf>,
    /// do not keep access tokens in the user cache folder between runs
    #[argh(switch)]
    pub no_token_cache: bool,
    /// seconds to keep trying to resume a tunnel whose connection was lost (default: 900)
    #[argh(option)]
    pub resume_timeout: Option<u64>,
    /// reason for access, sent as X-Goog-Request-Reason (also CLOUDSDK_CORE_REQUEST_REASON)
    #[argh(option)]
    pub request_reason: Option<String>,
    /// universe domain (default: googleapis.com; another one uses the relay tunnel-cloudproxy.DOMAIN; also CLOUDSDK_CORE_UNIVERSE_DOMAIN)
    #[argh(option)]
    pub universe_domain: Option<String>,
    /// more diagnostics on stderr: -v a line per tunnel, -vv handshake steps and timings
    #[argh(switch, short = 'v')]
    pub verbose: u8,
    /// print the version and exit (also -V)
    #[argh(switch)]
    pub version: bool,
    /// HOST (INSTANCE[.ZONE[.PROJECT]], IP address or FQDN) and PORT
    #[argh(positional, arg_name = "HOST PORT")]
    pub destination: Vec<String>,
}

/// Rewrites the short forms argh does not know into ones it does: `-h` to `--help`, `-V` to
/// `--version`, and `-vv` (`-vvv` …) to repeated `-v`. A value after an option that takes one,
/// and everything after `--`, is left alone.
pub fn short_forms(argv: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len() + 2);
    let mut args = argv.into_iter();
    out.extend(args.next());
    let mut value_next = false;
    while let Some(arg) = args.next() {
        if std::mem::take(&mut value_next) {
            out.push(arg);
            continue;
        }
        let repeated_v = arg
            .strip_prefix('-')
            .filter(|vs| vs.len() >= 2 && vs.bytes().all(|b| b == b'v'))
            .map(str::len);
        match (arg.as_str(), repeated_v) {
            ("--", _) => {
                out.push(arg);
                out.extend(args.by_ref());
            }
            ("-h", _) => out.push("--help".to_owned()),
            ("-V", _) => out.push("--version".to_owned()),
            (_, Some(n)) => out.extend(std::iter::repeat_n("-v".to_owned(), n)),
            (a, None) => {
                value_next = a.starts_with("--") && !a.contains('=') && options::takes_value(a);
                out.push(arg);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_forms_become_long_ones() {
        let cases = [
            ("iap-ssh -h", "iap-ssh --help"),
            ("iap-ssh -V", "iap-ssh --version"),
            ("iap-ssh -vv h 22", "iap-ssh -v -v h 22"),
            ("iap-ssh -vvv -v h 22", "iap-ssh -v -v -v -v h 22"),
            ("iap-ssh -v -v h 22", "iap-ssh -v -v h 22"),
            ("iap-ssh --zone -vv h 22", "iap-ssh --zone -vv h 22"),
            (
                "iap-ssh --request-reason -h h 22",
                "iap-ssh --request-reason -h h 22",
            ),
            ("iap-ssh --check -vv h 22", "iap-ssh --check -v -v h 22"),
            ("iap-ssh -- -vv -h", "iap-ssh -- -vv -h"),
            ("iap-ssh -vx h", "iap-ssh -vx h"),
        ];
        for (input, want) in cases {
            let argv = input.split(' ').map(str::to_owned).collect();
            assert_eq!(short_forms(argv).join(" "), want, "{input}");
        }
    }
}
