//! Who is calling: bearer tokens checked against the relay's configuration.
//!
//! Static tokens are stored only as SHA-256 hashes. A presented token is hashed and compared
//! with every stored hash in constant time, with no early exit, so neither the comparison nor
//! the position of a match leaks through timing. Nothing here logs a token or a hash of one.

use anyhow::bail;
use ring::digest::{SHA256, digest};
use subtle::ConstantTimeEq;

/// The configured static tokens.
#[derive(Debug, Default)]
pub struct StaticTokens {
    entries: Vec<([u8; 32], String)>,
}

impl StaticTokens {
    /// Adds a token by the lowercase hex SHA-256 of its text.
    ///
    /// # Errors
    /// When the hash is not 64 hex digits or the principal is malformed.
    pub fn add(&mut self, principal: &str, sha256_hex: &str) -> anyhow::Result<()> {
        let Some(hash) = parse_hex32(sha256_hex) else {
            bail!(
                "sha256 must be 64 hex digits (the SHA-256 of the token, e.g. from `printf %s TOKEN | sha256sum`)"
            );
        };
        if !(principal.starts_with("user:") || principal.starts_with("serviceAccount:"))
            || !principal.contains('@')
        {
            bail!(
                "principal {principal:?} must look like user:NAME@DOMAIN or serviceAccount:NAME@DOMAIN"
            );
        }
        self.entries.push((hash, principal.to_owned()));
        Ok(())
    }

    /// The principal a token belongs to, if any.
    pub fn authenticate(&self, token: &str) -> Option<&str> {
        let presented = digest(&SHA256, token.as_bytes());
        let mut found = None;
        for (hash, principal) in &self.entries {
            if bool::from(hash.ct_eq(presented.as_ref())) && found.is_none() {
                found = Some(principal.as_str());
            }
        }
        found
    }
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// The token in an `Authorization: Bearer …` header value, if it has that form.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    // SHA-256 of "foo" and of "bar".
    const FOO: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
    const BAR: &str = "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9";

    #[test]
    fn tokens_match_by_hash() {
        let mut tokens = StaticTokens::default();
        tokens.add("user:a@x.io", FOO).unwrap();
        tokens
            .add("serviceAccount:b@x.io", &BAR.to_uppercase())
            .unwrap();
        assert_eq!(tokens.authenticate("foo"), Some("user:a@x.io"));
        assert_eq!(tokens.authenticate("bar"), Some("serviceAccount:b@x.io"));
        assert_eq!(tokens.authenticate("baz"), None);
        assert_eq!(tokens.authenticate(""), None);
    }

    #[test]
    fn bad_entries_are_refused() {
        let mut tokens = StaticTokens::default();
        assert!(tokens.add("user:a@x.io", "abc").is_err());
        assert!(tokens.add("user:a@x.io", &FOO.replace('c', "g")).is_err());
        assert!(tokens.add("alice", FOO).is_err());
    }

    #[test]
    fn bearer_header_forms() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
