//! The gcloud properties iap-ssh uses (project, zone, account, impersonation, token file, CA
//! file, proxy), read from a gcloud configuration file or from the answer of
//! `gcloud config config-helper`.

use super::error::Error;

/// The gcloud properties iap-ssh uses, from a configuration file (INI) or from the answer of
/// `gcloud config config-helper`. Serializable, so the gcloud source can cache them with its
/// token and a cached run needs no gcloud at all.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcloudProperties {
    /// `[core] project`.
    #[serde(default)]
    pub project: Option<String>,
    /// `[compute] zone`.
    #[serde(default)]
    pub zone: Option<String>,
    /// `[core] account`: the active account.
    #[serde(default)]
    pub account: Option<String>,
    /// `[auth] impersonate_service_account`.
    #[serde(default)]
    pub impersonate: Option<String>,
    /// `[auth] access_token_file`.
    #[serde(default)]
    pub access_token_file: Option<String>,
    /// `[core] custom_ca_certs_file`.
    #[serde(default)]
    pub custom_ca_certs_file: Option<String>,
    /// `[proxy] type` (`http`, `http_no_tunnel`, `socks4`, `socks5`).
    #[serde(default)]
    pub proxy_type: Option<String>,
    /// `[proxy] address`.
    #[serde(default)]
    pub proxy_address: Option<String>,
    /// `[proxy] port`.
    #[serde(default)]
    pub proxy_port: Option<String>,
    /// `[proxy] username`.
    #[serde(default)]
    pub proxy_username: Option<String>,
    /// `[proxy] password`.
    #[serde(default)]
    pub proxy_password: Option<String>,
}

impl GcloudProperties {
    /// Parses gcloud's INI format: `[section]` headers, `key = value` lines, `#`/`;` comments;
    /// section and key names ignore case, as Python's configparser does.
    pub fn parse(text: &str) -> GcloudProperties {
        let mut props = GcloudProperties::default();
        let mut section = String::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with(['#', ';']) {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.trim().to_ascii_lowercase();
                continue;
            }
            let Some((key, value)) = line.split_once(['=', ':']) else {
                continue;
            };
            let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
            if let Some(slot) = props.slot(&section, &key) {
                *slot = (!value.is_empty()).then(|| value.to_owned());
            }
        }
        props
    }

    /// The properties in `gcloud config config-helper --format=json`'s
    /// `configuration.properties` (section → name → string), which already include
    /// environment overrides and installation-wide settings.
    pub fn from_config_helper(properties: &serde_json::Value) -> GcloudProperties {
        let mut props = GcloudProperties::default();
        let Some(sections) = properties.as_object() else {
            return props;
        };
        for (section, values) in sections {
            let Some(values) = values.as_object() else {
                continue;
            };
            for (key, value) in values {
                let text = match value {
                    serde_json::Value::String(s) => s.trim().to_owned(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => continue,
                };
                if let Some(slot) = props.slot(section, key) {
                    *slot = (!text.is_empty()).then_some(text);
                }
            }
        }
        props
    }

    fn slot(&mut self, section: &str, key: &str) -> Option<&mut Option<String>> {
        Some(match (section, key) {
            ("core", "project") => &mut self.project,
            ("compute", "zone") => &mut self.zone,
            ("core", "account") => &mut self.account,
            ("auth", "impersonate_service_account") => &mut self.impersonate,
            ("auth", "access_token_file") => &mut self.access_token_file,
            ("core", "custom_ca_certs_file") => &mut self.custom_ca_certs_file,
            ("proxy", "type") => &mut self.proxy_type,
            ("proxy", "address") => &mut self.proxy_address,
            ("proxy", "port") => &mut self.proxy_port,
            ("proxy", "username") => &mut self.proxy_username,
            ("proxy", "password") => &mut self.proxy_password,
            _ => return None,
        })
    }

    /// The `proxy/*` properties as an `http://[USER:PASSWORD@]HOST:PORT` URL, if set.
    ///
    /// # Errors
    /// A usage error for proxy types other than HTTP, or an address without a port.
    pub fn proxy_url(&self) -> Result<Option<String>, Error> {
        let Some(address) = &self.proxy_address else {
            return Ok(None);
        };
        let kind = self.proxy_type.as_deref().unwrap_or("http");
        if !kind.eq_ignore_ascii_case("http") {
            return Err(Error::usage(format!(
                "gcloud property proxy/type is {kind}: iap-ssh supports HTTP proxies only; set proxy/type to http or pass --proxy"
            )));
        }
        let Some(port) = &self.proxy_port else {
            return Err(Error::usage(
                "gcloud property proxy/address is set but proxy/port is not: set both, or pass --proxy",
            ));
        };
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let auth = match (&self.proxy_username, &self.proxy_password) {
            (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(p)),
            (Some(u), None) => format!("{}@", enc(u)),
            _ => String::new(),
        };
        Ok(Some(format!("http://{auth}{address}:{port}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcloud_properties_parse_like_configparser() {
        let text = "[core]\naccount = a@b.c\nproject = my-proj\n\n[compute]\n; comment\nZone: us-east1-b\nregion = us-east1\n[other]\nproject = nope\n";
        assert_eq!(
            GcloudProperties::parse(text),
            GcloudProperties {
                project: Some("my-proj".into()),
                zone: Some("us-east1-b".into()),
                account: Some("a@b.c".into()),
                ..Default::default()
            }
        );
        let empty = GcloudProperties::parse("[core]\nproject =\n[compute]\n");
        assert_eq!(empty, GcloudProperties::default());
    }

    #[test]
    fn gcloud_proxy_and_config_helper_properties() {
        let answer = serde_json::json!({
            "core": {"project": "p", "account": "a@b.c", "custom_ca_certs_file": "/ca.pem"},
            "compute": {"zone": "z"},
            "auth": {"impersonate_service_account": "sa@p.iam.gserviceaccount.com"},
            "proxy": {"type": "http", "address": "proxy.corp", "port": "3128",
                      "username": "u", "password": "p@ss"}
        });
        let props = GcloudProperties::from_config_helper(&answer);
        assert_eq!(props.project.as_deref(), Some("p"));
        assert_eq!(props.zone.as_deref(), Some("z"));
        assert_eq!(
            props.impersonate.as_deref(),
            Some("sa@p.iam.gserviceaccount.com")
        );
        assert_eq!(props.custom_ca_certs_file.as_deref(), Some("/ca.pem"));
        assert_eq!(
            props.proxy_url(),
            Ok(Some("http://u:p%40ss@proxy.corp:3128".into()))
        );
        let socks = GcloudProperties::parse("[proxy]\ntype = socks5\naddress = h\nport = 1\n");
        assert!(socks.proxy_url().unwrap_err().message.contains("socks5"));
        assert_eq!(GcloudProperties::default().proxy_url(), Ok(None));
    }
}
