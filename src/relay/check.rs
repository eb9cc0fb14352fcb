//! `iap-relay --check-config`: every problem in a configuration, found without side effects.
//!
//! Offline by default: files are read (certificates, keys, CAs, JWKS files), nothing is
//! fetched, bound or created. With `online`, JWKS URLs are fetched too.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::config::RelayConfig;
use super::jwt::JwtVerifier;
use super::outbound::HttpClient;

/// Every problem with the files and services `config` names, one sentence each.
pub async fn problems(config: &RelayConfig, online: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some((cert, key)) = &config.tls
        && let Err(e) = super::tls::server_config(cert, key, config.client_ca.as_ref())
    {
        problems.push(format!("[tls]: {e:#}"));
    }
    let http = match HttpClient::new(config.outbound_ca_file.as_deref(), Duration::from_secs(10)) {
        Ok(http) => Some(Arc::new(http)),
        Err(e) => {
            problems.push(format!("outbound_ca_file: {e:#}"));
            None
        }
    };
    for issuer in &config.jwt {
        match &issuer.jwks_url {
            Some(url) if !online => {
                if let Err(e) = HttpClient::check_url(url) {
                    problems.push(format!("jwt issuer {:?}: {e:#}", issuer.issuer));
                }
            }
            _ => {
                if let Err(e) = JwtVerifier::new(vec![issuer.clone()], http.clone()).await {
                    problems.push(format!("{e:#}"));
                }
            }
        }
    }
    // [tokeninfo] (URL, client ids, scopes) is checked when the file is parsed; building the
    // checker here again would report the same problem twice.
    if let Some(path) = &config.audit_log
        && let Some(problem) = audit_log_problem(path)
    {
        problems.push(problem);
    }
    problems
}

/// Whether the audit log could be appended to, found without creating it.
fn audit_log_problem(path: &Path) -> Option<String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Some(format!("audit_log {shown} is a folder: name a file")),
        Ok(_) => std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .err()
            .map(|e| {
                format!("audit_log {shown} cannot be appended to: {e}: fix its owner or mode")
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty())?;
            match std::fs::metadata(parent) {
                Ok(m) if m.is_dir() && !m.permissions().readonly() => None,
                Ok(m) if m.is_dir() => Some(format!(
                    "audit_log {shown}: folder {} is read-only: make it writable for the relay",
                    parent.display()
                )),
                Ok(_) => Some(format!(
                    "audit_log {shown}: {} is not a folder",
                    parent.display()
                )),
                Err(_) => Some(format!(
                    "audit_log {shown}: folder {} does not exist: create it",
                    parent.display()
                )),
            }
        }
        Err(e) => Some(format!("audit_log {shown}: {e}")),
    }
}
