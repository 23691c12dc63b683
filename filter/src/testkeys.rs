//! Test-only signing keys and token minting. The RSA keys are fixed PEM files
//! made for these tests (generating 2048-bit keys in a debug build is slow).

use jwt_simple::prelude::*;
use serde_json::Value;

pub const RSA1: &str = include_str!("testdata/rsa1.pem");
pub const RSA2: &str = include_str!("testdata/rsa2.pem");

#[derive(Serialize, Deserialize, Default, Clone)]
pub struct Extra {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scp: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

pub fn rsa(pem: &str, kid: &str) -> RS256KeyPair {
    RS256KeyPair::from_pem(pem).unwrap().with_key_id(kid)
}

pub fn rsa_jwk(kid: &str, alg: Option<&str>) -> Value {
    let mut v: Value = serde_json::from_str(&rsa(RSA1, kid).public_key().to_jwk()).unwrap();
    match alg {
        Some(a) => v["alg"] = a.into(),
        None => {
            v.as_object_mut().unwrap().remove("alg");
        }
    }
    v["kid"] = kid.into();
    v
}

pub fn es256_jwk(kid: &str) -> Value {
    let k = ES256KeyPair::generate().with_key_id(kid);
    serde_json::from_str(&k.public_key().to_jwk()).unwrap()
}

pub fn jwks(keys: &[Value]) -> String {
    serde_json::json!({ "keys": keys }).to_string()
}

/// Claims as a typical MCP access token carries them, valid for five minutes.
pub fn claims(iss: &str, aud: &str, scope: &str) -> JWTClaims<Extra> {
    let extra = Extra {
        scope: Some(scope.to_string()),
        ..Default::default()
    };
    Claims::with_custom_claims(extra, Duration::from_secs(300))
        .with_issuer(iss)
        .with_audience(aud)
        .with_subject("alice")
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Builds a token with an arbitrary header and payload and a fake signature:
/// for `alg: none` and other forgeries jwt-simple refuses to make.
pub fn forge(header: &Value, payload: &Value, signature: &[u8]) -> String {
    use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
    let enc = |b: &[u8]| Base64UrlSafeNoPadding::encode_to_string(b).unwrap();
    format!(
        "{}.{}.{}",
        enc(header.to_string().as_bytes()),
        enc(payload.to_string().as_bytes()),
        enc(signature)
    )
}
