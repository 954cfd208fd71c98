//! API keys: a keys file holds only SHA-256 hashes, each mapped to an app,
//! an enabled flag and a rate limit. A presented key is hashed and compared
//! with every entry in constant time, so timing tells nothing about the keys.
//!
//! ```toml
//! [[keys]]
//! app_id = "demo-app"
//! hash = "sha256:5e88…"       # from `ingest-gateway keys new --app demo-app`
//! enabled = true
//! rate_limit_per_s = 500      # events per second, sustained
//! burst = 5000                # events allowed at once
//! ```

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The prefix of every key this gateway issues.
pub const KEY_PREFIX: &str = "ck_";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyLine {
    app_id: String,
    hash: String,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_rate")]
    rate_limit_per_s: f64,
    #[serde(default)]
    burst: Option<f64>,
}

fn yes() -> bool {
    true
}

fn default_rate() -> f64 {
    1000.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyLine>,
}

/// One app's key entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AppKey {
    pub app_id: String,
    pub enabled: bool,
    /// Sustained events per second.
    pub rate_limit_per_s: f64,
    /// Events allowed at once.
    pub burst: f64,
    hash: [u8; 32],
}

/// The result of checking a presented key.
#[derive(Debug, PartialEq)]
pub enum Auth<'a> {
    Missing,
    Unknown,
    Disabled(&'a AppKey),
    Allowed(&'a AppKey),
}

/// All keys of the keys file.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: Vec<AppKey>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The line a keys file stores for `key`: `sha256:<hex>`.
pub fn hash_key(key: &str) -> String {
    let digest = sha256(key.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("sha256:{hex}")
}

/// A new key from 32 random bytes.
pub fn key_from_random(bytes: [u8; 32]) -> String {
    let mut key = String::from(KEY_PREFIX);
    for b in bytes {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    let hex = s
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("hash `{s}` must start with sha256:"))?;
    if hex.len() != 64 {
        return Err(format!("hash `{s}` must have 64 hex digits"));
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(chunk).map_err(|_| format!("hash `{s}` is not hex"))?;
        out[i] = u8::from_str_radix(pair, 16).map_err(|_| format!("hash `{s}` is not hex"))?;
    }
    Ok(out)
}

impl KeyRing {
    /// Parses a keys file; every bad entry is reported.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: KeysFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut problems = Vec::new();
        let mut keys = Vec::new();
        for (i, line) in file.keys.into_iter().enumerate() {
            if line.app_id.trim().is_empty() {
                problems.push(format!("keys[{i}]: app_id is empty"));
            }
            if line.rate_limit_per_s.is_nan() || line.rate_limit_per_s <= 0.0 {
                problems.push(format!("keys[{i}] ({}): rate_limit_per_s must be above 0", line.app_id));
            }
            match parse_hash(&line.hash) {
                Ok(hash) => keys.push(AppKey {
                    burst: line.burst.unwrap_or(line.rate_limit_per_s * 10.0).max(1.0),
                    app_id: line.app_id,
                    enabled: line.enabled,
                    rate_limit_per_s: line.rate_limit_per_s,
                    hash,
                }),
                Err(e) => problems.push(format!("keys[{i}] ({}): {e}", line.app_id)),
            }
        }
        if problems.is_empty() {
            Ok(KeyRing { keys })
        } else {
            Err(problems.join("\n"))
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks the value of an `Authorization` header.
    pub fn check(&self, authorization: Option<&str>) -> Auth<'_> {
        let Some(key) = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
        else {
            return Auth::Missing;
        };
        let presented = sha256(key.as_bytes());
        // Compare with every entry, without stopping at a match.
        let mut found: Option<&AppKey> = None;
        for entry in &self.keys {
            if bool::from(entry.hash.ct_eq(&presented)) {
                found = Some(entry);
            }
        }
        match found {
            None => Auth::Unknown,
            Some(k) if !k.enabled => Auth::Disabled(k),
            Some(k) => Auth::Allowed(k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_by_hash_with_their_app_and_state() {
        let (a, b) = (key_from_random([1; 32]), key_from_random([2; 32]));
        let file = format!(
            "[[keys]]\napp_id = \"app-a\"\nhash = \"{}\"\nrate_limit_per_s = 5\n\n[[keys]]\napp_id = \"app-b\"\nhash = \"{}\"\nenabled = false\n",
            hash_key(&a),
            hash_key(&b)
        );
        let ring = KeyRing::parse(&file).unwrap();
        assert!(!file.contains(&a), "the file holds no key");
        match ring.check(Some(&format!("Bearer {a}"))) {
            Auth::Allowed(k) => assert_eq!((k.app_id.as_str(), k.burst), ("app-a", 50.0)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(ring.check(Some(&format!("Bearer {b}"))), Auth::Disabled(_)));
        assert_eq!(ring.check(Some("Bearer ck_nope")), Auth::Unknown);
        assert_eq!(ring.check(Some(&a)), Auth::Missing, "not a bearer token");
        assert_eq!(ring.check(None), Auth::Missing);
    }

    #[test]
    fn bad_entries_are_all_reported() {
        let err = KeyRing::parse(
            "[[keys]]\napp_id = \"\"\nhash = \"md5:x\"\n[[keys]]\napp_id = \"a\"\nhash = \"sha256:zz\"\nrate_limit_per_s = 0\n",
        )
        .unwrap_err();
        assert_eq!(err.lines().count(), 4, "{err}");
    }
}
