//! `private_key_jwt` client authentication (RFC 7523 §2.2, OIDC Core §9): a
//! short-lived JWT signed with the client's key, sent as `client_assertion`.
//! The key is parsed once, at configure time, so a key that does not fit
//! `clientAssertionAlg` fails the config instead of every exchange.

use jwt_simple::prelude::*;
use plugin_config::{AssertionAlg, ClientAssertion, ConfigError};

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How long an assertion is valid: short, since each is used once, and well
/// inside the 5 minutes IdPs allow.
pub const LIFETIME_SECONDS: u64 = 120;

enum Key {
    Rs256(RS256KeyPair),
    Ps256(PS256KeyPair),
    Es256(ES256KeyPair),
}

pub struct Signer {
    key: Key,
    client_id: String,
    audience: String,
}

impl Signer {
    /// Parses the PEM for its algorithm; `at` is the config section's path.
    pub fn new(a: &ClientAssertion, client_id: &str, at: &str) -> Result<Signer, ConfigError> {
        let pem = a.key_pem.expose();
        let unfit = |what: &str| {
            ConfigError::new(
                format!("{at}.clientAssertionKeyEnv"),
                format!(
                    "environment variable {} does not hold {what} (PKCS#8 or PKCS#1 PEM); \
                     check the key, or clientAssertionAlg",
                    a.key_env
                ),
            )
        };
        let mut meta = KeyMetadata::default();
        if let Some(x5t) = &a.x5t {
            // jwt-simple takes the thumbprint as 40 hex digits.
            meta = meta
                .with_certificate_sha1_thumbprint(hex_of_b64url(x5t).unwrap_or_default())
                .map_err(|_| unfit("a usable certificate thumbprint"))?;
        }
        let key = match a.alg {
            AssertionAlg::RS256 => {
                let mut k = RS256KeyPair::from_pem(pem).map_err(|_| unfit("an RSA private key"))?;
                if let Some(kid) = &a.kid {
                    k = k.with_key_id(kid);
                }
                k.attach_metadata(meta).map_err(|_| unfit("a usable key"))?;
                Key::Rs256(k)
            }
            AssertionAlg::PS256 => {
                let mut k = PS256KeyPair::from_pem(pem).map_err(|_| unfit("an RSA private key"))?;
                if let Some(kid) = &a.kid {
                    k = k.with_key_id(kid);
                }
                k.attach_metadata(meta).map_err(|_| unfit("a usable key"))?;
                Key::Ps256(k)
            }
            AssertionAlg::ES256 => {
                let mut k = ES256KeyPair::from_pem(pem).map_err(|_| unfit("a P-256 EC private key"))?;
                if let Some(kid) = &a.kid {
                    k = k.with_key_id(kid);
                }
                k.attach_metadata(meta).map_err(|_| unfit("a usable key"))?;
                Key::Es256(k)
            }
        };
        Ok(Signer {
            key,
            client_id: client_id.to_string(),
            audience: a.audience.clone(),
        })
    }

    /// A fresh assertion: `iss` = `sub` = the client id, `aud`, `jti`,
    /// `iat` now and `exp` `LIFETIME_SECONDS` later. `None` if signing failed.
    pub fn sign(&self, now_s: u64, jti: &str) -> Option<String> {
        let claims = JWTClaims {
            issued_at: Some(UnixTimeStamp::from_secs(now_s)),
            expires_at: Some(UnixTimeStamp::from_secs(now_s.saturating_add(LIFETIME_SECONDS))),
            invalid_before: Some(UnixTimeStamp::from_secs(now_s)),
            issuer: Some(self.client_id.clone()),
            subject: Some(self.client_id.clone()),
            audiences: Some(Audiences::AsString(self.audience.clone())),
            jwt_id: Some(jti.to_string()),
            nonce: None,
            custom: NoCustomClaims {},
        };
        match &self.key {
            Key::Rs256(k) => k.sign(claims),
            Key::Ps256(k) => k.sign(claims),
            Key::Es256(k) => k.sign(claims),
        }
        .ok()
    }
}

fn hex_of_b64url(s: &str) -> Option<String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
