//! Token exchange: the requests we send to the IdP and the answers we accept
//! back, for every provider dialect.
//!
//! `rfc8693` is the request RFC 8693 defines (Okta, Keycloak and Google STS
//! speak it); `entra_obo` is Microsoft's on-behalf-of grant; `google_sts`
//! adds Google's optional second step, service-account impersonation. Each
//! owns its form, its answer parsing and its error mapping; this module
//! holds what they share: client authentication (`assertion` for
//! private_key_jwt), the failure table, and the checks every answer passes.
//!
//! Everything that does not depend on the caller's token is encoded once at
//! configure time; a request only appends the subject token (and a fresh
//! client assertion).

mod answer;
mod assertion;
mod entra_obo;
mod google_sts;
mod rfc8693;
pub mod singleflight;
pub mod token_cache;

pub use answer::{Exchanged, Failure, MAX_RESPONSE_BYTES};

use crate::host::CalloutResponse;
use answer::received;
use assertion::Signer;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use plugin_config::{ClientAuthMethod, ConfigError, Endpoint, Provider, TokenExchange};
use sha2::{Digest, Sha256};
use url::form_urlencoded;

/// Which callout of an exchange an answer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The token endpoint.
    Token,
    /// google-sts only: IAM Credentials' generateAccessToken.
    Impersonate,
}

/// One callout to make.
pub struct Call<'a> {
    pub step: Step,
    pub endpoint: &'a Endpoint,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Call<'_> {
    /// The headers as the host wants them.
    pub fn header_pairs(&self) -> Vec<(&str, &str)> {
        self.headers.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

/// What an answer leads to.
pub enum Next<'a> {
    Done(Exchanged),
    /// Another callout, in the same pause.
    Then(Call<'a>),
}

pub struct Exchanger {
    config: TokenExchange,
    /// `Basic …` for client_secret_basic.
    authorization: Option<String>,
    /// The form without the subject token and client assertion, encoded.
    form_prefix: String,
    signer: Option<Signer>,
    /// SHA-256 over everything that shapes the result but the subject token.
    params_digest: [u8; 32],
}

impl Exchanger {
    /// Fails only on a client assertion key that does not fit its algorithm.
    pub fn new(config: &TokenExchange) -> Result<Exchanger, ConfigError> {
        let secret = config.client_secret.as_ref().map(|s| s.expose()).unwrap_or_default();
        let id = config.client_id.as_deref().unwrap_or_default();
        let authorization = (config.auth_method == ClientAuthMethod::ClientSecretBasic).then(|| {
            // RFC 6749 §2.3.1: form-urlencode id and secret, then base64.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            format!("Basic {}", STANDARD.encode(format!("{}:{}", enc(id), enc(secret))))
        });
        let signer = config
            .assertion
            .as_ref()
            .map(|a| Signer::new(a, id, &config.at))
            .transpose()?;
        let mut form = form_urlencoded::Serializer::new(String::new());
        match config.provider {
            Provider::EntraObo => entra_obo::form(config, &mut form),
            _ => rfc8693::form(config, &mut form),
        }
        match config.auth_method {
            ClientAuthMethod::ClientSecretPost => {
                form.append_pair("client_id", id);
                form.append_pair("client_secret", secret);
            }
            ClientAuthMethod::PrivateKeyJwt => {
                form.append_pair("client_id", id);
                form.append_pair("client_assertion_type", assertion::ASSERTION_TYPE);
            }
            ClientAuthMethod::None if !id.is_empty() => {
                form.append_pair("client_id", id);
            }
            _ => {}
        }
        let form_prefix = form.finish();
        let mut h = Sha256::new();
        for part in [config.provider.name(), &config.token.url, id, &form_prefix] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        if let Some(i) = &config.impersonation {
            h.update(google_sts::impersonation_body(i).as_bytes());
            h.update(i.endpoint.url.as_bytes());
        }
        Ok(Exchanger {
            config: config.clone(),
            authorization,
            form_prefix,
            signer,
            params_digest: h.finalize().into(),
        })
    }

    pub fn config(&self) -> &TokenExchange {
        &self.config
    }

    /// Whether requests carry a signed client assertion (and so need a `jti`).
    pub fn signs(&self) -> bool {
        self.signer.is_some()
    }

    /// Where `Bearer <exchanged token>` goes: in place of the caller's token
    /// in Authorization, or in the configured header.
    pub fn forward_header(&self) -> &str {
        self.config.external_token_header.as_deref().unwrap_or("authorization")
    }

    /// What the exchange is for, for logs and the audit line: the
    /// audiences, else the resources, else the scopes (Entra names its
    /// target by scope).
    pub fn target_name(&self) -> String {
        let c = &self.config;
        [&c.audiences, &c.resources, &c.scopes]
            .into_iter()
            .find(|l| !l.is_empty())
            .map_or_else(|| "-".to_string(), |l| l.join(","))
    }

    /// SHA-256 over everything but the subject token that shapes the
    /// result: with the subject's SHA-256, the exchange cache's key.
    pub fn params_digest(&self) -> [u8; 32] {
        self.params_digest
    }

    /// The first callout for `subject_token`, at `now_ms`; `jti` makes a
    /// private_key_jwt assertion unique.
    pub fn request(&self, subject_token: &str, now_ms: u64, jti: &str) -> Result<Call<'_>, Failure> {
        let e = &self.config.token;
        let mut headers = vec![
            (":method", "POST".to_string()),
            (":path", e.path.clone()),
            (":authority", e.authority.clone()),
            (":scheme", e.scheme.clone()),
            ("content-type", "application/x-www-form-urlencoded".to_string()),
            ("accept", "application/json".to_string()),
        ];
        if let Some(a) = &self.authorization {
            headers.push(("authorization", a.clone()));
        }
        let mut tail = form_urlencoded::Serializer::new(String::new());
        let subject_param = match self.config.provider {
            Provider::EntraObo => "assertion",
            _ => "subject_token",
        };
        tail.append_pair(subject_param, subject_token);
        if let Some(s) = &self.signer {
            let assertion = s
                .sign(now_ms / 1000, jti)
                .ok_or_else(|| Failure::BadGateway("could not sign the client assertion".into()))?;
            tail.append_pair("client_assertion", &assertion);
        }
        let mut body = self.form_prefix.clone();
        body.push('&');
        body.push_str(&tail.finish());
        Ok(Call {
            step: Step::Token,
            endpoint: e,
            headers,
            body: body.into_bytes(),
        })
    }

    /// Checks an answer. `elapsed_ms` tells a timeout from other failures:
    /// proxies report both as no answer (or as their own 504).
    pub fn answer(
        &self,
        step: Step,
        resp: &CalloutResponse,
        elapsed_ms: u64,
        subject_token: &str,
    ) -> Result<Next<'_>, Failure> {
        let body = received(resp, elapsed_ms, self.config.timeout_ms).map_err(|f| f.at(step))?;
        let status = resp.status().unwrap_or_default();
        match step {
            Step::Impersonate => google_sts::impersonated(status, body).map(Next::Done),
            Step::Token => {
                let exchanged = match self.config.provider {
                    Provider::EntraObo => entra_obo::answer(status, body, subject_token),
                    _ => rfc8693::answer(&self.config, status, body, subject_token),
                }?;
                Ok(match &self.config.impersonation {
                    Some(i) => Next::Then(google_sts::impersonate(i, &exchanged.access_token)),
                    None => Next::Done(exchanged),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
