//! Secrets of pre-organization (legacy) users, as OpenHands stores them.
//!
//! OpenHands encrypts a user's credentials (`llm_api_key`,
//! `llm_api_key_for_byor`, `search_api_key`, `sandbox_api_key`, custom
//! secrets) with [Fernet] under a key derived from its `jwt_secret`, and
//! base64-wraps the token once more:
//!
//! ```text
//! key    = base64url(sha256(jwt_secret))
//! stored = base64(Fernet(key).encrypt(plaintext))
//! ```
//!
//! Reading follows OpenHands: a stored value that is not base64, or whose
//! content is not a Fernet token, is a plaintext credential (older rows, or
//! rows written before encryption) and is kept as it is. A value that *is* a
//! Fernet token (version byte `0x80`, a whole number of AES blocks) but does
//! not authenticate under the configured secret is an error: the wrong
//! `ORGKEEPER_LEGACY_JWT_SECRET`, or damaged data. It is never taken for a
//! plaintext key. Tokens have no time-to-live.
//!
//! A token is `0x80 || timestamp (u64, big-endian) || IV (16) ||
//! AES-128-CBC-PKCS7(plaintext) || HMAC-SHA256(all before)`, base64url
//! encoded; the key's first 16 bytes sign, the last 16 encrypt. It is
//! implemented here on RustCrypto's `aes`, `cbc` and `hmac` (the `fernet`
//! crate pins an older RustCrypto generation than the rest of the build) and
//! checked against tokens made by Python's `cryptography`
//! (`tests/fixtures/fernet_vectors.json`).
//!
//! [Fernet]: https://github.com/fernet/spec/blob/master/Spec.md

use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hmac::{Hmac, KeyInit, Mac};
use rand::rngs::SysRng;
use rand::TryRng;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::fmt;

/// The setting holding OpenHands' `jwt_secret`.
pub const SETTING: &str = "ORGKEEPER_LEGACY_JWT_SECRET";

/// The version byte of every Fernet token.
const VERSION: u8 = 0x80;
/// Version byte and timestamp; then the IV.
const IV_AT: usize = 1 + 8;
/// Version byte, timestamp, IV; then at least one AES block; then the HMAC.
const HEADER_LEN: usize = IV_AT + BLOCK;
const HMAC_LEN: usize = 32;
const BLOCK: usize = 16;

/// Why a legacy value could not be read. Never contains the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LegacySecretError {
    /// A Fernet token that fails authentication.
    #[error("is an OpenHands Fernet token that does not authenticate under {SETTING} (a different jwt_secret, or damaged data)")]
    NotAuthentic,
    /// A Fernet token whose content is not UTF-8 text.
    #[error("is an OpenHands Fernet token whose content is not UTF-8 text")]
    NotText,
    /// A Fernet token, but no jwt secret is configured.
    #[error("is an OpenHands Fernet token but {SETTING} is not set")]
    NoSecret,
}

/// A legacy value as read: decrypted from a token, or a plaintext kept as
/// OpenHands keeps it.
pub enum LegacyValue {
    /// The content of a Fernet token.
    Decrypted(SecretString),
    /// Not a token: the stored value itself.
    Plaintext(SecretString),
}

impl LegacyValue {
    /// The credential, whichever way it was stored.
    pub fn secret(&self) -> &SecretString {
        match self {
            LegacyValue::Decrypted(s) | LegacyValue::Plaintext(s) => s,
        }
    }

    /// Whether it was stored as plaintext.
    pub fn was_plaintext(&self) -> bool {
        matches!(self, LegacyValue::Plaintext(_))
    }
}

/// The Fernet key OpenHands derives from its `jwt_secret`.
pub struct LegacyKey {
    /// The HMAC-SHA256 key: the first half of the Fernet key.
    signing: [u8; 16],
    /// The AES-128 key: the second half.
    encryption: [u8; 16],
}

impl fmt::Debug for LegacyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LegacyKey(..)")
    }
}

impl LegacyKey {
    /// The key of the deployment whose `jwt_secret` this is:
    /// `base64url(sha256(jwt_secret))`.
    pub fn from_jwt_secret(jwt_secret: &SecretString) -> Self {
        let digest = Sha256::digest(jwt_secret.expose_secret().as_bytes());
        let (signing, encryption) = digest.split_at(16);
        LegacyKey {
            signing: signing.try_into().expect("16 of SHA-256's 32 bytes"),
            encryption: encryption.try_into().expect("16 of SHA-256's 32 bytes"),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::new_from_slice(&self.signing).expect("HMAC takes a key of any length")
    }

    /// The Fernet token of `plaintext` made at `timestamp` with `iv`.
    fn seal(&self, plaintext: &[u8], timestamp: u64, iv: [u8; BLOCK]) -> Vec<u8> {
        let mut token = vec![VERSION];
        token.extend(timestamp.to_be_bytes());
        token.extend(iv);
        token.extend(
            cbc::Encryptor::<aes::Aes128>::new(&self.encryption.into(), &iv.into())
                .encrypt_padded_vec::<Pkcs7>(plaintext),
        );
        let tag = self.mac().chain_update(&token).finalize().into_bytes();
        token.extend(tag);
        token
    }

    /// The content of a Fernet token (already checked for its shape by
    /// [`fernet_token`]) if its HMAC is authentic. No TTL and no clock-skew
    /// check, as Python's `Fernet.decrypt(token)`.
    fn open(&self, token: &[u8]) -> Result<Vec<u8>, LegacySecretError> {
        let (signed, tag) = token.split_at(token.len() - HMAC_LEN);
        self.mac()
            .chain_update(signed)
            .verify_slice(tag)
            .map_err(|_| LegacySecretError::NotAuthentic)?;
        let (iv, ciphertext) = signed[IV_AT..].split_at(BLOCK);
        cbc::Decryptor::<aes::Aes128>::new_from_slices(&self.encryption, iv)
            .expect("a 16-byte key and a 16-byte IV")
            .decrypt_padded_vec::<Pkcs7>(ciphertext)
            .map_err(|_| LegacySecretError::NotAuthentic)
    }

    /// Reads a stored legacy value: the content of its Fernet token, or the
    /// value itself when it is not one.
    pub fn decrypt(&self, stored: &str) -> Result<LegacyValue, LegacySecretError> {
        decrypt(Some(self), stored)
    }

    /// Writes `plaintext` the way OpenHands does:
    /// `base64(Fernet(key).encrypt(plaintext))`. orgkeeper writes it only to
    /// seal the rollback copy of a legacy value OpenHands kept in plaintext
    /// (`secrets.reencrypt`), so that no copy of it is plaintext at rest and
    /// a rollback restores a value OpenHands reads the same; tests,
    /// benchmarks and data generators use it to make legacy data.
    pub fn encrypt(&self, plaintext: &SecretString) -> String {
        let mut iv = [0u8; BLOCK];
        SysRng
            .try_fill_bytes(&mut iv)
            .expect("the operating system's random number generator failed");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let token = self.seal(plaintext.expose_secret().as_bytes(), now, iv);
        STANDARD.encode(URL_SAFE.encode(token))
    }
}

/// Reads a stored legacy value with `key`, if any: a plaintext needs no key;
/// a Fernet token without a key is [`LegacySecretError::NoSecret`].
pub fn decrypt(key: Option<&LegacyKey>, stored: &str) -> Result<LegacyValue, LegacySecretError> {
    let Some(token) = fernet_token(stored) else {
        return Ok(LegacyValue::Plaintext(SecretString::from(stored)));
    };
    let key = key.ok_or(LegacySecretError::NoSecret)?;
    let plain = key.open(&token)?;
    String::from_utf8(plain)
        .map(|s| LegacyValue::Decrypted(SecretString::from(s)))
        .map_err(|_| LegacySecretError::NotText)
}

/// The Fernet token inside a stored value, when there is one: the value is
/// base64 of base64url text that decodes to version byte 0x80, a timestamp,
/// an IV, whole AES blocks and an HMAC. Returns the token's bytes.
fn fernet_token(stored: &str) -> Option<Vec<u8>> {
    let token = String::from_utf8(STANDARD.decode(stored.trim()).ok()?).ok()?;
    let data = URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).ok()?;
    let body = data.len().checked_sub(HEADER_LEN + HMAC_LEN)?;
    (data[0] == VERSION && body >= BLOCK && body % BLOCK == 0).then_some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Vectors {
        vectors: Vec<Vector>,
    }

    #[derive(serde::Deserialize)]
    struct Vector {
        name: String,
        jwt_secret: String,
        plaintext: String,
        stored: String,
    }

    fn vectors() -> Vec<Vector> {
        let file: Vectors =
            serde_json::from_str(include_str!("../tests/fixtures/fernet_vectors.json"))
                .expect("tests/fixtures/fernet_vectors.json");
        assert!(file.vectors.len() >= 8);
        file.vectors
    }

    fn key(secret: &str) -> LegacyKey {
        LegacyKey::from_jwt_secret(&SecretString::from(secret))
    }

    #[test]
    fn values_made_by_python_cryptography_decrypt() {
        for v in vectors() {
            let read = key(&v.jwt_secret).decrypt(&v.stored).expect(&v.name);
            assert!(!read.was_plaintext(), "{}", v.name);
            assert_eq!(read.secret().expose_secret(), v.plaintext, "{}", v.name);
        }
    }

    /// Fernet is deterministic given the timestamp and IV: sealing each
    /// vector's plaintext with its token's timestamp and IV gives Python's
    /// token byte for byte, so what `encrypt` writes OpenHands reads.
    #[test]
    fn sealing_with_a_vectors_timestamp_and_iv_gives_pythons_token() {
        for v in vectors() {
            let token = fernet_token(&v.stored).expect(&v.name);
            let timestamp = u64::from_be_bytes(token[1..IV_AT].try_into().unwrap());
            let iv = token[IV_AT..HEADER_LEN].try_into().unwrap();
            let sealed = key(&v.jwt_secret).seal(v.plaintext.as_bytes(), timestamp, iv);
            assert_eq!(sealed, token, "{}", v.name);
        }
    }

    #[test]
    fn a_token_under_another_jwt_secret_is_an_error_never_a_plaintext() {
        for v in vectors() {
            let wrong = key(&format!("{}-but-not-quite", v.jwt_secret));
            assert_eq!(
                wrong.decrypt(&v.stored).err(),
                Some(LegacySecretError::NotAuthentic),
                "{}",
                v.name
            );
            assert_eq!(
                decrypt(None, &v.stored).err(),
                Some(LegacySecretError::NoSecret),
                "{}",
                v.name
            );
        }
        let err = LegacySecretError::NotAuthentic.to_string();
        assert!(err.contains("ORGKEEPER_LEGACY_JWT_SECRET"), "{err}");
    }

    #[test]
    fn a_damaged_token_is_an_error() {
        let v = &vectors()[0];
        let token = String::from_utf8(STANDARD.decode(&v.stored).unwrap()).unwrap();
        // Flip a character inside the ciphertext: still a token, fails the HMAC.
        let mut chars: Vec<char> = token.chars().collect();
        let i = chars.len() / 2;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let damaged = STANDARD.encode(chars.into_iter().collect::<String>());
        assert_eq!(
            key(&v.jwt_secret).decrypt(&damaged).err(),
            Some(LegacySecretError::NotAuthentic)
        );
    }

    #[test]
    fn what_is_not_a_token_is_a_plaintext_kept_as_it_is() {
        let k = key("openhands-jwt-secret-1");
        let v = &vectors()[0];
        let bare_token = String::from_utf8(STANDARD.decode(&v.stored).unwrap()).unwrap();
        for plain in [
            "sk-ant-api03-plain-key-never-encrypted",
            "",
            "  ",
            "clé-🔑",
            // base64, but of text that is not a token
            &STANDARD.encode("sk-just-base64-of-a-key"),
            // base64 of base64url of bytes that start like a token but are too short
            &STANDARD.encode(URL_SAFE.encode([0x80u8; 40])),
            // base64 of base64url of a token-sized body with another version byte
            &STANDARD.encode(URL_SAFE.encode([0x81u8; 89])),
            // a bare token, not base64-wrapped: OpenHands' b64decode does not
            // give a token either, so it is a plaintext there too
            &bare_token,
        ] {
            let read = k.decrypt(plain).unwrap();
            assert!(read.was_plaintext(), "{plain:?}");
            assert_eq!(read.secret().expose_secret(), plain);
            assert!(decrypt(None, plain).unwrap().was_plaintext());
        }
    }

    #[test]
    fn encrypt_writes_what_openhands_reads_and_the_key_is_not_in_debug() {
        let k = key("a-jwt-secret");
        let stored = k.encrypt(&SecretString::from("sk-generated-0001"));
        assert!(fernet_token(&stored).is_some());
        assert_ne!(stored, k.encrypt(&SecretString::from("sk-generated-0001")));
        assert_eq!(
            k.decrypt(&stored).unwrap().secret().expose_secret(),
            "sk-generated-0001"
        );
        assert_eq!(format!("{k:?}"), "LegacyKey(..)");
    }
}
