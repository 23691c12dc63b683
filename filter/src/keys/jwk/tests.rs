//! The import held against jwt-simple's, key by key and algorithm by
//! algorithm, over sound keys and many ways of spoiling them.

use crate::keys::alg::Alg;
use crate::keys::jwks::KeySet;
use crate::testkeys::{self, RSA1};
use jwt_simple::prelude::*;
use serde_json::{json, Value};

/// Whether jwt-simple imports `text` for `alg`, and the JWK's `alg` (if a
/// string) names that algorithm: what the filter did before it imported
/// keys itself.
fn theirs(alg: Alg, jwk: &Value) -> bool {
    let text = jwk.to_string();
    let declared = jwk.get("alg").and_then(Value::as_str);
    if declared.is_some_and(|d| Alg::from_name(d) != Some(alg)) {
        return false;
    }
    match alg {
        Alg::RS256 => RS256PublicKey::from_jwk(&text).is_ok(),
        Alg::RS384 => RS384PublicKey::from_jwk(&text).is_ok(),
        Alg::RS512 => RS512PublicKey::from_jwk(&text).is_ok(),
        Alg::PS256 => PS256PublicKey::from_jwk(&text).is_ok(),
        Alg::PS384 => PS384PublicKey::from_jwk(&text).is_ok(),
        Alg::PS512 => PS512PublicKey::from_jwk(&text).is_ok(),
        Alg::ES256 => ES256PublicKey::from_jwk(&text).is_ok(),
        Alg::ES384 => ES384PublicKey::from_jwk(&text).is_ok(),
        Alg::EdDSA => Ed25519PublicKey::from_jwk(&text).is_ok(),
    }
}

/// The algorithms the filter loads `jwk` for.
fn ours(jwk: &Value) -> Vec<Alg> {
    let Ok((set, _)) = KeySet::parse(testkeys::jwks(std::slice::from_ref(jwk)).as_bytes()) else {
        return Vec::new();
    };
    Alg::ALL
        .into_iter()
        .filter(|&a| set.candidates(a, None).count() > 0)
        .collect()
}

fn agree(jwk: &Value) {
    let expected: Vec<Alg> = Alg::ALL.into_iter().filter(|&a| theirs(a, jwk)).collect();
    assert_eq!(ours(jwk), expected, "{jwk}");
}

fn base_keys() -> Vec<Value> {
    let parse = |text: String| serde_json::from_str::<Value>(&text).unwrap();
    vec![
        parse(RS256KeyPair::from_pem(RSA1).unwrap().public_key().to_jwk()),
        parse(ES256KeyPair::generate().public_key().to_jwk()),
        parse(ES384KeyPair::generate().public_key().to_jwk()),
        parse(Ed25519KeyPair::generate().public_key().to_jwk()),
    ]
}

/// `jwk` with `name` set to `value`, or removed for `None`.
fn with(jwk: &Value, name: &str, value: Option<Value>) -> Value {
    let mut v = jwk.clone();
    let m = v.as_object_mut().unwrap();
    match value {
        Some(x) => m.insert(name.to_string(), x),
        None => m.remove(name),
    };
    v
}

/// Changes of members every key type has.
fn common_variants(jwk: &Value) -> Vec<Value> {
    let mut out = vec![jwk.clone(), with(jwk, "alg", None)];
    let values = |list: &[Value]| list.iter().cloned().map(Some).collect::<Vec<_>>();
    let members: [(&str, Vec<Option<Value>>); 5] = [
        (
            "alg",
            values(&[
                json!("RS256"),
                json!("PS384"),
                json!("ES256"),
                json!("ES384"),
                json!("EdDSA"),
                json!("Ed25519"),
                json!("HS256"),
                json!("none"),
                json!(1),
                Value::Null,
            ]),
        ),
        (
            "use",
            values(&[json!("sig"), json!("enc"), json!("SIG"), json!(1), Value::Null]),
        ),
        (
            "key_ops",
            values(&[
                json!(["verify"]),
                json!([]),
                json!(["verify", "verify"]),
                json!(["sign"]),
                json!(["verify", "sign"]),
                json!("verify"),
                json!([1]),
                Value::Null,
            ]),
        ),
        ("kid", values(&[json!("k"), json!(""), json!(1), Value::Null])),
        (
            "kty",
            vec![
                None,
                Some(json!("oct")),
                Some(json!("rsa")),
                Some(json!(1)),
                Some(json!("EC")),
                Some(json!("OKP")),
            ],
        ),
    ];
    for (name, list) in members {
        for value in list {
            out.push(with(jwk, name, value));
        }
    }
    for crv in [
        None,
        Some(json!("P-256")),
        Some(json!("P-384")),
        Some(json!("Ed25519")),
        Some(json!("P-521")),
        Some(json!(1)),
    ] {
        out.push(with(jwk, "crv", crv));
    }
    // Material of other key types, private halves, symmetric keys.
    for name in [
        "d", "p", "q", "dp", "dq", "qi", "oth", "k", "pub", "priv", "x", "y", "n", "e",
    ] {
        out.push(with(jwk, name, Some(json!("AQAB"))));
        out.push(with(jwk, name, Some(json!(7))));
        out.push(with(jwk, name, None));
    }
    // Members nobody reads, and the size limit.
    out.push(with(jwk, "x5c", Some(json!(["MIIB", {"deep": [[[1]]]}]))));
    out.push(with(jwk, "pad", Some(json!("a".repeat(8000)))));
    out.push(with(jwk, "pad", Some(json!("a".repeat(7000)))));
    out
}

fn b64(bytes: &[u8]) -> Value {
    use base64::Engine;
    json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn bytes(v: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(v.as_str().unwrap())
        .unwrap()
}

/// Moduli and exponents jwt-simple refuses, and the ones it takes.
fn rsa_variants(jwk: &Value) -> Vec<Value> {
    let n = bytes(&jwk["n"]);
    let mut even = n.clone();
    *even.last_mut().unwrap() &= 0xfe;
    let mut high = n.clone();
    high[0] = 0x7f;
    let sign_byte = [&[0u8][..], &n].concat();
    let two_zeros = [&[0u8, 0][..], &n].concat();
    let zero_then_low = [&[0u8, 0x7f][..], &n].concat();
    let bits_4096 = [&[0x80u8][..], &[0x55; 510][..], &[0x01][..]].concat();
    let bits_4097 = [&[0x01u8][..], &bits_4096].concat();
    let bits_2047 = [&[0x7fu8][..], &n[1..]].concat();
    let bits_1024 = n[..128].to_vec();
    let mut out: Vec<Value> = [
        even,
        high,
        sign_byte,
        two_zeros,
        zero_then_low,
        bits_4096,
        bits_4097,
        bits_2047,
        bits_1024,
    ]
    .iter()
    .map(|m| with(jwk, "n", Some(b64(m))))
    .collect();
    let text = jwk["n"].as_str().unwrap();
    for spoiled in [
        format!("{text}="),
        format!("{text}A"),
        text.replace('-', "+"),
        format!(" {text}"),
    ] {
        out.push(with(jwk, "n", Some(json!(spoiled))));
    }
    for e in [
        json!("AAEAAQ"),
        json!("Aw"),
        json!("AQAC"),
        json!(65537),
        json!("AQAB "),
    ] {
        out.push(with(jwk, "e", Some(e)));
    }
    out
}

/// Coordinates of the wrong size, off the curve, or spelled twice.
fn ec_variants(jwk: &Value) -> Vec<Value> {
    let x = bytes(&jwk["x"]);
    let mut off_curve = bytes(&jwk["y"]);
    off_curve[5] ^= 1;
    let mut out = vec![
        with(jwk, "y", Some(b64(&off_curve))),
        with(jwk, "x", Some(b64(&x[1..]))),
        with(jwk, "x", Some(b64(&[&[0u8][..], &x].concat()))),
        with(jwk, "y", Some(jwk["x"].clone())),
    ];
    let text = jwk["x"].as_str().unwrap();
    let last = text.chars().last().unwrap();
    let other_last = if last == 'A' { 'B' } else { 'A' };
    out.push(with(
        jwk,
        "x",
        Some(json!(format!("{}{other_last}", &text[..text.len() - 1]))),
    ));
    out
}

/// Ed25519 points of small order, non-canonical and of the wrong size.
fn okp_variants(jwk: &Value) -> Vec<Value> {
    let identity = [&[1u8][..], &[0; 31][..]].concat();
    let x = bytes(&jwk["x"]);
    [
        identity,
        vec![0; 32],
        vec![0xff; 32],
        x[1..].to_vec(),
        [&x[..], &[0][..]].concat(),
    ]
    .iter()
    .map(|v| with(jwk, "x", Some(b64(v))))
    .collect()
}

#[test]
fn imports_exactly_what_jwt_simple_imports() {
    let mut checked = 0;
    for key in base_keys() {
        let mut variants = common_variants(&key);
        variants.extend(match key["kty"].as_str() {
            Some("RSA") => rsa_variants(&key),
            Some("EC") => ec_variants(&key),
            _ => okp_variants(&key),
        });
        for v in variants
            .iter()
            .chain(variants.iter().map(|v| with(v, "alg", None)).collect::<Vec<_>>().iter())
        {
            agree(v);
            checked += 1;
        }
    }
    assert!(checked > 300, "{checked}");
}

#[test]
fn sound_keys_serve_their_algorithms() {
    let [rsa, p256, p384, ed] = base_keys().try_into().unwrap();
    assert_eq!(ours(&rsa), vec![Alg::RS256]);
    let rsa = with(&rsa, "alg", None);
    assert_eq!(ours(&rsa), Alg::ALL[..6].to_vec());
    assert_eq!(ours(&p256), vec![Alg::ES256]);
    assert_eq!(ours(&p384), vec![Alg::ES384]);
    assert_eq!(ours(&ed), vec![Alg::EdDSA]);
    // A private JWK published by mistake is not a public key.
    let private: Value = serde_json::from_str(&ES256KeyPair::generate().to_jwk()).unwrap();
    assert_eq!(ours(&private), vec![]);
}
