//! The ES256 (P-256) key ServiceAccount tokens are signed with, and the
//! set of public keys verification accepts, keyed by `kid`.
//!
//! Signing and verification are ring calls (ring is already the TLS
//! provider): ES256 is one primitive, and the checks around it are
//! upstream's, in [`super::token`], not a JWT library's defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde_json::{Value, json};

use super::token::ALGORITHM;

/// DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1,
/// a 66-byte BIT STRING), followed by the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// Length of an uncompressed P-256 point (`04 || x || y`).
const POINT_LEN: usize = 65;

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the new key failed.
    #[error(transparent)]
    Write(#[from] crate::pki::PkiError),
    /// The file holds no usable key.
    #[error("{path}: {why}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// An ES256 public key and its `kid`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    kid: String,
    point: Vec<u8>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey").field("kid", &self.kid).finish()
    }
}

impl PublicKey {
    /// From an uncompressed P-256 point.
    fn from_point(point: &[u8]) -> Result<Self, String> {
        if point.len() != POINT_LEN || point[0] != 0x04 {
            return Err("not an uncompressed P-256 point".to_owned());
        }
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(point);
        // Upstream's key id: base64url (no padding) of the SHA-256 of the
        // DER SubjectPublicKeyInfo.
        let kid = URL_SAFE_NO_PAD.encode(sha256(&spki));
        Ok(Self {
            kid,
            point: point.to_vec(),
        })
    }

    /// From a DER SubjectPublicKeyInfo; only P-256 keys are accepted.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, String> {
        match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) => Self::from_point(point),
            None => Err("not a P-256 (ES256) public key".to_owned()),
        }
    }

    /// Every `PUBLIC KEY` block of a PEM text.
    pub fn all_from_pem(pem: &str) -> Result<Vec<Self>, String> {
        let mut out = Vec::new();
        for der in SubjectPublicKeyInfoDer::pem_slice_iter(pem.as_bytes()) {
            let der = der.map_err(|e| e.to_string())?;
            out.push(Self::from_spki_der(der.as_ref())?);
        }
        if out.is_empty() {
            return Err("no PUBLIC KEY block".to_owned());
        }
        Ok(out)
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Vec<u8> {
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(&self.point);
        spki
    }

    /// PEM (`PUBLIC KEY`), as `*.pub` files hold it.
    pub fn to_pem(&self) -> String {
        pem("PUBLIC KEY", &self.spki_der())
    }

    /// The RFC 7517 JWK, with upstream's fields.
    pub fn jwk(&self) -> Value {
        json!({
            "use": "sig",
            "kty": "EC",
            "kid": self.kid,
            "crv": "P-256",
            "alg": ALGORITHM,
            "x": URL_SAFE_NO_PAD.encode(&self.point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&self.point[33..]),
        })
    }

    pub(super) fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &self.point)
            .verify(message, sig)
            .is_ok()
    }
}

fn sha256(data: &[u8]) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA256, data)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The ES256 key tokens are signed with.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    public: PublicKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.public.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| format!("not a PKCS#8 P-256 private key: {e}"))?;
        let public = PublicKey::from_point(pair.public_key().as_ref())?;
        Ok(Self { pair, public, rng })
    }

    /// A new random key and its PKCS#8 PEM.
    pub fn generate() -> Result<(Self, String), String> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| format!("generating a P-256 key: {e}"))?;
        let key = Self::from_pkcs8(pkcs8.as_ref())?;
        Ok((key, pem("PRIVATE KEY", pkcs8.as_ref())))
    }

    /// From PKCS#8 PEM (`PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("no PKCS#8 PRIVATE KEY block: {e}"))?;
        Self::from_pkcs8(der.secret_pkcs8_der())
    }

    /// Load the key at `path` (`--service-account-private-key-file`).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            what: "reading",
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(&pem).map_err(|why| KeyError::Malformed {
            path: path.to_owned(),
            why,
        })
    }

    /// Load the key at `path`, generating it (mode 0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        if path.exists() {
            return Self::load(path);
        }
        let (key, pem) = Self::generate().map_err(|why| KeyError::Malformed {
            path: path.to_owned(),
            why,
        })?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
                what: "creating the directory of",
                path: path.to_owned(),
                source,
            })?;
        }
        crate::pki::write_private(path, &pem)?;
        tracing::info!(path = %path.display(), kid = %key.public.kid, "generated the service account signing key");
        Ok(key)
    }

    /// The raw ES256 signature of `msg`, for tests that forge headers.
    #[cfg(test)]
    pub(super) fn sign_raw(&self, msg: &[u8]) -> Vec<u8> {
        self.pair
            .sign(&self.rng, msg)
            .map(|s| s.as_ref().to_vec())
            .unwrap_or_default()
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// A compact JWS of `claims`: header `{"alg":"ES256","kid":...}`.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let header = json!({"alg": ALGORITHM, "kid": self.public.kid});
        let mut out = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&self.rng, out.as_bytes())
            .map_err(|e| format!("signing: {e}"))?;
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
        Ok(out)
    }
}

/// The public keys verification accepts, by `kid`: the current signing
/// key's and any kept from before a rotation.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: BTreeMap<String, PublicKey>,
}

impl KeySet {
    /// A set holding `key`.
    pub fn new(key: &PublicKey) -> Self {
        let mut s = Self::default();
        s.add(key.clone());
        s
    }

    /// Add a key.
    pub fn add(&mut self, key: PublicKey) {
        self.keys.insert(key.kid.clone(), key);
    }

    /// Add every `*.pub` file of `dir` (PEM public keys; several blocks per
    /// file are fine). A missing directory adds nothing; a file that holds
    /// no P-256 key is skipped with a warning, so one bad file does not stop
    /// the server.
    pub fn add_dir(&mut self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "pub"))
            .collect();
        paths.sort();
        for path in paths {
            let keys = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|pem| PublicKey::all_from_pem(&pem));
            match keys {
                Ok(keys) => {
                    for k in keys {
                        tracing::info!(path = %path.display(), kid = %k.kid, "accepting service account tokens signed by an extra key");
                        self.add(k);
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping a service account public key file");
                }
            }
        }
    }

    /// The key with this id.
    pub fn get(&self, kid: &str) -> Option<&PublicKey> {
        self.keys.get(kid)
    }

    /// Every key, ordered by kid.
    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_and_kid_is_upstreams() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("tls/service-account.key");
        let a = SigningKey::load_or_create(&path).expect("create");
        let b = SigningKey::load_or_create(&path).expect("load");
        assert_eq!(a.public(), b.public());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // kid = base64url(sha256(DER SPKI)), 43 characters.
        let spki = a.public().spki_der();
        assert_eq!(spki.len(), 91);
        assert_eq!(a.public().kid(), URL_SAFE_NO_PAD.encode(sha256(&spki)));
        assert_eq!(a.public().kid().len(), 43);
        // The PEM public key reads back; the JWK has upstream's fields.
        let back = PublicKey::all_from_pem(&a.public().to_pem()).expect("pem");
        assert_eq!(back, vec![a.public().clone()]);
        let jwk = a.public().jwk();
        for f in ["use", "kty", "kid", "crv", "alg", "x", "y"] {
            assert!(jwk.get(f).is_some(), "{f}");
        }
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(jwk["x"].as_str().expect("x"))
                .expect("x")
                .len(),
            32
        );
        // A key directory adds rotated keys and skips junk.
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).expect("dir");
        let (old, _) = SigningKey::generate().expect("old");
        std::fs::write(keys.join("old.pub"), old.public().to_pem()).expect("write");
        std::fs::write(keys.join("junk.pub"), "not a key").expect("write");
        std::fs::write(
            keys.join("ignored.txt"),
            SigningKey::generate().expect("k").0.public().to_pem(),
        )
        .expect("write");
        let mut set = KeySet::new(a.public());
        set.add_dir(&keys);
        assert_eq!(set.iter().count(), 2);
        assert!(set.get(old.public().kid()).is_some());
    }
}
