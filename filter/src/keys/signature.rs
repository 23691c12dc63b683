//! A JWK in the form its library checks signatures with, and that check.
//!
//! jwt-simple imports every key (its strict per-algorithm JWK rules stay the
//! gate), and the key it returns hands over the library key underneath: the
//! `rsa` crate's for PS256/384/512, `p256`/`p384`'s ECDSA keys, and
//! ed25519-compact's. RS256/384/512 go to `rsa.rs`'s fast check.
//!
//! Why not jwt-simple's `verify_token`: it is generic over the key type, so
//! each of the nine algorithms compiled its own copy of the whole token
//! pipeline (split, header and claims JSON, claim rules), about 48 KB of the
//! module, which every Envoy compiles at start. The signature is all we need
//! from it: `token::verify` parses the header and claims once, for every
//! algorithm alike. The checks below are jwt-simple's own calls to the same
//! libraries (PSS with a salt as long as the hash, RFC 7518 §3.5; ECDSA
//! signatures as R || S over the SHA-256/384 hash, §3.4).

use crate::keys::alg::Alg;
use crate::keys::rsa::RsaKey;
use jwt_simple::prelude::*;
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use sha2::{Digest, Sha256, Sha384, Sha512};

pub enum Verifying {
    /// RS256/384/512, on `rsa.rs`.
    Pkcs1(RsaKey),
    /// PS256/384/512.
    Pss(::rsa::RsaPublicKey),
    Es256(p256::ecdsa::VerifyingKey),
    Es384(p384::ecdsa::VerifyingKey),
    EdDSA(ed25519_compact::PublicKey),
}

impl Verifying {
    /// The key in `jwk` (JSON text) for `alg`, if jwt-simple accepts it for
    /// that algorithm.
    pub fn from_jwk(alg: Alg, jwk: &str) -> Option<Verifying> {
        Some(match alg {
            Alg::RS256 => pkcs1(RS256PublicKey::from_jwk(jwk).ok()?.to_components())?,
            Alg::RS384 => pkcs1(RS384PublicKey::from_jwk(jwk).ok()?.to_components())?,
            Alg::RS512 => pkcs1(RS512PublicKey::from_jwk(jwk).ok()?.to_components())?,
            Alg::PS256 => pss(PS256PublicKey::from_jwk(jwk).ok()?.to_components())?,
            Alg::PS384 => pss(PS384PublicKey::from_jwk(jwk).ok()?.to_components())?,
            Alg::PS512 => pss(PS512PublicKey::from_jwk(jwk).ok()?.to_components())?,
            Alg::ES256 => Verifying::Es256(*ES256PublicKey::from_jwk(jwk).ok()?.public_key().as_ref()),
            Alg::ES384 => Verifying::Es384(*ES384PublicKey::from_jwk(jwk).ok()?.public_key().as_ref()),
            Alg::EdDSA => Verifying::EdDSA(*Ed25519PublicKey::from_jwk(jwk).ok()?.public_key().as_ref()),
        })
    }

    /// Whether `signature` over `signed` (the token's `header.payload`) was
    /// made by this key with `alg`, the algorithm it was imported for.
    pub fn verifies(&self, alg: Alg, signed: &[u8], signature: &[u8]) -> bool {
        match self {
            Verifying::Pkcs1(k) => k.verify(alg, signed, signature),
            Verifying::Pss(k) => {
                let (scheme, digest) = match alg {
                    Alg::PS384 => (::rsa::Pss::new_with_salt::<Sha384>(48), Sha384::digest(signed).to_vec()),
                    Alg::PS512 => (::rsa::Pss::new_with_salt::<Sha512>(64), Sha512::digest(signed).to_vec()),
                    _ => (::rsa::Pss::new_with_salt::<Sha256>(32), Sha256::digest(signed).to_vec()),
                };
                k.verify(scheme, &digest, signature).is_ok()
            }
            // Hashed here, with the sha2 the RSA checks use: p256/p384's own
            // digest is another major version of sha2, another copy of SHA-384.
            Verifying::Es256(k) => p256::ecdsa::Signature::try_from(signature)
                .is_ok_and(|s| k.verify_prehash(&Sha256::digest(signed), &s).is_ok()),
            Verifying::Es384(k) => p384::ecdsa::Signature::try_from(signature)
                .is_ok_and(|s| k.verify_prehash(&Sha384::digest(signed), &s).is_ok()),
            Verifying::EdDSA(k) => {
                ed25519_compact::Signature::from_slice(signature).is_ok_and(|s| k.verify(signed, &s).is_ok())
            }
        }
    }
}

/// `rsa.rs`'s form of an RSASSA-PKCS1-v1_5 key.
fn pkcs1(c: RSAPublicKeyComponents) -> Option<Verifying> {
    RsaKey::new(&c.n, &c.e).map(Verifying::Pkcs1)
}

fn pss(c: RSAPublicKeyComponents) -> Option<Verifying> {
    let n = ::rsa::BigUint::from_bytes_be(&c.n);
    let e = ::rsa::BigUint::from_bytes_be(&c.e);
    ::rsa::RsaPublicKey::new(n, e).ok().map(Verifying::Pss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys::{RSA1, RSA2};

    /// For one algorithm: jwt-simple signs with `$made`, and the key it
    /// publishes for `$made` verifies here; `$other`'s signature, another
    /// message or another algorithm does not.
    macro_rules! agrees {
        ($alg:expr, $made:expr, $other:expr) => {{
            let (alg, made, other): (Alg, _, _) = ($alg, $made, $other);
            let jwk = made.public_key().to_jwk();
            let key = Verifying::from_jwk(alg, &jwk).expect("jwt-simple's own JWK imports");
            let token = made.sign(Claims::create(Duration::from_secs(60))).unwrap();
            let (signed, sig) = token.rsplit_once('.').unwrap();
            let sig = Base64UrlSafeNoPadding::decode_to_vec(sig, None).unwrap();
            assert!(key.verifies(alg, signed.as_bytes(), &sig), "{alg:?}");
            let mut tampered = signed.as_bytes().to_vec();
            tampered[3] ^= 1;
            assert!(!key.verifies(alg, &tampered, &sig), "{alg:?} tampered");
            let other = other.sign(Claims::create(Duration::from_secs(60))).unwrap();
            let (signed, sig) = other.rsplit_once('.').unwrap();
            let sig = Base64UrlSafeNoPadding::decode_to_vec(sig, None).unwrap();
            assert!(!key.verifies(alg, signed.as_bytes(), &sig), "{alg:?} other key");
            assert!(!key.verifies(alg, b"x.y", &[]), "{alg:?} empty signature");
        }};
    }

    #[test]
    fn every_algorithm_agrees_with_jwt_simple() {
        use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Decoder};
        agrees!(
            Alg::RS256,
            RS256KeyPair::from_pem(RSA1).unwrap(),
            RS256KeyPair::from_pem(RSA2).unwrap()
        );
        agrees!(
            Alg::RS384,
            RS384KeyPair::from_pem(RSA1).unwrap(),
            RS384KeyPair::from_pem(RSA2).unwrap()
        );
        agrees!(
            Alg::RS512,
            RS512KeyPair::from_pem(RSA1).unwrap(),
            RS512KeyPair::from_pem(RSA2).unwrap()
        );
        agrees!(
            Alg::PS256,
            PS256KeyPair::from_pem(RSA1).unwrap(),
            PS256KeyPair::from_pem(RSA2).unwrap()
        );
        agrees!(
            Alg::PS384,
            PS384KeyPair::from_pem(RSA1).unwrap(),
            PS384KeyPair::from_pem(RSA2).unwrap()
        );
        agrees!(
            Alg::PS512,
            PS512KeyPair::from_pem(RSA1).unwrap(),
            PS512KeyPair::from_pem(RSA2).unwrap()
        );
        agrees!(Alg::ES256, ES256KeyPair::generate(), ES256KeyPair::generate());
        agrees!(Alg::ES384, ES384KeyPair::generate(), ES384KeyPair::generate());
        agrees!(Alg::EdDSA, Ed25519KeyPair::generate(), Ed25519KeyPair::generate());
    }

    #[test]
    fn a_key_serves_only_the_algorithms_of_its_kind() {
        let rsa = RS256KeyPair::from_pem(RSA1).unwrap().public_key().to_jwk();
        let ec = ES256KeyPair::generate().public_key().to_jwk();
        assert!(Verifying::from_jwk(Alg::ES256, &rsa).is_none());
        assert!(Verifying::from_jwk(Alg::EdDSA, &rsa).is_none());
        assert!(Verifying::from_jwk(Alg::PS256, &ec).is_none());
        assert!(Verifying::from_jwk(Alg::ES384, &ec).is_none());
    }
}
