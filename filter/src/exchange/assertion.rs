//! `private_key_jwt` client authentication (RFC 7523 §2.2, OIDC Core §9): a
//! short-lived JWT signed with the client's key, sent as `client_assertion`.
//! The key is parsed once, at configure time, so a key that does not fit
//! `clientAssertionAlg` fails the config instead of every exchange.
//!
//! Signed with the libraries jwt-simple itself calls (`keys::signature` says
//! why not jwt-simple): the `rsa` crate for RS256 (RSASSA-PKCS1-v1_5) and
//! PS256 (RSASSA-PSS, a salt as long as the hash, RFC 7518 §3.5), `p256`
//! for ES256 (R ‖ S, §3.4). The keys pass jwt-simple's rules: RSA of 2048
//! to 4096 bits with e = 65537 whose every value (CRT ones included) agrees,
//! a P-256 key. The tests verify what this signs with jwt-simple.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use plugin_config::{AssertionAlg, ClientAssertion, ConfigError};
use rsa::pkcs1::der::pem;
use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer as _};
use sha2::Sha256;

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const RSA_KEY: &str = "an RSA private key (PKCS#8 or PKCS#1 PEM)";
/// How long an assertion is valid: short, since each is used once, and well
/// inside the 5 minutes IdPs allow.
pub const LIFETIME_SECONDS: u64 = 120;

enum Key {
    Rs256(rsa::pkcs1v15::SigningKey<Sha256>),
    /// Its salt is as long as the hash (the crate's default).
    Ps256(rsa::pss::SigningKey<Sha256>),
    Es256(p256::ecdsa::SigningKey),
}

pub struct Signer {
    key: Key,
    /// The JOSE header, base64url: the same for every assertion.
    header: String,
    client_id: String,
    audience: String,
}

impl Signer {
    /// Parses the PEM for its algorithm; `at` is the config section's path.
    pub fn new(a: &ClientAssertion, client_id: &str, at: &str) -> Result<Signer, ConfigError> {
        let unfit = |what: &str| {
            ConfigError::new(
                format!("{at}.clientAssertionKeyEnv"),
                format!(
                    "environment variable {} does not hold {what}; \
                     check the key, or clientAssertionAlg",
                    a.key_env
                ),
            )
        };
        let (name, key) = match a.alg {
            AssertionAlg::RS256 => {
                let k = rsa_key(a.key_pem.expose()).ok_or_else(|| unfit(RSA_KEY))?;
                ("RS256", Key::Rs256(rsa::pkcs1v15::SigningKey::new(k)))
            }
            AssertionAlg::PS256 => {
                let k = rsa_key(a.key_pem.expose()).ok_or_else(|| unfit(RSA_KEY))?;
                ("PS256", Key::Ps256(rsa::pss::SigningKey::new(k)))
            }
            AssertionAlg::ES256 => {
                let k =
                    ec_key(a.key_pem.expose()).ok_or_else(|| unfit("a P-256 EC private key (PKCS#8 or SEC1 PEM)"))?;
                ("ES256", Key::Es256(k))
            }
        };
        let mut header = serde_json::json!({"alg": name, "typ": "JWT"});
        if let Some(kid) = &a.kid {
            header["kid"] = kid.as_str().into();
        }
        if let Some(x5t) = &a.x5t {
            header["x5t"] = x5t.as_str().into();
        }
        Ok(Signer {
            key,
            header: URL_SAFE_NO_PAD.encode(header.to_string()),
            client_id: client_id.to_string(),
            audience: a.audience.clone(),
        })
    }

    /// A fresh assertion: `iss` = `sub` = the client id, `aud`, `jti`,
    /// `iat` and `nbf` now and `exp` `LIFETIME_SECONDS` later. `None` if
    /// signing failed.
    pub fn sign(&self, now_s: u64, jti: &str) -> Option<String> {
        let claims = serde_json::json!({
            "iat": now_s,
            "exp": now_s.saturating_add(LIFETIME_SECONDS),
            "nbf": now_s,
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.audience,
            "jti": jti,
        });
        let input = format!("{}.{}", self.header, URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = match &self.key {
            Key::Rs256(k) => k
                .try_sign_with_rng(&mut getrandom::SysRng, input.as_bytes())
                .ok()?
                .to_vec(),
            Key::Ps256(k) => k
                .try_sign_with_rng(&mut getrandom::SysRng, input.as_bytes())
                .ok()?
                .to_vec(),
            Key::Es256(k) => {
                let s: p256::ecdsa::Signature = k.try_sign(input.as_bytes()).ok()?;
                s.to_bytes().to_vec()
            }
        };
        Some(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// An RSA private key from PKCS#8 (`PRIVATE KEY`, rsaEncryption) or PKCS#1
/// (`RSA PRIVATE KEY`) PEM, if it meets jwt-simple's rules.
fn rsa_key(text: &str) -> Option<rsa::PrivateKey> {
    use rsa::pkcs1::der::Decode;
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    let (label, der) = pem::decode_vec(text.trim().as_bytes()).ok()?;
    let pkcs1 = match label {
        "PRIVATE KEY" => {
            let info = rsa::pkcs8::PrivateKeyInfoRef::from_der(&der).ok()?;
            (info.algorithm.oid == rsa::pkcs1::ALGORITHM_OID).then_some(())?;
            info.private_key.as_bytes().to_vec()
        }
        "RSA PRIVATE KEY" => der,
        _ => return None,
    };
    let parts = rsa::pkcs1::RsaPrivateKeyRef::from_der(&pkcs1).ok()?;
    let key = rsa::PrivateKey::try_from(parts.clone()).ok()?;
    let bytes = |v: Option<&rsa::BoxedUint>| v.map(|v| v.to_be_bytes_trimmed_vartime());
    let given = |v: rsa::pkcs1::UintRef| Some(Box::from(v.as_bytes()));
    let sound = (2048..=4096).contains(&key.n().bit_width())
        && key.e() == &rsa::BoxedUint::from(65_537u32)
        && bytes(key.dp()) == given(parts.exponent1)
        && bytes(key.dq()) == given(parts.exponent2)
        && key.crt_coefficient().map(|c| c.to_be_bytes_trimmed_vartime()) == given(parts.coefficient);
    sound.then_some(key)
}

/// A P-256 private key from PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE
/// KEY`) PEM.
fn ec_key(text: &str) -> Option<p256::ecdsa::SigningKey> {
    use p256::pkcs8::DecodePrivateKey;
    let (label, der) = pem::decode_vec(text.trim().as_bytes()).ok()?;
    match label {
        "PRIVATE KEY" => p256::ecdsa::SigningKey::from_pkcs8_der(&der).ok(),
        "EC PRIVATE KEY" => p256::SecretKey::from_sec1_der(&der).ok().map(Into::into),
        _ => None,
    }
}
