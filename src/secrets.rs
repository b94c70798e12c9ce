//! Encryption at rest of channels' signing secrets and custom header
//! values (`[secrets] key_file`). A key is 32 random bytes, written base64
//! in a file (a systemd `LoadCredential=` path works); its id is a short
//! hash of it. A value is sealed with XChaCha20-Poly1305 (a random 24-byte
//! nonce in front of the ciphertext, the kind of value as associated data)
//! and stored as text, the key id beside it:
//! `nrenc:v1:<key id>:<base64(nonce || ciphertext)>`. A value without that
//! prefix is plain (written before a key existed, or without one).
//!
//! The process holds one keyring ([`install`]): the configured key, which
//! seals what is written, and every key it has learned to open (old and new
//! keys of a rotation, unwrapped from the bridges `secrets rotate-key`
//! stores; reading them is `db::secrets`' business). Nothing here touches
//! the database, and no error quotes a value.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// What every sealed value starts with.
pub const PREFIX: &str = "nrenc:v1:";

/// The associated data of a signing secret (current or previous).
pub const SIGNING_SECRET: &str = "signing_secret";

/// The associated data of a custom header value.
pub const HEADER_VALUE: &str = "header_value";

/// The associated data of a key wrapped under another (a rotation bridge).
pub const WRAPPED_KEY: &str = "wrapped_key";

/// Why a key could not be read or a value opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The key file cannot be read.
    #[error("cannot read the key file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file does not hold base64 of 32 bytes.
    #[error("the key file {} must hold 32 random bytes as base64 (e.g. made with: head -c 32 /dev/urandom | base64)", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
    },
    /// A value is sealed under a key this process does not have.
    #[error("a value is encrypted under key {0}, which this instance does not have: set [secrets] key_file to that key (or to the key it was rotated to)")]
    UnknownKey(String),
    /// A sealed value does not open (damaged, or not ours).
    #[error("a value encrypted under key {0} does not decrypt (damaged, or moved from another row kind)")]
    Damaged(String),
}

/// A key: its id and cipher. `Debug` never shows the key.
#[derive(Clone)]
pub struct Key {
    id: String,
    bytes: [u8; 32],
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.id)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.id == other.id
    }
}

impl Key {
    /// The key of 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key {
            id: key_id(&bytes),
            bytes,
        }
    }

    /// The key written base64 in `text` (surrounding white space ignored);
    /// `None` unless it decodes to exactly 32 bytes.
    pub fn from_base64(text: &str) -> Option<Key> {
        let bytes = STANDARD.decode(text.trim()).ok()?;
        let bytes: [u8; 32] = bytes.try_into().ok()?;
        Some(Key::from_bytes(bytes))
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Key, SecretsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Key::from_base64(&text).ok_or_else(|| SecretsError::BadKey {
            path: path.to_path_buf(),
        })
    }

    /// Its id (16 hex digits of a hash of it; not secret).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key as base64 (what a bridge wraps).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.bytes)
    }

    /// `plain` sealed under this key, for a value of kind `aad`.
    pub fn seal(&self, plain: &str, aad: &str) -> String {
        let cipher = XChaCha20Poly1305::new((&self.bytes).into());
        let nonce: [u8; 24] = rand::random();
        // Encryption fails only for inputs beyond ~256 GiB.
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        format!("{PREFIX}{}:{}", self.id, STANDARD.encode(blob))
    }

    fn open(&self, blob: &str, aad: &str) -> Result<String, SecretsError> {
        let damaged = || SecretsError::Damaged(self.id.clone());
        let bytes = STANDARD.decode(blob).map_err(|_| damaged())?;
        if bytes.len() < 24 {
            return Err(damaged());
        }
        let (nonce, sealed) = bytes.split_at(24);
        let cipher = XChaCha20Poly1305::new((&self.bytes).into());
        let plain = cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| damaged())?;
        String::from_utf8(plain).map_err(|_| damaged())
    }
}

/// The id of a key: the first 8 bytes of SHA-256 over a label and the key,
/// in hex.
pub fn key_id(bytes: &[u8; 32]) -> String {
    let digest = Sha256::new()
        .chain_update(b"notification-reconciler secrets key id\0")
        .chain_update(bytes)
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The key id of a sealed value; `None` for a plain one.
pub fn sealed_under(value: &str) -> Option<&str> {
    let rest = value.strip_prefix(PREFIX)?;
    rest.split_once(':').map(|(id, _)| id)
}

/// The process's keys.
#[derive(Debug, Default)]
struct Keyring {
    current: Option<Key>,
    known: HashMap<String, Key>,
}

fn ring() -> &'static RwLock<Keyring> {
    static RING: std::sync::OnceLock<RwLock<Keyring>> = std::sync::OnceLock::new();
    RING.get_or_init(|| RwLock::new(Keyring::default()))
}

/// Makes `current` the key this process seals with (`None`: values are
/// written plain) and opens with. Called once a command has read its
/// configuration; keys learned before stay known.
pub fn install(current: Option<Key>) {
    let mut ring = ring().write().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = &current {
        ring.known.insert(k.id.clone(), k.clone());
    }
    ring.current = current;
}

/// Adds a key this process may open values with (not seal).
pub fn learn(key: Key) {
    let mut ring = ring().write().unwrap_or_else(|e| e.into_inner());
    ring.known.insert(key.id.clone(), key);
}

/// Whether a key with this id is known.
pub fn knows(id: &str) -> bool {
    let ring = ring().read().unwrap_or_else(|e| e.into_inner());
    ring.known.contains_key(id)
}

/// A known key by id.
pub fn known(id: &str) -> Option<Key> {
    let ring = ring().read().unwrap_or_else(|e| e.into_inner());
    ring.known.get(id).cloned()
}

/// The key values are sealed with, if any.
pub fn current() -> Option<Key> {
    let ring = ring().read().unwrap_or_else(|e| e.into_inner());
    ring.current.clone()
}

/// `plain` as stored: sealed under the current key, or plain without one.
pub fn seal(plain: &str, aad: &str) -> String {
    match current() {
        Some(k) => k.seal(plain, aad),
        None => plain.to_string(),
    }
}

/// A stored value opened (a plain one as it is).
pub fn open(stored: &str, aad: &str) -> Result<String, SecretsError> {
    let Some(rest) = stored.strip_prefix(PREFIX) else {
        return Ok(stored.to_string());
    };
    let (id, blob) = rest
        .split_once(':')
        .ok_or_else(|| SecretsError::Damaged(String::new()))?;
    let key = known(id).ok_or_else(|| SecretsError::UnknownKey(id.to_string()))?;
    key.open(blob, aad)
}

/// Custom headers as stored: each value sealed (names stay readable).
pub fn seal_headers(headers: &serde_json::Value) -> serde_json::Value {
    map_values(headers, |v| Ok(seal(v, HEADER_VALUE))).unwrap_or_else(|_| headers.clone())
}

/// Custom headers opened.
pub fn open_headers(headers: &serde_json::Value) -> Result<serde_json::Value, SecretsError> {
    map_values(headers, |v| open(v, HEADER_VALUE))
}

/// The same JSON object with every string value passed through `f`.
pub fn map_values(
    headers: &serde_json::Value,
    mut f: impl FnMut(&str) -> Result<String, SecretsError>,
) -> Result<serde_json::Value, SecretsError> {
    let serde_json::Value::Object(map) = headers else {
        return Ok(headers.clone());
    };
    let mut out = serde_json::Map::new();
    for (name, value) in map {
        let value = match value {
            serde_json::Value::String(s) => serde_json::Value::String(f(s)?),
            other => other.clone(),
        };
        out.insert(name.clone(), value);
    }
    Ok(serde_json::Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_its_key_only_and_for_its_kind_only() {
        let a = Key::from_bytes([1; 32]);
        let b = Key::from_bytes([2; 32]);
        assert_ne!(a.id(), b.id());
        let sealed = a.seal("whsec_abc", SIGNING_SECRET);
        assert!(sealed.starts_with(&format!("{PREFIX}{}:", a.id())));
        assert!(!sealed.contains("abc"));
        assert_eq!(sealed_under(&sealed), Some(a.id()));
        let (_, blob) = sealed[PREFIX.len()..].split_once(':').unwrap();
        assert_eq!(a.open(blob, SIGNING_SECRET).unwrap(), "whsec_abc");
        assert!(a.open(blob, HEADER_VALUE).is_err(), "another kind");
        assert!(b.open(blob, SIGNING_SECRET).is_err(), "another key");
        assert_ne!(a.seal("x", SIGNING_SECRET), a.seal("x", SIGNING_SECRET));
        assert_eq!(sealed_under("whsec_plain"), None);
    }

    #[test]
    fn key_files_hold_base64_of_32_bytes() {
        let key = Key::from_bytes([9; 32]);
        assert_eq!(
            Key::from_base64(&format!(" {}\n", key.to_base64())),
            Some(key)
        );
        assert!(Key::from_base64("c2hvcnQ=").is_none());
        assert!(Key::from_base64("not base64!").is_none());
        assert!(!format!("{:?}", Key::from_bytes([9; 32]))
            .contains(&Key::from_bytes([9; 32]).to_base64()));
    }
}
