//! One JWK (RFC 7517) imported as a public signing key, as strictly as
//! jwt-simple's per-algorithm import, whose rules these are (the tests and
//! the `jwks_parse` fuzz target hold the two side by side):
//!
//! - the document is at most 8 KiB, and every member jwt-simple names has its
//!   type (`kty`, `crv`, `alg`, `use`, `kid` strings, `key_ops` a list of
//!   strings, key material strings);
//! - `crv` is the curve of the key type, and absent for RSA;
//! - no key material of another key type, and no private half (`d`, `p`…):
//!   a private JWK published by mistake, or a symmetric `k`, is refused;
//! - `use`, if present, is `sig`; `key_ops`, if present, only `verify`, once;
//! - RSA: a canonical base64url modulus of 2048 to 4096 bits (one leading
//!   zero byte allowed before a high bit, as Java writes it), odd, and
//!   `e` exactly `AQAB` (65537);
//! - EC: `x` and `y` exactly the curve's size, a point on the curve;
//! - OKP: `x` exactly 32 bytes, an Ed25519 point of large order.
//!
//! Which algorithm a key serves (its `alg`, or every algorithm of its type)
//! is `jwks`'s choice; this only says whether the key is sound at all.

use crate::keys::signature::Verifying;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rsa::BoxedUint;
use serde_json::{Map, Value};

/// Longest JWK accepted, as compact JSON text (jwt-simple's limit).
pub const MAX_JWK_BYTES: usize = 8192;

/// Members that carry key material of some key type.
const MATERIAL: [&str; 15] = [
    "crv", "x", "y", "d", "n", "e", "p", "q", "dp", "dq", "qi", "oth", "k", "pub", "priv",
];

/// RSA moduli accepted, in bits.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;

/// The key kinds we import, each with its `kty`, `crv` and public members.
#[derive(Clone, Copy)]
enum Kind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Kind {
    fn of(kty: &str, crv: Option<&str>) -> Option<Kind> {
        match (kty, crv) {
            ("RSA", None) => Some(Kind::Rsa),
            ("EC", Some("P-256")) => Some(Kind::P256),
            ("EC", Some("P-384")) => Some(Kind::P384),
            ("OKP", Some("Ed25519")) => Some(Kind::Ed25519),
            _ => None,
        }
    }

    fn public_members(self) -> &'static [&'static str] {
        match self {
            Kind::Rsa => &["n", "e"],
            Kind::P256 | Kind::P384 => &["crv", "x", "y"],
            Kind::Ed25519 => &["crv", "x"],
        }
    }
}

/// The key `jwk` holds, if it is a sound public signing key. `text` is the
/// JWK as compact JSON, for the size limit.
pub fn import(jwk: &Value, text: &str) -> Option<Verifying> {
    if text.len() > MAX_JWK_BYTES {
        return None;
    }
    let m = jwk.as_object()?;
    let kind = Kind::of(string(m, "kty")??, string(m, "crv")?)?;
    // Checked for their type only: `alg` is matched by `jwks`, `kid` read there.
    string(m, "alg")?;
    string(m, "kid")?;
    if string(m, "use")?.is_some_and(|u| u != "sig") {
        return None;
    }
    if !key_ops_verify_only(m.get("key_ops"))? {
        return None;
    }
    let own = kind.public_members();
    let material_fits = m
        .keys()
        .filter(|name| MATERIAL.contains(&name.as_str()))
        .all(|name| own.contains(&name.as_str()));
    if !material_fits || !own.iter().all(|name| m.contains_key(*name)) {
        return None;
    }
    let text = |name: &str| m.get(name).and_then(Value::as_str).unwrap_or_default();
    match kind {
        Kind::Rsa => rsa_key(text("n"), text("e")),
        Kind::P256 => {
            let point = ec_point(text("x"), text("y"), 32)?;
            p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                .ok()
                .map(Verifying::Es256)
        }
        Kind::P384 => {
            let point = ec_point(text("x"), text("y"), 48)?;
            p384::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                .ok()
                .map(Verifying::Es384)
        }
        Kind::Ed25519 => {
            let x = fixed(text("x"), ed25519_compact::PublicKey::BYTES)?;
            let key = ed25519_compact::PublicKey::from_slice(&x).ok()?;
            key.validate().ok().map(|()| Verifying::EdDSA(key))
        }
    }
}

/// A member that must be a string if present: `None` if it is not one,
/// `Some(None)` if it is absent.
fn string<'a>(m: &'a Map<String, Value>, name: &str) -> Option<Option<&'a str>> {
    match m.get(name) {
        None => Some(None),
        Some(Value::String(s)) => Some(Some(s)),
        Some(_) => None,
    }
}

/// `key_ops`, if present, is a list of strings naming only `verify`, each
/// at most once. `None` if it is not a list of strings.
fn key_ops_verify_only(ops: Option<&Value>) -> Option<bool> {
    let Some(ops) = ops else {
        return Some(true);
    };
    let ops = ops.as_array()?;
    let mut verify = 0;
    for op in ops {
        if op.as_str()? != "verify" {
            return Some(false);
        }
        verify += 1;
    }
    Some(verify <= 1)
}

fn rsa_key(n: &str, e: &str) -> Option<Verifying> {
    if e != "AQAB" {
        return None;
    }
    let n = URL_SAFE_NO_PAD.decode(n).ok()?;
    let n = match n.as_slice() {
        [0, rest @ ..] if rest.first().is_some_and(|top| top & 0x80 != 0) => rest,
        all => all,
    };
    // No other leading zero: one number, one spelling.
    n.first().filter(|&&top| top != 0)?;
    let n = BoxedUint::from_be_slice_vartime(n);
    let e = BoxedUint::from(65_537u32);
    rsa::PublicKey::new_with_size_limits(n, e, RSA_BITS)
        .ok()
        .map(Verifying::Rsa)
}

/// The uncompressed SEC1 point `04 ‖ x ‖ y`, each coordinate exactly `size`
/// bytes in canonical base64url.
fn ec_point(x: &str, y: &str, size: usize) -> Option<Vec<u8>> {
    let mut point = vec![0x04];
    point.extend(fixed(x, size)?);
    point.extend(fixed(y, size)?);
    Some(point)
}

/// Canonical unpadded base64url of exactly `size` bytes.
fn fixed(b64: &str, size: usize) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(b64).ok().filter(|b| b.len() == size)
}

#[cfg(test)]
mod tests;
