//! Secrets at rest: AEAD encryption with key ids, so keys can be rotated,
//! and bound to the place they are stored, so a ciphertext copied to another
//! row or column does not decrypt.
//!
//! # Ciphertext format (version 2, written today)
//!
//! ```text
//! ok2:<key-id>:<base64url-nopad(nonce || ciphertext-with-tag)>
//! ```
//!
//! * cipher: XChaCha20-Poly1305 (RustCrypto `chacha20poly1305`), 24-byte
//!   random nonce, 16-byte tag appended to the ciphertext;
//! * key: 32 bytes, given base64-encoded in `ORGKEEPER_SECRET_KEY`;
//! * key id: the first 8 hex digits of `SHA-256("orgkeeper-key-id:" || key)`,
//!   so a reader picks the right key without trying each one;
//! * associated data: the UTF-8 string `orgkeeper:<table>.<column>:<row key>`
//!   ([`Place`]), the row key being the primary key as text, a composite key
//!   joined by `/`.
//!
//! Version 1 (`ok1:`, same layout, no associated data) is still read, and
//! rewritten as version 2 by `orgkeeper secrets rotate`.
//!
//! *Legacy* secrets (of pre-organization users) are OpenHands' Fernet
//! tokens under its `jwt_secret` (`ORGKEEPER_LEGACY_JWT_SECRET`), or
//! plaintext; see [`crate::legacy_secrets`]. The daemon re-encrypts them into
//! version 2 when a user is migrated.

use crate::legacy_secrets::{LegacyKey, LegacySecretError, LegacyValue};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::rngs::SysRng;
use rand::TryRng;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::fmt;

/// The prefix of ciphertexts written today (bound to their place).
const PREFIX: &str = "ok2";
/// The prefix of version-1 ciphertexts (no associated data), read only.
const PREFIX_V1: &str = "ok1";
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
    /// The ciphertext is authentic elsewhere but not at this place: it was
    /// copied from another row or column, or damaged.
    #[error("ciphertext does not belong at {0} (copied from another row or column, or damaged)")]
    WrongPlace(String),
}

/// One 32-byte key and its id.
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
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
        let id = hex::encode(&digest[..4]);
        let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
            .map_err(|_| SecretError::BadKey { setting })?;
        Ok(Key { id, cipher })
    }

    /// `nonce || ciphertext || tag` of `plaintext` under `nonce` (every
    /// caller passes [`fresh_nonce`]; the test vector a fixed one).
    fn seal(&self, nonce: &XNonce, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut out = nonce.to_vec();
        out.extend(
            self.cipher
                .encrypt(
                    nonce,
                    Payload {
                        msg: plaintext,
                        aad,
                    },
                )
                .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers"),
        );
        out
    }

    fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SecretError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(SecretError::Corrupt);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| SecretError::Corrupt)?;
        self.cipher
            .decrypt(&nonce, Payload { msg: body, aad })
            .map_err(|_| SecretError::Corrupt)
    }
}

/// Where a ciphertext is stored: the table, the column and the row's primary
/// key as text (a composite key joined by `/`). Version-2 ciphertexts
/// authenticate it as associated data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    table: String,
    column: String,
    row_key: String,
}

impl Place {
    /// The place `table.column` of the row whose primary key is `row_key`.
    pub fn new(table: &str, column: &str, row_key: impl Into<String>) -> Self {
        Place {
            table: table.to_string(),
            column: column.to_string(),
            row_key: row_key.into(),
        }
    }

    /// A member's own LiteLLM key: `org_member.llm_api_key` of `(org, user)`.
    pub fn member_key(org_id: uuid::Uuid, user_id: uuid::Uuid) -> Self {
        Place::new("org_member", "llm_api_key", format!("{org_id}/{user_id}"))
    }

    /// A value an outbox action keeps in its `progress` under `field`.
    pub fn action_progress(action_id: i64, field: &str) -> Self {
        Place::new(
            "pending_external_actions",
            &format!("progress.{field}"),
            action_id.to_string(),
        )
    }

    /// The place named by a `{"table", "column", "key": {pk column: value}}`
    /// item as the SQL side records it (`orgkeeper.read_secret`): the
    /// row key joins the primary key's values in the table's key order
    /// (`org_member`: org_id, user_id; every other table: id).
    pub fn from_item(item: &serde_json::Value) -> Option<Self> {
        let table = item.get("table")?.as_str()?;
        let column = item.get("column")?.as_str()?;
        let key = item.get("key")?;
        let columns: &[&str] = match table {
            "org_member" => &["org_id", "user_id"],
            _ => &["id"],
        };
        let values = columns
            .iter()
            .map(|c| match key.get(c)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Place::new(table, column, values.join("/")))
    }

    /// The associated data: `orgkeeper:<table>.<column>:<row key>`.
    pub fn associated_data(&self) -> String {
        format!("orgkeeper:{}.{}:{}", self.table, self.column, self.row_key)
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{} of row {}", self.table, self.column, self.row_key)
    }
}

/// The keys the daemon holds: the current one (encrypts and decrypts), old
/// ones (decrypt only, for rotation), and the legacy key (pre-org secrets).
pub struct Keyring {
    current: Key,
    old: Vec<Key>,
    legacy: Option<LegacyKey>,
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
    /// old keys) and the optional pre-organization application's
    /// `jwt_secret` (`ORGKEEPER_LEGACY_JWT_SECRET`).
    pub fn new(
        current: &SecretString,
        old: &[SecretString],
        legacy_jwt_secret: Option<&SecretString>,
    ) -> Result<Self, SecretError> {
        Ok(Keyring {
            current: Key::from_base64(current.expose_secret(), "ORGKEEPER_SECRET_KEY")?,
            old: old
                .iter()
                .map(|k| Key::from_base64(k.expose_secret(), "ORGKEEPER_OLD_SECRET_KEYS"))
                .collect::<Result<_, _>>()?,
            legacy: legacy_jwt_secret.map(LegacyKey::from_jwt_secret),
        })
    }

    /// The id of the key that encrypts new secrets.
    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    /// Encrypts `plaintext` under the current key, bound to `place`
    /// (format `ok2:<key-id>:<data>`).
    pub fn encrypt(&self, place: &Place, plaintext: &SecretString) -> String {
        self.encrypt_with_nonce(place, plaintext, &fresh_nonce())
    }

    fn encrypt_with_nonce(
        &self,
        place: &Place,
        plaintext: &SecretString,
        nonce: &XNonce,
    ) -> String {
        let sealed = self.current.seal(
            nonce,
            plaintext.expose_secret().as_bytes(),
            place.associated_data().as_bytes(),
        );
        format!(
            "{PREFIX}:{}:{}",
            self.current.id,
            URL_SAFE_NO_PAD.encode(sealed)
        )
    }

    /// Decrypts a ciphertext stored at `place` with whichever configured key
    /// made it: version 2 must have been sealed for exactly this place;
    /// version 1 carries no place.
    pub fn decrypt(&self, place: &Place, ciphertext: &str) -> Result<SecretString, SecretError> {
        let mut parts = ciphertext.splitn(3, ':');
        let (Some(version), Some(key_id), Some(data)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SecretError::Corrupt);
        };
        let aad = match version {
            PREFIX => place.associated_data(),
            PREFIX_V1 => String::new(),
            _ => return Err(SecretError::Corrupt),
        };
        let key = self.key(key_id)?;
        let sealed = URL_SAFE_NO_PAD
            .decode(data)
            .map_err(|_| SecretError::Corrupt)?;
        match key.open(&sealed, aad.as_bytes()) {
            Err(SecretError::Corrupt) if version == PREFIX => {
                Err(SecretError::WrongPlace(place.to_string()))
            }
            opened => to_secret(opened?),
        }
    }

    fn key(&self, key_id: &str) -> Result<&Key, SecretError> {
        std::iter::once(&self.current)
            .chain(&self.old)
            .find(|k| k.id == key_id)
            .ok_or_else(|| SecretError::UnknownKey(key_id.to_string()))
    }

    /// Whether `ciphertext` is in the current format under the current key
    /// (and so needs no re-encryption).
    pub fn is_current(&self, ciphertext: &str) -> bool {
        ciphertext
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_prefix(':'))
            .is_some_and(|rest| rest.starts_with(&format!("{}:", self.current.id)))
    }

    /// Whether `ciphertext` is in one of orgkeeper's formats (any version,
    /// any key) rather than the legacy scheme.
    pub fn is_orgkeeper_format(ciphertext: &str) -> bool {
        ciphertext.starts_with("ok1:") || ciphertext.starts_with("ok2:")
    }

    /// Reads a legacy (pre-organization) value the way OpenHands does: a
    /// Fernet token under the legacy jwt secret, or a plaintext.
    pub fn decrypt_legacy(&self, stored: &str) -> Result<LegacyValue, LegacySecretError> {
        crate::legacy_secrets::decrypt(self.legacy.as_ref(), stored)
    }

    /// `plaintext` sealed as OpenHands seals a credential (a Fernet token
    /// under the legacy jwt secret), or `None` when no legacy secret is
    /// configured.
    pub fn seal_legacy(&self, plaintext: &SecretString) -> Option<String> {
        self.legacy.as_ref().map(|key| key.encrypt(plaintext))
    }
}

/// A random 24-byte nonce from the operating system's CSPRNG.
fn fresh_nonce() -> XNonce {
    XNonce::generate()
}

/// 32 random bytes from the operating system's CSPRNG.
fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    SysRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random number generator failed");
    bytes
}

/// A fresh LiteLLM key value from the operating system's CSPRNG: `sk-` and
/// 64 hex digits (32 random bytes). Never derived from anything, so no key
/// can be computed from another or from the secret key.
pub fn random_api_key() -> SecretString {
    SecretString::from(format!("sk-{}", hex::encode(random_bytes())))
}

fn to_secret(bytes: Vec<u8>) -> Result<SecretString, SecretError> {
    String::from_utf8(bytes)
        .map(SecretString::from)
        .map_err(|_| SecretError::Corrupt)
}

/// A fresh random 32-byte key, base64-encoded (for `orgkeeper dev` and tests).
pub fn generate_key() -> SecretString {
    SecretString::from(STANDARD.encode(random_bytes()))
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

    fn here() -> Place {
        Place::new("org_member", "llm_api_key", "o1/u1")
    }

    #[test]
    fn round_trip_records_the_key_id_and_hides_the_plaintext() {
        let (ring, _) = ring(false);
        let secret = SecretString::from("sk-very-secret-value-123");
        let ct = ring.encrypt(&here(), &secret);
        assert!(ct.starts_with(&format!("ok2:{}:", ring.current_key_id())));
        assert!(ring.is_current(&ct));
        assert!(!ct.contains("very-secret"));
        assert_eq!(
            ring.decrypt(&here(), &ct).unwrap().expose_secret(),
            "sk-very-secret-value-123"
        );
        assert_ne!(ct, ring.encrypt(&here(), &secret), "fresh nonce every time");
    }

    #[test]
    fn a_ciphertext_copied_to_another_place_does_not_decrypt_and_names_the_place() {
        let (ring, _) = ring(false);
        let ct = ring.encrypt(&here(), &SecretString::from("sk-owners-key-0001"));
        for elsewhere in [
            Place::new("org_member", "llm_api_key", "o1/u2"),
            Place::new("org_member", "llm_api_key_for_byor", "o1/u1"),
            Place::new("org", "llm_api_key", "o1/u1"),
        ] {
            let err = ring.decrypt(&elsewhere, &ct).unwrap_err();
            assert_eq!(err, SecretError::WrongPlace(elsewhere.to_string()));
            assert!(err.to_string().contains(&elsewhere.to_string()));
        }
        assert_eq!(
            here().associated_data(),
            "orgkeeper:org_member.llm_api_key:o1/u1"
        );
    }

    #[test]
    fn rotation_decrypts_with_old_keys_and_names_missing_ones() {
        let (old_ring, old_key) = ring(false);
        let ct = old_ring.encrypt(&here(), &SecretString::from("sk-rotated-key-0000"));
        let new_ring = Keyring::new(&generate_key(), &[old_key], None).unwrap();
        assert!(!new_ring.is_current(&ct), "sealed by an old key");
        assert_eq!(
            new_ring.decrypt(&here(), &ct).unwrap().expose_secret(),
            "sk-rotated-key-0000"
        );
        let stranger = Keyring::new(&generate_key(), &[], None).unwrap();
        assert_eq!(
            stranger.decrypt(&here(), &ct).unwrap_err(),
            SecretError::UnknownKey(old_ring.current_key_id().to_string())
        );
    }

    /// The test vector of the README ("Secrets"), computed independently
    /// (libsodium's `crypto_aead_xchacha20poly1305_ietf_encrypt` via PyNaCl).
    const VECTOR_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; // bytes 0x00..=0x1f
    const VECTOR_NONCE: &str = "404142434445464748494a4b4c4d4e4f5051525354555657";
    const VECTOR_ORG: &str = "11111111-1111-4111-8111-111111111111";
    const VECTOR_USER: &str = "22222222-2222-4222-8222-222222222222";
    const VECTOR_PLAINTEXT: &str = "sk-orgkeeper-test-vector-0001";
    const VECTOR_OK2: &str = "ok2:be23045d:QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXp1IoH6KHEnPqhOLMgugA4eaX26FwLTzoRwHNdThstbFgEa7S9chxsJYRzYY0";

    #[test]
    fn the_documented_test_vector_is_what_encrypt_writes_and_decrypt_reads() {
        let ring = Keyring::new(&SecretString::from(VECTOR_KEY), &[], None).unwrap();
        assert_eq!(ring.current_key_id(), "be23045d");
        let place = Place::member_key(
            uuid::Uuid::parse_str(VECTOR_ORG).unwrap(),
            uuid::Uuid::parse_str(VECTOR_USER).unwrap(),
        );
        assert_eq!(
            place.associated_data(),
            format!("orgkeeper:org_member.llm_api_key:{VECTOR_ORG}/{VECTOR_USER}")
        );
        let nonce = unhex(VECTOR_NONCE);
        let written =
            ring.encrypt_with_nonce(&place, &SecretString::from(VECTOR_PLAINTEXT), &nonce);
        assert_eq!(written, VECTOR_OK2);
        assert_eq!(
            ring.decrypt(&place, VECTOR_OK2).unwrap().expose_secret(),
            VECTOR_PLAINTEXT
        );
        assert!(ring.is_current(VECTOR_OK2));
    }

    /// A version-1 ciphertext written before version 2 existed (made
    /// independently with libsodium, as the old code wrote them: no
    /// associated data), kept verbatim so that a crypto-crate upgrade
    /// provably still reads old data, wherever it is stored.
    #[test]
    fn a_committed_ok1_fixture_still_decrypts_at_any_place() {
        let key = SecretString::from("SgO9P5hMsYX5Dh+pOB3meAgdtv1FVoBpva3H0MxmLow=");
        let ok1 = "ok1:7256d344:gIGCg4SFhoeIiYqLjI2Oj5CRkpOUlZaXbxdJFjwsEF_e_IG8Ke8f1YKCvTBDfuZ1cxQdYLoduhvrCaM4iKMk7OVLsvFM";
        // As an old key, the way rotation reads it.
        let ring = Keyring::new(&generate_key(), &[key], None).unwrap();
        for place in [here(), Place::action_progress(7, "key")] {
            assert_eq!(
                ring.decrypt(&place, ok1).unwrap().expose_secret(),
                "sk-ok1-fixture-still-readable"
            );
        }
        assert!(!ring.is_current(ok1));
        assert!(Keyring::is_orgkeeper_format(ok1));
    }

    #[derive(serde::Deserialize)]
    struct Vectors {
        current_key: String,
        old_key: String,
        key_ids: Vec<KeyIdVector>,
        ciphertexts: Vec<CiphertextVector>,
    }

    #[derive(serde::Deserialize)]
    struct KeyIdVector {
        key: String,
        id: String,
    }

    #[derive(serde::Deserialize)]
    struct CiphertextVector {
        name: String,
        key: String,
        nonce_hex: String,
        place: Option<VectorPlace>,
        plaintext: String,
        stored: String,
    }

    #[derive(serde::Deserialize)]
    struct VectorPlace {
        table: String,
        column: String,
        row_key: String,
    }

    /// `tests/fixtures/secret_vectors.json`, made independently with
    /// libsodium (`make_secret_vectors.py`): every stored format.
    fn vectors() -> Vectors {
        serde_json::from_str(include_str!("../tests/fixtures/secret_vectors.json"))
            .expect("tests/fixtures/secret_vectors.json")
    }

    #[test]
    fn committed_key_ids_are_what_keys_are_named_by() {
        let vectors = vectors();
        assert!(vectors.key_ids.len() >= 4);
        for v in vectors.key_ids {
            let ring = Keyring::new(&SecretString::from(v.key.as_str()), &[], None).unwrap();
            assert_eq!(ring.current_key_id(), v.id, "key {}", v.key);
        }
    }

    /// Every committed `ok2` and `ok1` value (each kind of place, both keys)
    /// decrypts at its place; each `ok2` under the current key is exactly
    /// what `encrypt` writes with that nonce; no `ok2` reads elsewhere.
    #[test]
    fn committed_ciphertexts_of_every_place_decrypt_and_reencrypt_identically() {
        let vectors = vectors();
        let ring = Keyring::new(
            &SecretString::from(vectors.current_key.as_str()),
            &[SecretString::from(vectors.old_key.as_str())],
            None,
        )
        .unwrap();
        assert!(vectors.ciphertexts.len() >= 12);
        let elsewhere = Place::new("org", "llm_api_key", "not-the-row");
        for v in vectors.ciphertexts {
            let place = v
                .place
                .as_ref()
                .map(|p| Place::new(&p.table, &p.column, p.row_key.as_str()))
                .unwrap_or_else(here);
            let read = ring.decrypt(&place, &v.stored).expect(&v.name);
            assert_eq!(read.expose_secret(), v.plaintext, "{}", v.name);
            let current = v.key == vectors.current_key;
            assert_eq!(
                ring.is_current(&v.stored),
                current && v.place.is_some(),
                "{}",
                v.name
            );
            if v.place.is_none() {
                continue;
            }
            assert_eq!(
                ring.decrypt(&elsewhere, &v.stored).unwrap_err(),
                SecretError::WrongPlace(elsewhere.to_string()),
                "{}",
                v.name
            );
            if current {
                let nonce = unhex(&v.nonce_hex);
                let written = ring.encrypt_with_nonce(
                    &place,
                    &SecretString::from(v.plaintext.as_str()),
                    &nonce,
                );
                assert_eq!(written, v.stored, "{}", v.name);
            }
        }
    }

    fn unhex(digits: &str) -> XNonce {
        XNonce::try_from(hex::decode(digits).unwrap().as_slice()).unwrap()
    }

    #[test]
    fn random_api_keys_are_long_and_never_repeat() {
        let a = random_api_key();
        assert!(a.expose_secret().starts_with("sk-") && a.expose_secret().len() == 67);
        assert_ne!(a.expose_secret(), random_api_key().expose_secret());
    }

    #[test]
    fn tampering_truncation_and_garbage_are_refused() {
        let (ring, _) = ring(false);
        let mut ct = ring.encrypt(&here(), &SecretString::from("sk-abc-abc-abc-abc"));
        let truncated = ct[..ct.len() - 10].to_string();
        // A character inside the data (any base64url letter is valid there;
        // the last one also carries padding bits that must stay zero).
        let at = ct.len() - 12;
        let flipped = if &ct[at..=at] == "A" { "B" } else { "A" };
        ct.replace_range(at..=at, flipped);
        assert_eq!(
            ring.decrypt(&here(), &ct).unwrap_err(),
            SecretError::WrongPlace(here().to_string())
        );
        assert!(ring.decrypt(&here(), &truncated).is_err());
        assert_eq!(
            ring.decrypt(&here(), "plain text").unwrap_err(),
            SecretError::Corrupt
        );
        assert_eq!(
            ring.decrypt(&here(), "ok9:abcd:AAAA").unwrap_err(),
            SecretError::Corrupt
        );
    }

    #[test]
    fn legacy_tokens_are_read_only_with_the_legacy_jwt_secret() {
        let jwt_secret = SecretString::from("openhands-jwt-secret");
        let ring = Keyring::new(&generate_key(), &[], Some(&jwt_secret)).unwrap();
        let legacy =
            LegacyKey::from_jwt_secret(&jwt_secret).encrypt(&SecretString::from("sk-legacy-0001"));
        assert!(!Keyring::is_orgkeeper_format(&legacy));
        assert_eq!(
            ring.decrypt_legacy(&legacy)
                .unwrap()
                .secret()
                .expose_secret(),
            "sk-legacy-0001"
        );
        let (no_legacy, _) = super::tests::ring(false);
        assert_eq!(
            no_legacy.decrypt_legacy(&legacy).err(),
            Some(LegacySecretError::NoSecret)
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
