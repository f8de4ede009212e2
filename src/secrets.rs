//! Secrets at rest: AEAD encryption with key ids, so keys can be rotated.
//!
//! # Ciphertext format (version 1)
//!
//! ```text
//! ok1:<key-id>:<base64url-nopad(nonce || ciphertext-with-tag)>
//! ```
//!
//! * cipher: XChaCha20-Poly1305 (RustCrypto `chacha20poly1305`), 24-byte
//!   random nonce, 16-byte tag appended to the ciphertext;
//! * key: 32 bytes, given base64-encoded in `ORGKEEPER_SECRET_KEY`;
//! * key id: the first 8 hex digits of `SHA-256("orgkeeper-key-id:" || key)`,
//!   so a reader picks the right key without trying each one;
//! * associated data: none.
//!
//! The *legacy* scheme (secrets of pre-organization users) is
//! `base64url-nopad(nonce || ciphertext-with-tag)` with the same cipher under
//! `ORGKEEPER_LEGACY_SECRET_KEY` and no prefix; the daemon re-encrypts it into
//! version 1 when a user is migrated.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::fmt;

const PREFIX: &str = "ok1";
const NONCE_LEN: usize = 24;

/// Why a secret could not be encrypted or decrypted. Never contains the secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// The configured key is not 32 bytes of base64.
    #[error(
        "{setting} must be 32 bytes encoded as base64 (generate one with: openssl rand -base64 32)"
    )]
    BadKey {
        /// The environment variable holding the key.
        setting: &'static str,
    },
    /// The ciphertext names a key we do not have.
    #[error("ciphertext was made with key id {0}, which is not configured (set it as ORGKEEPER_SECRET_KEY or keep it as an old key)")]
    UnknownKey(String),
    /// The ciphertext is not in a format we know, or fails authentication.
    #[error("ciphertext is malformed or was tampered with")]
    Corrupt,
    /// Legacy ciphertext but no legacy key configured.
    #[error("legacy ciphertext found but ORGKEEPER_LEGACY_SECRET_KEY is not set")]
    NoLegacyKey,
}

/// One 32-byte key, its id, and a sub-key for deriving values from it.
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
    derive: [u8; 32],
}

impl Key {
    fn from_base64(encoded: &str, setting: &'static str) -> Result<Self, SecretError> {
        let bytes = STANDARD
            .decode(encoded.trim())
            .map_err(|_| SecretError::BadKey { setting })?;
        if bytes.len() != 32 {
            return Err(SecretError::BadKey { setting });
        }
        let digest = Sha256::new()
            .chain_update(b"orgkeeper-key-id:")
            .chain_update(&bytes)
            .finalize();
        let id = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
            .map_err(|_| SecretError::BadKey { setting })?;
        let derive = Sha256::new()
            .chain_update(b"orgkeeper-derive:")
            .chain_update(&bytes)
            .finalize()
            .into();
        Ok(Key { id, cipher, derive })
    }

    fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut out = nonce.to_vec();
        out.extend(
            self.cipher
                .encrypt(&nonce, plaintext)
                .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers"),
        );
        out
    }

    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SecretError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(SecretError::Corrupt);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), body)
            .map_err(|_| SecretError::Corrupt)
    }
}

/// The keys the daemon holds: the current one (encrypts and decrypts), old
/// ones (decrypt only, for rotation), and the legacy key (pre-org secrets).
pub struct Keyring {
    current: Key,
    old: Vec<Key>,
    legacy: Option<Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current_key_id", &self.current.id)
            .field(
                "old_key_ids",
                &self.old.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .field("legacy", &self.legacy.is_some())
            .finish()
    }
}

impl Keyring {
    /// Builds the keyring from base64 keys (`ORGKEEPER_SECRET_KEY`, optional
    /// old keys, optional `ORGKEEPER_LEGACY_SECRET_KEY`).
    pub fn new(
        current: &SecretString,
        old: &[SecretString],
        legacy: Option<&SecretString>,
    ) -> Result<Self, SecretError> {
        Ok(Keyring {
            current: Key::from_base64(current.expose_secret(), "ORGKEEPER_SECRET_KEY")?,
            old: old
                .iter()
                .map(|k| Key::from_base64(k.expose_secret(), "ORGKEEPER_OLD_SECRET_KEYS"))
                .collect::<Result<_, _>>()?,
            legacy: legacy
                .map(|k| Key::from_base64(k.expose_secret(), "ORGKEEPER_LEGACY_SECRET_KEY"))
                .transpose()?,
        })
    }

    /// The id of the key that encrypts new secrets.
    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    /// A LiteLLM key value derived from the current key and `context` with
    /// HMAC-SHA-256: `sk-` and 48 hex digits. The same context always gives
    /// the same key, so a retry that lost its saved progress still finds the
    /// key it created instead of making another.
    pub fn derive_api_key(&self, context: &str) -> SecretString {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.current.derive)
            .expect("HMAC takes any key length");
        mac.update(b"litellm-key:");
        mac.update(context.as_bytes());
        let digest = mac.finalize().into_bytes();
        SecretString::from(format!(
            "sk-{}",
            digest[..24]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ))
    }

    /// Encrypts `plaintext` under the current key (format `ok1:<key-id>:<data>`).
    pub fn encrypt(&self, plaintext: &SecretString) -> String {
        let sealed = self.current.seal(plaintext.expose_secret().as_bytes());
        format!(
            "{PREFIX}:{}:{}",
            self.current.id,
            URL_SAFE_NO_PAD.encode(sealed)
        )
    }

    /// Decrypts a version-1 ciphertext with whichever configured key made it.
    pub fn decrypt(&self, ciphertext: &str) -> Result<SecretString, SecretError> {
        let mut parts = ciphertext.splitn(3, ':');
        let (Some(PREFIX), Some(key_id), Some(data)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SecretError::Corrupt);
        };
        let key = std::iter::once(&self.current)
            .chain(&self.old)
            .find(|k| k.id == key_id)
            .ok_or_else(|| SecretError::UnknownKey(key_id.to_string()))?;
        let sealed = URL_SAFE_NO_PAD
            .decode(data)
            .map_err(|_| SecretError::Corrupt)?;
        to_secret(key.open(&sealed)?)
    }

    /// Whether `ciphertext` is in the current format (and so needs no re-encryption).
    pub fn is_current_format(ciphertext: &str) -> bool {
        ciphertext.starts_with("ok1:")
    }

    /// Decrypts a legacy-scheme ciphertext with the legacy key.
    pub fn decrypt_legacy(&self, ciphertext: &str) -> Result<SecretString, SecretError> {
        let key = self.legacy.as_ref().ok_or(SecretError::NoLegacyKey)?;
        let sealed = URL_SAFE_NO_PAD
            .decode(ciphertext.trim())
            .map_err(|_| SecretError::Corrupt)?;
        to_secret(key.open(&sealed)?)
    }

    /// Encrypts with the legacy scheme. Exists for tests, benchmarks and
    /// data generators that need legacy data; production never writes it.
    pub fn encrypt_legacy(&self, plaintext: &SecretString) -> Result<String, SecretError> {
        let key = self.legacy.as_ref().ok_or(SecretError::NoLegacyKey)?;
        Ok(URL_SAFE_NO_PAD.encode(key.seal(plaintext.expose_secret().as_bytes())))
    }

    /// Decrypts either format: version 1 with its key, anything else as legacy.
    pub fn decrypt_any(&self, ciphertext: &str) -> Result<SecretString, SecretError> {
        if Self::is_current_format(ciphertext) {
            self.decrypt(ciphertext)
        } else {
            self.decrypt_legacy(ciphertext)
        }
    }
}

fn to_secret(bytes: Vec<u8>) -> Result<SecretString, SecretError> {
    String::from_utf8(bytes)
        .map(SecretString::from)
        .map_err(|_| SecretError::Corrupt)
}

/// A fresh random 32-byte key, base64-encoded (for `orgkeeper dev` and tests).
pub fn generate_key() -> SecretString {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    SecretString::from(STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(with_legacy: bool) -> (Keyring, SecretString) {
        let current = generate_key();
        let legacy = generate_key();
        let ring = Keyring::new(&current, &[], with_legacy.then_some(&legacy)).unwrap();
        (ring, current)
    }

    #[test]
    fn round_trip_records_the_key_id_and_hides_the_plaintext() {
        let (ring, _) = ring(false);
        let secret = SecretString::from("sk-very-secret-value-123");
        let ct = ring.encrypt(&secret);
        assert!(ct.starts_with(&format!("ok1:{}:", ring.current_key_id())));
        assert!(!ct.contains("very-secret"));
        assert_eq!(
            ring.decrypt(&ct).unwrap().expose_secret(),
            "sk-very-secret-value-123"
        );
        assert_ne!(ct, ring.encrypt(&secret), "fresh nonce every time");
    }

    #[test]
    fn rotation_decrypts_with_old_keys_and_names_missing_ones() {
        let (old_ring, old_key) = ring(false);
        let ct = old_ring.encrypt(&SecretString::from("sk-rotated-key-0000"));
        let new_ring = Keyring::new(&generate_key(), &[old_key], None).unwrap();
        assert_eq!(
            new_ring.decrypt(&ct).unwrap().expose_secret(),
            "sk-rotated-key-0000"
        );
        let stranger = Keyring::new(&generate_key(), &[], None).unwrap();
        assert_eq!(
            stranger.decrypt(&ct).unwrap_err(),
            SecretError::UnknownKey(old_ring.current_key_id().to_string())
        );
    }

    #[test]
    fn derived_api_keys_are_stable_per_context_and_key() {
        let (ring, key) = ring(false);
        let a = ring.derive_api_key("org-1");
        assert_eq!(
            a.expose_secret(),
            ring.derive_api_key("org-1").expose_secret()
        );
        assert_ne!(
            a.expose_secret(),
            ring.derive_api_key("org-2").expose_secret()
        );
        assert!(a.expose_secret().starts_with("sk-") && a.expose_secret().len() == 51);
        let same = Keyring::new(&key, &[], None).unwrap();
        assert_eq!(
            a.expose_secret(),
            same.derive_api_key("org-1").expose_secret()
        );
        let (other, _) = super::tests::ring(false);
        assert_ne!(
            a.expose_secret(),
            other.derive_api_key("org-1").expose_secret()
        );
    }

    #[test]
    fn tampering_and_garbage_are_refused() {
        let (ring, _) = ring(false);
        let mut ct = ring.encrypt(&SecretString::from("sk-abc-abc-abc-abc"));
        let last = ct.pop().unwrap();
        ct.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(ring.decrypt(&ct).unwrap_err(), SecretError::Corrupt);
        assert_eq!(
            ring.decrypt("plain text").unwrap_err(),
            SecretError::Corrupt
        );
    }

    #[test]
    fn legacy_ciphertext_is_read_only_with_the_legacy_key() {
        let (ring, _) = ring(true);
        let legacy = ring
            .encrypt_legacy(&SecretString::from("sk-legacy-0001"))
            .unwrap();
        assert!(!Keyring::is_current_format(&legacy));
        assert_eq!(
            ring.decrypt_any(&legacy).unwrap().expose_secret(),
            "sk-legacy-0001"
        );
        let (no_legacy, _) = super::tests::ring(false);
        assert_eq!(
            no_legacy.decrypt_any(&legacy).unwrap_err(),
            SecretError::NoLegacyKey
        );
    }

    #[test]
    fn bad_keys_name_the_setting_and_debug_shows_no_key_material() {
        let err = Keyring::new(&SecretString::from("c2hvcnQ="), &[], None).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("ORGKEEPER_SECRET_KEY must be 32 bytes"));
        let key = generate_key();
        let ring = Keyring::new(&key, &[], None).unwrap();
        assert!(!format!("{ring:?}").contains(key.expose_secret()));
    }
}
