//! Client authentication at a token endpoint (RFC 6749 §2.3), prepared
//! once per client: the `Basic` header for client_secret_basic, the form
//! fields that never change, and the signer for private_key_jwt. Every
//! callout to a token endpoint goes through here: the exchange, the
//! actor's client credentials grant, id-jag's assertion grant, and
//! introspection (RFC 7662 §2.1 asks the same client authentication).

use super::answer::Failure;
use super::assertion::{Signer, ASSERTION_TYPE};
use super::{post_headers, Call, Step};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use plugin_config::{Client, ClientAuthMethod, ConfigError, Endpoint};
use url::form_urlencoded::{byte_serialize, Serializer};

/// A callout's headers.
pub type Headers = Vec<(&'static str, String)>;

/// What makes each signed client assertion unique: the time it is made at
/// and a random `jti`.
pub struct Stamp {
    pub now_ms: u64,
    pub jti: String,
}

pub struct ClientAuth {
    id: String,
    /// `Basic …` for client_secret_basic.
    authorization: Option<String>,
    /// `client_id` (and `client_secret`, `client_assertion_type`), encoded.
    fields: String,
    signer: Option<Signer>,
}

impl ClientAuth {
    /// `at` is where the client is configured, for a key that does not fit.
    pub fn new(c: &Client, at: &str) -> Result<ClientAuth, ConfigError> {
        let secret = c.secret.as_ref().map(|s| s.expose()).unwrap_or_default();
        let id = c.id.as_deref().unwrap_or_default();
        let authorization = (c.method == ClientAuthMethod::ClientSecretBasic).then(|| {
            // RFC 6749 §2.3.1: form-urlencode id and secret, then base64.
            let enc = |s: &str| byte_serialize(s.as_bytes()).collect::<String>();
            format!("Basic {}", STANDARD.encode(format!("{}:{}", enc(id), enc(secret))))
        });
        let signer = c.assertion.as_ref().map(|a| Signer::new(a, id, at)).transpose()?;
        let mut form = Serializer::new(String::new());
        match c.method {
            ClientAuthMethod::ClientSecretPost => {
                form.append_pair("client_id", id);
                form.append_pair("client_secret", secret);
            }
            ClientAuthMethod::PrivateKeyJwt => {
                form.append_pair("client_id", id);
                form.append_pair("client_assertion_type", ASSERTION_TYPE);
            }
            ClientAuthMethod::None if !id.is_empty() => {
                form.append_pair("client_id", id);
            }
            _ => {}
        }
        Ok(ClientAuth {
            id: id.to_string(),
            authorization,
            fields: form.finish(),
            signer,
        })
    }

    /// Whether each request carries a signed assertion (and so needs a `Stamp`).
    pub fn signs(&self) -> bool {
        self.signer.is_some()
    }

    /// Who the client is and how it authenticates, for cache keys.
    pub fn key_part(&self) -> String {
        format!("{}|{}", self.id, self.fields)
    }

    /// A form POST of `parts` (encoded forms, joined with `&`) to `endpoint`,
    /// authenticated as this client.
    pub fn post<'a>(
        &self,
        step: Step,
        endpoint: &'a Endpoint,
        parts: &[&str],
        stamp: &Stamp,
    ) -> Result<Call<'a>, Failure> {
        let (headers, body) = self.form_post(endpoint, parts, stamp)?;
        Ok(Call {
            step,
            endpoint,
            headers,
            body,
        })
    }

    /// The headers and body of a form POST of `parts` to `endpoint`,
    /// authenticated as this client: what every OAuth endpoint the filter
    /// calls takes (token, introspection).
    pub fn form_post(&self, endpoint: &Endpoint, parts: &[&str], stamp: &Stamp) -> Result<(Headers, Vec<u8>), Failure> {
        let mut headers = post_headers(endpoint, "application/x-www-form-urlencoded");
        if let Some(a) = &self.authorization {
            headers.push(("authorization", a.clone()));
        }
        let assertion = match &self.signer {
            None => String::new(),
            Some(s) => {
                let signed = s
                    .sign(stamp.now_ms / 1000, &stamp.jti)
                    .ok_or_else(|| Failure::BadGateway("could not sign the client assertion".into()))?;
                Serializer::new(String::new())
                    .append_pair("client_assertion", &signed)
                    .finish()
            }
        };
        let all = [parts, &[self.fields.as_str(), assertion.as_str()]].concat();
        let body = all.into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>().join("&");
        Ok((headers, body.into_bytes()))
    }
}
