//! RS256/384/512 signature checks (RSASSA-PKCS1-v1_5, RFC 8017 §8.2.2) on
//! crypto-bigint's Montgomery arithmetic.
//!
//! Why not jwt-simple's own RSA: its pure-Rust backend (`rsa` on
//! num-bigint-dig) recomputes the Montgomery constants with a 4096-bit
//! division on every call and runs a fixed 4-bit window over the whole
//! exponent word, about 96 modular products where e = 65537 needs 17. Under
//! V8 that is ~0.84 ms per RS256 token; this is ~0.2 ms, which is what keeps
//! a new user's first request under a millisecond. The constants are computed
//! once per key when the JWKS is loaded.
//!
//! Only the public operation is here, and it is variable-time on purpose:
//! everything it touches (key, signature, message) is public. Keys are
//! accepted only after jwt-simple's strict JWK import has checked them
//! (2048 to 4096 bits, e = 65537); the other algorithms are checked by
//! their libraries (`signature`). The tests hold this against jwt-simple.

use crate::keys::alg::Alg;
use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd};
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

/// An RSA public key (e = 65537) ready for repeated verification.
pub struct RsaKey {
    modulus: BoxedUint,
    params: BoxedMontyParams,
    /// Modulus length in bytes: the signature's length.
    k: usize,
    bits: u32,
}

impl RsaKey {
    /// From the big-endian modulus and exponent. `None` unless e = 65537 and
    /// the modulus is odd (jwt-simple has checked its size).
    pub fn new(n: &[u8], e: &[u8]) -> Option<RsaKey> {
        let e = strip(e);
        if e != [0x01, 0x00, 0x01] {
            return None;
        }
        let n = strip(n);
        let k = n.len();
        let bits = u32::try_from(k * 8).ok()?;
        let modulus = BoxedUint::from_be_slice(n, bits).ok()?;
        let odd: Option<Odd<BoxedUint>> = Odd::new(modulus.clone()).into();
        Some(RsaKey {
            params: BoxedMontyParams::new_vartime(odd?),
            modulus,
            k,
            bits,
        })
    }

    /// True if `signature` is `alg`'s RSASSA-PKCS1-v1_5 signature of `message`.
    pub fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        let (prefix, digest): (&[u8], Vec<u8>) = match alg {
            Alg::RS256 => (&SHA256_PREFIX, Sha256::digest(message).to_vec()),
            Alg::RS384 => (&SHA384_PREFIX, Sha384::digest(message).to_vec()),
            Alg::RS512 => (&SHA512_PREFIX, Sha512::digest(message).to_vec()),
            _ => return false,
        };
        // RSAVP1 (§5.2.2): the signature representative must be in [0, n-1].
        if signature.len() != self.k {
            return false;
        }
        let Ok(s) = BoxedUint::from_be_slice(signature, self.bits) else {
            return false;
        };
        if s >= self.modulus {
            return false;
        }
        // m = s^65537 mod n: sixteen squarings, one product.
        let x = BoxedMontyForm::new(s, &self.params);
        let mut m = x.square();
        for _ in 1..16 {
            m = m.square();
        }
        let em = m.mul(&x).retrieve().to_be_bytes();
        // The big-endian bytes are a whole number of limbs: any excess in
        // front of the k bytes must be zero.
        let Some(split) = em.len().checked_sub(self.k) else {
            return false;
        };
        let (excess, em) = em.split_at(split);
        if excess.iter().any(|&b| b != 0) {
            return false;
        }
        // EMSA-PKCS1-v1_5 (§9.2): 0x00 0x01 FF…FF 0x00 DigestInfo, compared
        // whole, never parsed.
        let t_len = prefix.len() + digest.len();
        let Some(ps_len) = self.k.checked_sub(t_len + 3) else {
            return false;
        };
        if ps_len < 8 {
            return false;
        }
        let mut expected = Vec::with_capacity(self.k);
        expected.extend_from_slice(&[0x00, 0x01]);
        expected.resize(2 + ps_len, 0xff);
        expected.push(0x00);
        expected.extend_from_slice(prefix);
        expected.extend_from_slice(&digest);
        expected.as_slice() == em
    }
}

fn strip(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys::{RSA1, RSA2};
    use jwt_simple::prelude::*;

    fn key(pem: &str) -> RsaKey {
        let c = RS256KeyPair::from_pem(pem).unwrap().public_key().to_components();
        RsaKey::new(&c.n, &c.e).unwrap()
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
            assert!(k.verify(*alg, &m, &s), "{alg:?}");
            // The same signature under another hash must fail.
            for other in [Alg::RS256, Alg::RS384, Alg::RS512] {
                if other != *alg {
                    assert!(!k.verify(other, &m, &s));
                }
            }
        }
    }

    #[test]
    fn rejects_other_keys_tampering_and_out_of_range_signatures() {
        let t = RS256KeyPair::from_pem(RSA1)
            .unwrap()
            .sign(Claims::create(Duration::from_secs(60)))
            .unwrap();
        let (m, s) = sig(&t);
        assert!(!key(RSA2).verify(Alg::RS256, &m, &s), "another key");
        let mut m2 = m.clone();
        m2[5] ^= 1;
        assert!(!key(RSA1).verify(Alg::RS256, &m2, &s), "another message");
        for i in [0, s.len() / 2, s.len() - 1] {
            let mut s2 = s.clone();
            s2[i] ^= 0x80;
            assert!(!key(RSA1).verify(Alg::RS256, &m, &s2), "flipped byte {i}");
        }
        assert!(!key(RSA1).verify(Alg::RS256, &m, &s[1..]), "short");
        let mut long = vec![0];
        long.extend_from_slice(&s);
        assert!(!key(RSA1).verify(Alg::RS256, &m, &long), "long");
        // s + n ≡ s (mod n) would verify if the range check were missing.
        let c = RS256KeyPair::from_pem(RSA1).unwrap().public_key().to_components();
        let n = BoxedUint::from_be_slice(&c.n, 2048).unwrap();
        let s_big = BoxedUint::from_be_slice(&s, 2048).unwrap();
        let (sum, carry) = s_big.carrying_add(&n, crypto_bigint::Limb::ZERO);
        if carry == crypto_bigint::Limb::ZERO {
            assert!(!key(RSA1).verify(Alg::RS256, &m, &sum.to_be_bytes()));
        }
        assert!(!key(RSA1).verify(Alg::RS256, &m, &vec![0xff; s.len()]), "s ≥ n");
        assert!(!key(RSA1).verify(Alg::RS256, &m, &vec![0; s.len()]), "zero");
        assert!(!key(RSA1).verify(Alg::PS256, &m, &s), "not a PKCS#1 v1.5 algorithm");
    }

    #[test]
    fn only_e_65537_and_odd_moduli() {
        let c = RS256KeyPair::from_pem(RSA1).unwrap().public_key().to_components();
        assert!(RsaKey::new(&c.n, &[3]).is_none());
        assert!(RsaKey::new(&c.n, &[0, 1, 0, 1]).is_some(), "leading zeros are fine");
        let mut even = c.n.clone();
        *even.last_mut().unwrap() &= 0xfe;
        assert!(RsaKey::new(&even, &c.e).is_none());
    }
}
