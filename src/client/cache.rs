//! The on-disk access-token cache, so that many short-lived `iap-ssh` processes (one per ssh
//! connection, dozens for an Ansible run) share one token fetch.
//!
//! One small JSON file per credential source and scope set, in a directory only the user can
//! enter (0700). Files are written 0600 to a temporary name and renamed into place, so a reader
//! sees the old file or the new one and never half of one, even with many writers at once. A
//! directory or file that is not the user's, or that others may read, is not trusted: the cache
//! is bypassed with a warning and the tunnel goes on with a fresh token.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

use super::auth::Token;

/// A cached token is used only while it has at least this long to live, so that a tunnel
/// never starts with a token about to expire (gcloud refreshes 5 minutes ahead too).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Cache files larger than this are not ours.
const MAX_FILE_LEN: u64 = 64 * 1024;

/// A cache directory; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenCache {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    access_token: String,
    /// Seconds since the Unix epoch.
    expires_at: u64,
    /// Who the token belongs to, when the source said (shown by `--check` and `-v`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    principal: Option<String>,
    /// What else the source answered alongside the token (gcloud's active properties), so
    /// that a cached run needs no call to the source at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    properties: Option<serde_json::Value>,
}

/// A token with its real expiry and what came with it.
#[derive(Clone, Debug)]
pub struct Cached {
    /// The token.
    pub token: Token,
    /// Its expiry, Unix seconds.
    pub expires_at: u64,
    /// Who it belongs to, when known.
    pub principal: Option<String>,
    /// Source-specific extras (gcloud's properties).
    pub properties: Option<serde_json::Value>,
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenCache {
    /// A cache in `dir` (created on first store).
    pub fn new(dir: PathBuf) -> TokenCache {
        TokenCache { dir }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key for a credential source (anything that tells sources apart, e.g. a hash of a
    /// key file) and a scope set: a hex SHA-256, so file names reveal nothing.
    pub fn key(source: &[u8], scopes: &[&str]) -> String {
        let mut material = source.to_vec();
        material.push(0);
        material.extend_from_slice(scopes.join(" ").as_bytes());
        digest(&SHA256, &material)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("token-{key}.json"))
    }

    /// The cached token for `key` if it lives past `now` + [`REFRESH_MARGIN`].
    ///
    /// # Errors
    /// A one-line warning (never holding the token) when the cache cannot be trusted or read;
    /// the caller fetches a fresh token.
    pub fn load(&self, key: &str, now: u64) -> Result<Option<Cached>, String> {
        match fs::symlink_metadata(&self.dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.warning(&format!("cannot read it: {e}"))),
            Ok(meta) => self.check_dir(&meta)?,
        }
        let path = self.path(key);
        let meta = match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.file_warning(&path, &format!("cannot read it: {e}"))),
            Ok(meta) => meta,
        };
        if !meta.file_type().is_file() || meta.len() > MAX_FILE_LEN {
            return Err(self.file_warning(&path, "it is not a token cache file"));
        }
        check_owner(&meta).map_err(|why| self.file_warning(&path, &why))?;
        let mut text = String::new();
        File::open(&path)
            .and_then(|f| f.take(MAX_FILE_LEN).read_to_string(&mut text))
            .map_err(|e| self.file_warning(&path, &format!("cannot read it: {e}")))?;
        let entry: Entry = serde_json::from_str(&text)
            .map_err(|_| self.file_warning(&path, "it is not valid JSON; it will be replaced"))?;
        if entry.expires_at < now.saturating_add(REFRESH_MARGIN.as_secs()) {
            return Ok(None);
        }
        let token = Token::new(&entry.access_token).map_err(|_| {
            self.file_warning(&path, "it holds no usable token; it will be replaced")
        })?;
        Ok(Some(Cached {
            token,
            expires_at: entry.expires_at,
            principal: entry.principal,
            properties: entry.properties,
        }))
    }

    /// Stores `cached` (a token valid until its `expires_at`) for `key`.
    ///
    /// # Errors
    /// A one-line warning when the directory cannot be made or trusted or the file written.
    pub fn store(&self, key: &str, cached: &Cached) -> Result<(), String> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| self.warning(&format!("cannot create it: {e}")))?;
        let meta = fs::symlink_metadata(&self.dir)
            .map_err(|e| self.warning(&format!("cannot read it: {e}")))?;
        self.check_dir(&meta)?;
        let entry = Entry {
            access_token: cached.token.secret().to_owned(),
            expires_at: cached.expires_at,
            principal: cached.principal.clone(),
            properties: cached.properties.clone(),
        };
        let text = serde_json::to_string(&entry).map_err(|e| self.warning(&e.to_string()))?;
        // A unique temporary name per writer: concurrent first uses each write their own file
        // and the last rename wins with a complete file.
        let tmp = self.dir.join(format!(
            ".token-{key}.{}.{}.tmp",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| fs::rename(&tmp, self.path(key)));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(self.warning(&format!("cannot write a token file: {e}")));
        }
        Ok(())
    }

    /// Drops the entry for `key` (e.g. after the relay refused its token), so the next
    /// [`load`](Self::load) misses.
    pub fn forget(&self, key: &str) {
        let _ = fs::remove_file(self.path(key));
    }

    fn check_dir(&self, meta: &fs::Metadata) -> Result<(), String> {
        if !meta.file_type().is_dir() {
            return Err(self.warning("it is not a directory"));
        }
        check_owner(meta).map_err(|why| self.warning(&why))
    }

    fn warning(&self, why: &str) -> String {
        format!(
            "token cache {}: {why}; going on without it (fix or remove it, or pass --no-token-cache)",
            self.dir.display()
        )
    }

    fn file_warning(&self, path: &Path, why: &str) -> String {
        format!(
            "token cache file {}: {why}; fetching a fresh token (remove the file, or pass --no-token-cache)",
            path.display()
        )
    }
}

/// Trusted only when ours and closed to group and others: anyone else who can write it could
/// plant a token, and anyone who can read it could take ours.
fn check_owner(meta: &fs::Metadata) -> Result<(), String> {
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "it is owned by uid {}, not by this user (uid {me})",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "its mode is {mode:o}: others may read it (expected 700 for the folder, 600 for files)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCOPES: &[&str] = &["a", "b"];

    fn token(text: &str) -> Token {
        Token::new(text).unwrap()
    }

    fn entry(text: &str, expires_at: u64) -> Cached {
        Cached {
            token: token(text),
            expires_at,
            principal: Some("who@example.com".into()),
            properties: None,
        }
    }

    #[test]
    fn keys_differ_by_source_and_scopes() {
        let k = TokenCache::key(b"src", SCOPES);
        assert_eq!(k.len(), 64);
        assert_eq!(k, TokenCache::key(b"src", SCOPES));
        assert_ne!(k, TokenCache::key(b"other", SCOPES));
        assert_ne!(k, TokenCache::key(b"src", &["a"]));
    }

    #[test]
    fn stored_tokens_are_reused_until_five_minutes_before_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::new(dir.path().join("sub/iap-ssh"));
        let key = TokenCache::key(b"src", SCOPES);
        assert_eq!(cache.load(&key, 1000).map(|t| t.is_some()), Ok(false));
        cache.store(&key, &entry("tok-1", 10_000)).unwrap();
        let dir_mode = fs::metadata(cache.dir()).unwrap().permissions().mode() & 0o777;
        let file_mode = fs::metadata(cache.path(&key)).unwrap().permissions().mode() & 0o777;
        assert_eq!((dir_mode, file_mode), (0o700, 0o600));
        let got = cache.load(&key, 10_000 - 301).unwrap().unwrap();
        assert_eq!(got.token.authorization(), "Bearer tok-1");
        assert_eq!(got.principal.as_deref(), Some("who@example.com"));
        assert!(cache.load(&key, 10_000 - 299).unwrap().is_none());
        cache.forget(&key);
        assert!(cache.load(&key, 0).unwrap().is_none());
        cache.store(&key, &entry("tok-1", 10_000)).unwrap();
        // Nothing but the one file is left behind.
        assert_eq!(fs::read_dir(cache.dir()).unwrap().count(), 1);
    }

    #[test]
    fn untrusted_or_broken_files_are_warnings_without_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::new(dir.path().join("c"));
        let key = TokenCache::key(b"src", SCOPES);
        cache.store(&key, &entry("secret-tok", u64::MAX)).unwrap();
        let path = cache.path(&key);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = cache.load(&key, 0).unwrap_err();
        assert!(
            err.contains("mode is 644") && !err.contains("secret-tok"),
            "{err}"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

        fs::write(&path, "{not json").unwrap();
        let err = cache.load(&key, 0).unwrap_err();
        assert!(err.contains("not valid JSON"), "{err}");
        // A store replaces the broken file.
        cache.store(&key, &entry("secret-tok", u64::MAX)).unwrap();
        assert!(cache.load(&key, 0).unwrap().is_some());

        fs::set_permissions(cache.dir(), fs::Permissions::from_mode(0o755)).unwrap();
        let err = cache.load(&key, 0).unwrap_err();
        assert!(err.contains("mode is 755"), "{err}");
        assert!(cache.store(&key, &entry("x", 1)).is_err());
        fs::set_permissions(cache.dir(), fs::Permissions::from_mode(0o700)).unwrap();

        // Ownership by another user: only root can arrange it.
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(12345), None).unwrap();
            let err = cache.load(&key, 0).unwrap_err();
            assert!(err.contains("owned by uid 12345"), "{err}");
        }

        let not_dir = TokenCache::new(path.clone());
        assert!(
            not_dir
                .load(&key, 0)
                .unwrap_err()
                .contains("not a directory")
        );
    }
}
