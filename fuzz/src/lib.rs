//! Fixtures shared by the fuzz targets and by `examples/seeds.rs`, which
//! writes the checked-in seed corpus: one fixed issuer, one fixed JWKS (an
//! RSA key, an ES256 key, an Ed25519 key), the configurations the targets
//! build their verifier and exchangers from, and token forging with the
//! fixed private keys, so a fuzzed header and payload still carry a good
//! signature and reach the claim checks behind it.
//!
//! Everything here is deterministic: the keys come from fixed bytes, never
//! from a random source, so a crash reproduces from its input alone.

pub mod paths;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jwt_simple::prelude::*;
use jwt_simple::token::Token;
use jwt_simple::JWTError;
use plugin_config::Config;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use token_exchange_filter::fuzzing::{Alg, Exchanger, Failure, KeySet, Principal, Reject, Verifier};

/// The filter's own RSA test key (2048 bits).
pub const RSA_PEM: &str = include_str!("../../filter/src/testdata/rsa1.pem");
pub const ISSUER: &str = "https://idp.example.com/realms/mcp";
pub const AUDIENCE: &str = "mcp-server";
/// The clock the seed tokens are valid at (2023-11-14); they expire in 2100.
pub const NOW: u64 = 1_700_000_000;
pub const EXP: u64 = 4_102_444_800;

pub const RSA_KID: &str = "rsa-1";
pub const EC_KID: &str = "ec-1";
pub const ED_KID: &str = "ed-1";

/// The filter configuration the verifier and the plain exchanger come from.
pub fn config_json() -> String {
    serde_json::json!({
        "oidc": {
            "issuer": ISSUER,
            "audience": [AUDIENCE, "other-audience"],
            "jwksUrl": "https://idp.example.com/realms/mcp/protocol/openid-connect/certs",
            "requiredScopes": ["mcp:tools"],
            "clockSkewSeconds": 60
        },
        "tokenExchange": {
            "provider": "keycloak",
            "tokenUrl": "https://idp.example.com/realms/mcp/protocol/openid-connect/token",
            "clientId": "mcp-gateway",
            "clientSecretEnv": "CLIENT_SECRET",
            "audience": "backend",
            "scopes": ["backend:read"],
            "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token",
            "timeoutMs": 2000
        }
    })
    .to_string()
}

/// The `tokenExchange` sections the answer target exchanges with, one per
/// dialect: RFC 8693 with and without a requested token type, Entra OBO,
/// and Google STS with its impersonation step.
pub fn exchange_sections() -> Vec<serde_json::Value> {
    use serde_json::json;
    vec![
        json!({
            "provider": "keycloak",
            "tokenUrl": "https://idp.example.com/realms/mcp/protocol/openid-connect/token",
            "clientId": "mcp-gateway", "clientSecretEnv": "CLIENT_SECRET",
            "audience": "backend",
            "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token",
            "timeoutMs": 2000
        }),
        json!({
            "provider": "okta",
            "tokenUrl": "https://dev-1.okta.com/oauth2/aus1/v1/token",
            "clientId": "0oa1", "clientSecretEnv": "CLIENT_SECRET",
            "clientAuthMethod": "client_secret_post",
            "audience": "api://backend", "scopes": ["read", "write"],
            "timeoutMs": 2000
        }),
        json!({
            "provider": "entra-obo", "tenantId": "contoso", "clientId": "app-1",
            "clientSecretEnv": "CLIENT_SECRET", "scopes": ["api://backend/.default"],
            "timeoutMs": 2000
        }),
        json!({
            "provider": "google-sts",
            "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/idp",
            "subjectTokenType": "id_token",
            "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
            "serviceAccountImpersonation": {
                "url": "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com:generateAccessToken",
                "lifetimeSeconds": 1800
            },
            "timeoutMs": 2000
        }),
    ]
}

/// What `*Env` variables hold for the config target: a client secret by
/// default, and keys or a certificate for the names that ask for one.
pub fn env(name: &str) -> Option<String> {
    match name {
        "UNSET" => None,
        "RSA_KEY" => Some(RSA_PEM.to_string()),
        "EC_KEY" => Some(ec_pem().to_string()),
        "CERT" => Some(cert_pem().to_string()),
        "EMPTY" => Some(String::new()),
        _ => Some("s3cr3t".to_string()),
    }
}

fn ec_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| es256().to_pem().unwrap_or_default())
}

fn cert_pem() -> &'static str {
    static PEM: OnceLock<String> = OnceLock::new();
    PEM.get_or_init(|| {
        // Not a real certificate: the filter only hashes the DER for x5t.
        let der: Vec<u8> = (0u8..=200).collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            STANDARD.encode(der)
        )
    })
}

pub fn parse_config(json: &str) -> Config {
    match plugin_config::parse_with_env(json.as_bytes(), &env) {
        Ok(c) => c,
        Err(e) => panic!("fixture config does not parse: {e}"),
    }
}

pub fn rsa() -> RS256KeyPair {
    match RS256KeyPair::from_pem(RSA_PEM) {
        Ok(k) => k.with_key_id(RSA_KID),
        Err(e) => panic!("fixture RSA key: {e}"),
    }
}

pub fn es256() -> ES256KeyPair {
    match ES256KeyPair::from_bytes(&[0x11; 32]) {
        Ok(k) => k.with_key_id(EC_KID),
        Err(e) => panic!("fixture EC key: {e}"),
    }
}

pub fn ed25519_raw() -> ed25519_compact::KeyPair {
    ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([0x42; 32]))
}

pub fn ed25519() -> Ed25519KeyPair {
    match Ed25519KeyPair::from_bytes(ed25519_raw().as_ref()) {
        Ok(k) => k.with_key_id(ED_KID),
        Err(e) => panic!("fixture Ed25519 key: {e}"),
    }
}

fn jwk(text: String, alg: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["alg"] = alg.into();
    v["use"] = "sig".into();
    v
}

/// The fixed JWKS document.
pub fn jwks_json() -> String {
    serde_json::json!({"keys": [
        jwk(rsa().public_key().to_jwk(), "RS256"),
        jwk(es256().public_key().to_jwk(), "ES256"),
        jwk(ed25519().public_key().to_jwk(), "EdDSA"),
    ]})
    .to_string()
}

pub fn keyset() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| match KeySet::parse(jwks_json().as_bytes()) {
        Ok((k, 0)) => k,
        Ok((_, skipped)) => panic!("fixture JWKS: {skipped} keys skipped"),
        Err(e) => panic!("fixture JWKS: {e}"),
    })
}

pub fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        Verifier::new(
            parse_config(&config_json())
                .oidc
                .as_ref()
                .expect("the fuzz config has oidc"),
        )
    })
}

/// One exchanger per entry of `exchange_sections`.
pub fn exchangers() -> &'static [Exchanger] {
    static EX: OnceLock<Vec<Exchanger>> = OnceLock::new();
    EX.get_or_init(|| {
        exchange_sections()
            .into_iter()
            .map(|te| {
                let cfg = serde_json::json!({
                    "oidc": {"issuer": ISSUER, "audience": AUDIENCE, "jwksUrl": "https://idp.example.com/jwks"},
                    "tokenExchange": te
                });
                let c = parse_config(&cfg.to_string());
                match c.token_exchange.as_ref().map(Exchanger::new) {
                    Some(Ok(e)) => e,
                    _ => panic!("fixture exchanger {te}"),
                }
            })
            .collect()
    })
}

fn signing_input(header: &[u8], payload: &[u8]) -> String {
    format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload))
}

/// `header.payload.signature`, signed with the fixed Ed25519 key whatever
/// the header says.
pub fn forge_ed25519(header: &[u8], payload: &[u8]) -> String {
    static KEY: OnceLock<ed25519_compact::KeyPair> = OnceLock::new();
    let key = KEY.get_or_init(ed25519_raw);
    let signed = signing_input(header, payload);
    let sig = key.sk.sign(signed.as_bytes(), None);
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// The same with the fixed RSA key, RSASSA-PKCS1-v1_5 with SHA-256 (RS256).
/// Raw RSA without blinding: a fuzzer has no timing to hide, and blinding
/// would make the input's run depend on a random source.
pub fn forge_rs256(header: &[u8], payload: &[u8]) -> String {
    static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    let key = KEY.get_or_init(|| match rsa::RsaPrivateKey::from_pkcs8_pem(RSA_PEM) {
        Ok(k) => k,
        Err(e) => panic!("fixture RSA key: {e}"),
    });
    let signed = signing_input(header, payload);
    let k = key.size();
    // EMSA-PKCS1-v1_5: 00 01 FF.. 00, then DigestInfo(SHA-256) and the hash.
    let mut em = vec![0x00, 0x01];
    em.resize(k - SHA256_DIGEST_INFO.len() - 32 - 1, 0xff);
    em.push(0x00);
    em.extend_from_slice(&SHA256_DIGEST_INFO);
    em.extend_from_slice(&Sha256::digest(signed.as_bytes()));
    let m = rsa::BigUint::from_bytes_be(&em);
    let s = match rsa::hazmat::rsa_decrypt::<NoRng>(None, key, &m) {
        Ok(s) => s.to_bytes_be(),
        Err(e) => panic!("RSA signing: {e}"),
    };
    let mut sig = vec![0u8; k - s.len()];
    sig.extend_from_slice(&s);
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// DER of DigestInfo's algorithm part for SHA-256 (RFC 8017 §9.2, note 1).
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
];

/// `rsa_decrypt` names a random source type even when given none.
struct NoRng;

impl rsa::rand_core::RngCore for NoRng {
    fn next_u32(&mut self) -> u32 {
        0
    }
    fn next_u64(&mut self) -> u64 {
        0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(0);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        dest.fill(0);
        Ok(())
    }
}

impl rsa::rand_core::CryptoRng for NoRng {}

/// `a \n b` as `(a, b)`; without a newline, `b` is empty.
pub fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// What must hold of any verdict: nothing expired is accepted, and for
/// RS256, where the filter checks signatures with its own RSA, jwt-simple's
/// RSA agrees on the signature wherever the filter's judged it.
pub fn check_verdict(token: &str, now: u64, verdict: &Result<Principal, Failure>) {
    // Whether the filter found the signature good (claims may still fail).
    let signature_good = match verdict {
        Ok(p) => {
            assert!(
                now <= p.exp.saturating_add(verifier().skew()),
                "accepted a token expired at {} at {now}",
                p.exp
            );
            true
        }
        Err(f) => {
            let _ = f.reject.description();
            // Not `Issuer`: another issuer's token is refused before any key
            // is tried, so that verdict says nothing of the signature.
            matches!(
                f.reject,
                Reject::Expired | Reject::NoExpiry | Reject::NotYetValid | Reject::Audience
            )
        }
    };
    let judged = signature_good || matches!(verdict, Err(f) if f.reject == Reject::BadSignature);
    if !judged || !Token::decode_metadata(token).is_ok_and(|m| m.algorithm() == "RS256") {
        return;
    }
    match jwt_simple_rs256(token) {
        Some(false) if signature_good => panic!("fast RSA accepted a signature jwt-simple refuses: {token}"),
        Some(true) if !signature_good => panic!("fast RSA refused a signature jwt-simple accepts: {token}"),
        _ => {}
    }
}

/// jwt-simple's verdict on an RS256 signature by the fixed key: `None` when
/// it stopped before the signature, or on the claims after it.
fn jwt_simple_rs256(token: &str) -> Option<bool> {
    static KEY: OnceLock<RS256PublicKey> = OnceLock::new();
    let key = KEY.get_or_init(|| rsa().public_key());
    let options = VerificationOptions {
        accept_future: true,
        time_tolerance: Some(Duration::from_secs(0)),
        artificial_time: Some(UnixTimeStamp::from_secs(0)),
        ..Default::default()
    };
    match key.verify_token::<serde_json::Value>(token, Some(options)) {
        Ok(_) => Some(true),
        Err(e) => match e.downcast_ref::<JWTError>() {
            Some(JWTError::InvalidSignature) => Some(false),
            _ => None,
        },
    }
}

/// The header and claims of a token the fixed verifier accepts.
pub fn good_header(alg: &str, kid: &str) -> String {
    serde_json::json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string()
}

pub fn good_claims() -> String {
    serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "azp": "mcp-client",
        "iat": NOW - 10, "nbf": NOW - 10, "exp": EXP,
        "scope": "mcp:tools mcp:resources"
    })
    .to_string()
}

/// The subject token the answer target exchanges (its parts are long enough
/// for the filter's "does the error description echo the token" check).
pub const SUBJECT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ";

/// The filter imports each JWK of a JWKS document for exactly the
/// algorithms jwt-simple's import takes it for (and its `alg` names), as
/// the filter did when it imported keys through jwt-simple.
pub fn check_jwk_import(doc: &[u8]) {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(doc) else {
        return;
    };
    let Some(keys) = doc.get("keys").and_then(serde_json::Value::as_array) else {
        return;
    };
    for jwk in keys {
        let one = serde_json::json!({ "keys": [jwk] }).to_string();
        let set = KeySet::parse(one.as_bytes()).map(|(s, _)| s).ok();
        let text = jwk.to_string();
        let declared = jwk.get("alg").and_then(serde_json::Value::as_str);
        for alg in Alg::ALL {
            let ours = set.as_ref().is_some_and(|s| s.candidates(alg, None).count() > 0);
            let theirs = declared.is_none_or(|d| Alg::from_name(d) == Some(alg)) && jwt_simple_imports(alg, &text);
            assert_eq!(ours, theirs, "{alg:?} key {text}");
        }
    }
}

fn jwt_simple_imports(alg: Alg, text: &str) -> bool {
    match alg {
        Alg::RS256 => RS256PublicKey::from_jwk(text).is_ok(),
        Alg::RS384 => RS384PublicKey::from_jwk(text).is_ok(),
        Alg::RS512 => RS512PublicKey::from_jwk(text).is_ok(),
        Alg::PS256 => PS256PublicKey::from_jwk(text).is_ok(),
        Alg::PS384 => PS384PublicKey::from_jwk(text).is_ok(),
        Alg::PS512 => PS512PublicKey::from_jwk(text).is_ok(),
        Alg::ES256 => ES256PublicKey::from_jwk(text).is_ok(),
        Alg::ES384 => ES384PublicKey::from_jwk(text).is_ok(),
        Alg::EdDSA => Ed25519PublicKey::from_jwk(text).is_ok(),
    }
}
