//! A public key in the form its library checks signatures with, and that
//! check: the `rsa` crate's key for RS* (through `rsa.rs`'s fast PKCS#1
//! check) and PS*, `p256`/`p384`'s ECDSA keys, and ed25519-compact's.
//!
//! These are the libraries jwt-simple itself calls, on one RustCrypto
//! generation: jwt-simple builds its RSA on the older one (rsa 0.9 on
//! num-bigint-dig, der 0.7, sha2 0.10) and its EC on the newer (p256/p384
//! 0.14, sha2 0.11), has no per-algorithm features, and checks a token with
//! a copy of its whole token pipeline per algorithm. So the module carried
//! two of each, and Envoy compiled them all. jwt-simple stays the tests'
//! reference: every key import, signature and assertion here is held
//! against it. The checks are jwt-simple's own: PSS with a salt as long as
//! the hash (RFC 7518 §3.5), ECDSA signatures as R ‖ S over the SHA-256/384
//! hash (§3.4).

use crate::keys::alg::Alg;
use crate::keys::rsa;
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use sha2::{Digest, Sha256, Sha384, Sha512};

#[derive(Clone)]
pub enum Verifying {
    /// RS256/384/512 and PS256/384/512.
    Rsa(::rsa::PublicKey),
    Es256(p256::ecdsa::VerifyingKey),
    Es384(p384::ecdsa::VerifyingKey),
    EdDSA(ed25519_compact::PublicKey),
}

impl Verifying {
    /// Whether `signature` over `signed` (the token's `header.payload`) was
    /// made by this key with `alg`.
    pub fn verifies(&self, alg: Alg, signed: &[u8], signature: &[u8]) -> bool {
        use ::rsa::pss::Pss;
        match (self, alg) {
            (Verifying::Rsa(k), Alg::RS256 | Alg::RS384 | Alg::RS512) => rsa::verify(k, alg, signed, signature),
            (Verifying::Rsa(k), Alg::PS256) => k
                .verify(Pss::<Sha256>::new(), &Sha256::digest(signed), signature)
                .is_ok(),
            (Verifying::Rsa(k), Alg::PS384) => k
                .verify(Pss::<Sha384>::new(), &Sha384::digest(signed), signature)
                .is_ok(),
            (Verifying::Rsa(k), Alg::PS512) => k
                .verify(Pss::<Sha512>::new(), &Sha512::digest(signed), signature)
                .is_ok(),
            (Verifying::Es256(k), Alg::ES256) => p256::ecdsa::Signature::try_from(signature)
                .is_ok_and(|s| k.verify_prehash(&Sha256::digest(signed), &s).is_ok()),
            (Verifying::Es384(k), Alg::ES384) => p384::ecdsa::Signature::try_from(signature)
                .is_ok_and(|s| k.verify_prehash(&Sha384::digest(signed), &s).is_ok()),
            (Verifying::EdDSA(k), Alg::EdDSA) => {
                ed25519_compact::Signature::from_slice(signature).is_ok_and(|s| k.verify(signed, &s).is_ok())
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::jwk;
    use crate::testkeys::{RSA1, RSA2};
    use jwt_simple::prelude::*;

    /// The key in a JWK text, through the filter's own import.
    fn import(text: &str) -> Verifying {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        jwk::import(&v, text).expect("jwt-simple's own JWK imports")
    }

    /// For one algorithm: jwt-simple signs with `$made`, and the key it
    /// publishes for `$made` verifies here; `$other`'s signature, another
    /// message or another algorithm does not.
    macro_rules! agrees {
        ($alg:expr, $made:expr, $other:expr) => {{
            let (alg, made, other): (Alg, _, _) = ($alg, $made, $other);
            let key = import(&made.public_key().to_jwk());
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
        use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Decoder};
        let rsa = RS256KeyPair::from_pem(RSA1).unwrap();
        let ec = ES256KeyPair::generate();
        let ed = Ed25519KeyPair::generate();
        let signed = |token: String| {
            let (signed, sig) = token.rsplit_once('.').unwrap();
            (
                signed.to_string(),
                Base64UrlSafeNoPadding::decode_to_vec(sig, None).unwrap(),
            )
        };
        let claims = || Claims::create(Duration::from_secs(60));
        let keys = [
            (
                Alg::RS256,
                import(&rsa.public_key().to_jwk()),
                signed(rsa.sign(claims()).unwrap()),
            ),
            (
                Alg::ES256,
                import(&ec.public_key().to_jwk()),
                signed(ec.sign(claims()).unwrap()),
            ),
            (
                Alg::EdDSA,
                import(&ed.public_key().to_jwk()),
                signed(ed.sign(claims()).unwrap()),
            ),
        ];
        for (made, key, (input, sig)) in &keys {
            for alg in Alg::ALL {
                assert_eq!(
                    key.verifies(alg, input.as_bytes(), sig),
                    alg == *made,
                    "{made:?} key, {alg:?}"
                );
            }
        }
    }
}
