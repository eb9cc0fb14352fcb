//! The user's `iap-ssh` configuration file: defaults for the options a user would otherwise
//! repeat in every ProxyCommand (relay, CA file, suffix, project and zone, proxy, resume
//! budget).
//!
//! It sits below flags and the environment and above gcloud's configuration: a flag says what
//! this one run needs, an environment variable what this shell needs, the file what this user
//! needs, and gcloud's configuration what gcloud was set up with.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::Error;
use super::options::{self, Kind};

/// A configuration file that was found, with where it is (for messages and `--check`).
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// Its values as `(option name, value)`, relative paths already resolved against its
    /// folder.
    pub values: Vec<(&'static str, String)>,
    /// The file.
    pub path: PathBuf,
}

impl Loaded {
    /// How `--check` and error messages name this file.
    pub fn label(&self) -> String {
        format!("config file {}", self.path.display())
    }

    /// The file's value for the option `name` (the option's name, not its file key).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Where the file is: `IAP_SSH_CONFIG` when set (then it must exist), else
/// `$XDG_CONFIG_HOME/iap-ssh/config.toml` or `~/.config/iap-ssh/config.toml` (optional).
/// Returns the path and whether it was named explicitly.
pub fn location(env: &dyn Fn(&str) -> Option<String>) -> Option<(PathBuf, bool)> {
    if let Some(named) = env("IAP_SSH_CONFIG").filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(named), true));
    }
    let base = env("XDG_CONFIG_HOME")
        .filter(|d| d.starts_with('/'))
        .map(PathBuf::from)
        .or_else(|| {
            env("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some((base.join("iap-ssh").join("config.toml"), false))
}

/// Reads the file at `path`. A missing file is `Ok(None)` unless it was named explicitly.
///
/// # Errors
/// A file that cannot be read or parsed, or a named file that does not exist; the message
/// names the file and what to do.
pub fn load(path: &Path, named: bool) -> Result<Option<Loaded>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => return Ok(None),
        Err(e) => {
            return Err(Error::usage(format!(
                "reading the configuration file {} (IAP_SSH_CONFIG): {e}",
                path.display()
            )));
        }
    };
    // Keys are the options' file keys (`options::OPTIONS`); an unknown key is refused, so a
    // typo is an error, not a silent default.
    let bad = |what: &str| {
        let keys: Vec<&str> = options::file_keys().collect();
        Error::usage(format!(
            "configuration file {}: {} (keys: {})",
            path.display(),
            what.trim(),
            keys.join(", ")
        ))
    };
    let table: toml::Table = toml::from_str(&text).map_err(|e| bad(e.message()))?;
    let mut values = Vec::new();
    for (key, value) in table {
        let Some(opt) = options::by_file_key(&key) else {
            let expected: Vec<String> = options::file_keys().map(|k| format!("`{k}`")).collect();
            return Err(bad(&format!(
                "unknown field `{key}`, expected one of {}",
                expected.join(", ")
            )));
        };
        let value = match opt.kind {
            Kind::File => {
                let file = PathBuf::deserialize(value).map_err(|e| bad(e.message()))?;
                match path.parent() {
                    Some(dir) if file.is_relative() => dir.join(file),
                    _ => file,
                }
                .display()
                .to_string()
            }
            Kind::Seconds => u64::deserialize(value)
                .map_err(|e| bad(e.message()))?
                .to_string(),
            _ => String::deserialize(value).map_err(|e| bad(e.message()))?,
        };
        values.push((opt.name, value));
    }
    Ok(Some(Loaded {
        values,
        path: path.to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn location_prefers_the_named_file_then_xdg_then_home() {
        let named = env_of(&[("IAP_SSH_CONFIG", "/etc/x.toml"), ("HOME", "/h")]);
        assert_eq!(location(&named), Some(("/etc/x.toml".into(), true)));
        let xdg = env_of(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")]);
        assert_eq!(
            location(&xdg),
            Some(("/x/iap-ssh/config.toml".into(), false))
        );
        let relative_xdg = env_of(&[("XDG_CONFIG_HOME", "rel"), ("HOME", "/h")]);
        assert_eq!(
            location(&relative_xdg),
            Some(("/h/.config/iap-ssh/config.toml".into(), false))
        );
        assert_eq!(location(&env_of(&[])), None);
    }

    #[test]
    fn files_parse_strictly_and_resolve_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "endpoint = \"wss://relay.example:8443\"\nca_file = \"ca.pem\"\nproject = \"p\"\nresume_timeout_secs = 60\n",
        )
        .unwrap();
        let loaded = load(&path, false).unwrap().unwrap();
        assert_eq!(loaded.get("endpoint"), Some("wss://relay.example:8443"));
        let ca = dir.path().join("ca.pem").display().to_string();
        assert_eq!(loaded.get("ca-file"), Some(ca.as_str()));
        assert_eq!(loaded.get("resume-timeout"), Some("60"));
        assert_eq!(loaded.get("project"), Some("p"));

        std::fs::write(&path, "endpont = \"x\"\n").unwrap();
        let err = load(&path, false).unwrap_err().message;
        assert!(err.contains("unknown field `endpont`"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");

        std::fs::write(&path, "resume_timeout_secs = \"x\"\n").unwrap();
        let err = load(&path, false).unwrap_err().message;
        assert!(
            err.ends_with(
                ": invalid type: string \"x\", expected u64 (keys: endpoint, ca_file, host_suffix, project, zone, proxy, resume_timeout_secs)"
            ),
            "{err}"
        );

        let missing = dir.path().join("none.toml");
        assert!(load(&missing, false).unwrap().is_none());
        assert!(
            load(&missing, true)
                .unwrap_err()
                .message
                .contains("IAP_SSH_CONFIG")
        );
    }
}
