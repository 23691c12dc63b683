//! The issuer's signing keys: parsing a JWKS document into keys bound to one
//! algorithm each, and looking them up by `kid` and `alg`.
//!
//! Each JWK goes through `jwk`'s strict import (jwt-simple's rules), which
//! refuses a key whose `kty`, `crv`, `use`, `key_ops` or material does not
//! fit, and its `alg` binds it to that one algorithm. So an RSA key marked
//! `alg: RS256` can never verify a PS256 token, an EC key can never verify an
//! RSA token, and symmetric (`oct`) keys are never loaded at all: the
//! algorithm-confusion attacks have no key to work with.

use crate::keys::alg::Alg;
use crate::keys::jwk;
use crate::keys::signature::Verifying;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// One usable key: a JWK bound to one algorithm.
pub struct Key {
    pub kid: Option<String>,
    pub alg: Alg,
    /// Identifies the key material across refreshes, so a cached verdict can
    /// be dropped when its key is.
    pub id: u64,
    key: Verifying,
}

impl Key {
    /// Whether this key, with its algorithm, made `signature` over `signed`
    /// (the token's `header.payload`).
    pub fn verifies(&self, signed: &[u8], signature: &[u8]) -> bool {
        self.key.verifies(self.alg, signed, signature)
    }
}

#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum JwksError {
    NotJson,
    NoKeysArray,
    NoUsableKey { skipped: usize },
}

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksError::NotJson => write!(f, "JWKS is not JSON"),
            JwksError::NoKeysArray => write!(f, "JWKS has no \"keys\" array"),
            JwksError::NoUsableKey { skipped } => {
                write!(f, "JWKS has no usable signing key ({skipped} skipped)")
            }
        }
    }
}

impl KeySet {
    /// Parses a JWKS document. Keys that are malformed or of another type are
    /// skipped (their count is returned), so one odd key cannot take the
    /// issuer's other keys down with it. A set with no usable key is an error.
    pub fn parse(body: &[u8]) -> Result<(KeySet, usize), JwksError> {
        let doc: Value = serde_json::from_slice(body).map_err(|_| JwksError::NotJson)?;
        let jwks = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NoKeysArray)?;
        let mut keys = Vec::new();
        let mut skipped = 0;
        for jwk in jwks {
            let loaded = Self::load(jwk);
            if loaded.is_empty() {
                skipped += 1;
            }
            keys.extend(loaded);
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey { skipped });
        }
        Ok((KeySet { keys }, skipped))
    }

    fn load(jwk: &Value) -> Vec<Key> {
        let field = |name: &str| jwk.get(name).and_then(Value::as_str);
        let text = jwk.to_string();
        let Some(key) = jwk::import(jwk, &text) else {
            return Vec::new();
        };
        let id = u64::from_be_bytes(first8(&Sha256::digest(text.as_bytes())));
        let kid = field("kid").map(str::to_string);
        let declared = field("alg");
        Alg::for_jwk(field("kty").unwrap_or_default(), field("crv"))
            .iter()
            // A declared alg narrows the key to that one algorithm.
            .filter(|alg| declared.is_none_or(|d| Alg::from_name(d) == Some(**alg)))
            .map(|&alg| Key {
                kid: kid.clone(),
                alg,
                id,
                key: key.clone(),
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    pub fn contains_id(&self, id: u64) -> bool {
        self.keys.iter().any(|k| k.id == id)
    }

    /// Keys that may verify a token with this `alg` and `kid`: with a kid,
    /// only that key; without, every key of the algorithm.
    pub fn candidates<'a>(&'a self, alg: Alg, kid: Option<&'a str>) -> impl Iterator<Item = &'a Key> {
        self.keys
            .iter()
            .filter(move |k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
    }
}

fn first8(d: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (o, b) in out.iter_mut().zip(d) {
        *o = *b;
    }
    out
}

/// `max-age` from a Cache-Control header, if any (and not `no-store`/`no-cache`,
/// which count as zero).
pub fn max_age(cache_control: &str) -> Option<u64> {
    let mut age = None;
    for directive in cache_control.split(',') {
        let d = directive.trim();
        let lower = d.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(0);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            age = v.trim_matches('"').parse().ok();
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys;

    #[test]
    fn loads_rsa_ec_and_okp_keys_and_skips_the_rest() {
        let jwks = testkeys::jwks(&[
            testkeys::rsa_jwk("r1", Some("RS256")),
            testkeys::es256_jwk("e1"),
            serde_json::json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h1"}),
            serde_json::json!({"kty": "RSA", "kid": "broken", "n": "AQAB", "e": "AQAB"}),
            serde_json::json!({"kid": "nokty"}),
        ]);
        let (set, skipped) = KeySet::parse(jwks.as_bytes()).unwrap();
        assert_eq!(skipped, 3);
        assert!(set.has_kid("r1") && set.has_kid("e1"));
        assert!(!set.has_kid("h1"));
        // alg: RS256 narrows the RSA key to RS256 only.
        assert_eq!(set.candidates(Alg::RS256, Some("r1")).count(), 1);
        assert_eq!(set.candidates(Alg::PS256, Some("r1")).count(), 0);
        assert_eq!(set.candidates(Alg::ES256, None).count(), 1);
    }

    #[test]
    fn rsa_key_without_alg_serves_every_rsa_algorithm() {
        let jwks = testkeys::jwks(&[testkeys::rsa_jwk("r", None)]);
        let (set, _) = KeySet::parse(jwks.as_bytes()).unwrap();
        assert_eq!(set.len(), 6);
        assert_eq!(set.candidates(Alg::PS384, None).count(), 1);
    }

    #[test]
    fn encryption_keys_are_not_signing_keys() {
        let mut k = testkeys::rsa_jwk("enc", None);
        k["use"] = "enc".into();
        let err = KeySet::parse(testkeys::jwks(&[k]).as_bytes()).err();
        assert_eq!(err, Some(JwksError::NoUsableKey { skipped: 1 }));
    }

    #[test]
    fn documents_without_keys_fail() {
        assert_eq!(KeySet::parse(b"nope").err(), Some(JwksError::NotJson));
        assert_eq!(KeySet::parse(b"{}").err(), Some(JwksError::NoKeysArray));
        assert_eq!(
            KeySet::parse(br#"{"keys":[]}"#).err(),
            Some(JwksError::NoUsableKey { skipped: 0 })
        );
    }

    #[test]
    fn cache_control_max_age() {
        assert_eq!(max_age("public, max-age=300"), Some(300));
        assert_eq!(max_age("Max-Age=\"60\""), Some(60));
        assert_eq!(max_age("no-store"), Some(0));
        assert_eq!(max_age("public"), None);
    }
}
