//! RS256/384/512 signature checks (RSASSA-PKCS1-v1_5, RFC 8017 §8.2.2) on
//! the `rsa` crate's public key, with the exponent taken the short way.
//!
//! Why not the `rsa` crate's own PKCS#1 check: it raises to the exponent
//! with crypto-bigint's constant-time 4-bit window (a table of 16 powers,
//! then a product per window), about 35 modular products where e = 65537
//! needs 17. Here e = 65537 is sixteen squarings and one product, on the
//! Montgomery constants the key computed once when the JWKS was loaded;
//! a new user's first RS256 token is checked in about half the work (see
//! README, Performance). PS* checks stay the crate's (`signature`).
//!
//! Only the public operation is here, and it is variable-time on purpose:
//! everything it touches (key, signature, message) is public. Keys come
//! from `jwk`'s strict import (2048 to 4096 bits, e = 65537). The tests
//! hold this against jwt-simple and against the `rsa` crate's own check.

use crate::keys::alg::Alg;
use ::rsa::traits::PublicKeyParts;
use ::rsa::{BoxedUint, PublicKey};
use crypto_bigint::modular::BoxedMontyForm;
use sha2::{Digest, Sha256, Sha384, Sha512};

/// DER `DigestInfo` prefixes from RFC 8017 §9.2, note 1.
const SHA256_PREFIX: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
];
const SHA384_PREFIX: [u8; 19] = [
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30,
];
const SHA512_PREFIX: [u8; 19] = [
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40,
];

/// True if `signature` is `alg`'s RSASSA-PKCS1-v1_5 signature of `message`
/// under `key`. Its exponent is 65537: `jwk` imports no other.
pub fn verify(key: &PublicKey, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
    let (prefix, digest): (&[u8], Vec<u8>) = match alg {
        Alg::RS256 => (&SHA256_PREFIX, Sha256::digest(message).to_vec()),
        Alg::RS384 => (&SHA384_PREFIX, Sha384::digest(message).to_vec()),
        Alg::RS512 => (&SHA512_PREFIX, Sha512::digest(message).to_vec()),
        _ => return false,
    };
    let k = key.size();
    // RSAVP1 (§5.2.2): the signature representative must be in [0, n-1].
    if signature.len() != k {
        return false;
    }
    let Ok(s) = BoxedUint::from_be_slice(signature, key.n_bits_precision()) else {
        return false;
    };
    if s >= *key.n().as_ref() {
        return false;
    }
    // m = s^65537 mod n: sixteen squarings, one product.
    let x = BoxedMontyForm::new(s, key.n_params());
    let mut m = x.square();
    for _ in 1..16 {
        m = m.square();
    }
    let em = m.mul(&x).retrieve().to_be_bytes();
    // The big-endian bytes are a whole number of limbs: any excess in
    // front of the k bytes must be zero.
    let Some(split) = em.len().checked_sub(k) else {
        return false;
    };
    let (excess, em) = em.split_at(split);
    if excess.iter().any(|&b| b != 0) {
        return false;
    }
    // EMSA-PKCS1-v1_5 (§9.2): 0x00 0x01 FF…FF 0x00 DigestInfo, compared
    // whole, never parsed.
    let t_len = prefix.len() + digest.len();
    let Some(ps_len) = k.checked_sub(t_len + 3) else {
        return false;
    };
    if ps_len < 8 {
        return false;
    }
    let mut expected = Vec::with_capacity(k);
    expected.extend_from_slice(&[0x00, 0x01]);
    expected.resize(2 + ps_len, 0xff);
    expected.push(0x00);
    expected.extend_from_slice(prefix);
    expected.extend_from_slice(&digest);
    expected.as_slice() == em
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys::{RSA1, RSA2};
    use jwt_simple::prelude::*;

    fn key(pem: &str) -> PublicKey {
        let c = RS256KeyPair::from_pem(pem).unwrap().public_key().to_components();
        PublicKey::new(
            BoxedUint::from_be_slice_vartime(&c.n),
            BoxedUint::from_be_slice_vartime(&c.e),
        )
        .unwrap()
    }

    fn sig(token: &str) -> (Vec<u8>, Vec<u8>) {
        use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Decoder};
        let (signed, s) = token.rsplit_once('.').unwrap();
        (
            signed.as_bytes().to_vec(),
            Base64UrlSafeNoPadding::decode_to_vec(s, None).unwrap(),
        )
    }

    #[test]
    fn agrees_with_jwt_simple_on_rs256_384_512() {
        let k = key(RSA1);
        let claims = || Claims::create(Duration::from_secs(60)).with_subject("s");
        let tokens = [
            (
                Alg::RS256,
                RS256KeyPair::from_pem(RSA1).unwrap().sign(claims()).unwrap(),
            ),
            (
                Alg::RS384,
                RS384KeyPair::from_pem(RSA1).unwrap().sign(claims()).unwrap(),
            ),
            (
                Alg::RS512,
                RS512KeyPair::from_pem(RSA1).unwrap().sign(claims()).unwrap(),
            ),
        ];
        for (alg, t) in &tokens {
            let (m, s) = sig(t);
            assert!(verify(&k, *alg, &m, &s), "{alg:?}");
            // The same signature under another hash must fail.
            for other in [Alg::RS256, Alg::RS384, Alg::RS512] {
                if other != *alg {
                    assert!(!verify(&k, other, &m, &s));
                }
            }
        }
    }

    /// The `rsa` crate's own PKCS#1 v1.5 check reaches the same verdict on
    /// good, tampered and out-of-range signatures.
    #[test]
    fn agrees_with_the_rsa_crate() {
        use ::rsa::signature::Verifier;
        let k = key(RSA1);
        let theirs = ::rsa::pkcs1v15::VerifyingKey::<Sha256>::new(k.clone());
        let t = RS256KeyPair::from_pem(RSA1)
            .unwrap()
            .sign(Claims::create(Duration::from_secs(60)))
            .unwrap();
        let (m, s) = sig(&t);
        let mut cases = vec![
            (m.clone(), s.clone()),
            (m[1..].to_vec(), s.clone()),
            (m.clone(), vec![0xff; s.len()]),
        ];
        for i in [0, 1, s.len() / 2, s.len() - 1] {
            let mut s2 = s.clone();
            s2[i] ^= 1;
            cases.push((m.clone(), s2));
        }
        for (m, s) in cases {
            let signature = ::rsa::pkcs1v15::Signature::try_from(s.as_slice()).unwrap();
            assert_eq!(verify(&k, Alg::RS256, &m, &s), theirs.verify(&m, &signature).is_ok());
        }
    }

    #[test]
    fn rejects_other_keys_tampering_and_out_of_range_signatures() {
        let t = RS256KeyPair::from_pem(RSA1)
            .unwrap()
            .sign(Claims::create(Duration::from_secs(60)))
            .unwrap();
        let (m, s) = sig(&t);
        assert!(!verify(&key(RSA2), Alg::RS256, &m, &s), "another key");
        let mut m2 = m.clone();
        m2[5] ^= 1;
        assert!(!verify(&key(RSA1), Alg::RS256, &m2, &s), "another message");
        for i in [0, s.len() / 2, s.len() - 1] {
            let mut s2 = s.clone();
            s2[i] ^= 0x80;
            assert!(!verify(&key(RSA1), Alg::RS256, &m, &s2), "flipped byte {i}");
        }
        assert!(!verify(&key(RSA1), Alg::RS256, &m, &s[1..]), "short");
        let mut long = vec![0];
        long.extend_from_slice(&s);
        assert!(!verify(&key(RSA1), Alg::RS256, &m, &long), "long");
        // s + n ≡ s (mod n) would verify if the range check were missing.
        let c = RS256KeyPair::from_pem(RSA1).unwrap().public_key().to_components();
        let n = BoxedUint::from_be_slice(&c.n, 2048).unwrap();
        let s_big = BoxedUint::from_be_slice(&s, 2048).unwrap();
        let (sum, carry) = s_big.carrying_add(&n, crypto_bigint::Limb::ZERO);
        if carry == crypto_bigint::Limb::ZERO {
            assert!(!verify(&key(RSA1), Alg::RS256, &m, &sum.to_be_bytes()));
        }
        assert!(!verify(&key(RSA1), Alg::RS256, &m, &vec![0xff; s.len()]), "s ≥ n");
        assert!(!verify(&key(RSA1), Alg::RS256, &m, &vec![0; s.len()]), "zero");
        assert!(!verify(&key(RSA1), Alg::PS256, &m, &s), "not a PKCS#1 v1.5 algorithm");
    }
}
