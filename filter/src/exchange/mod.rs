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

pub mod singleflight;
pub mod token_cache;

mod assertion;
mod entra_obo;
mod google_sts;
mod rfc8693;

use crate::host::CalloutResponse;
use assertion::Signer;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use plugin_config::{ClientAuthMethod, ConfigError, Endpoint, Provider, TokenExchange};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use url::form_urlencoded;

/// Largest token-endpoint answer accepted.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A successful exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchanged {
    pub access_token: String,
    /// `expires_in`, seconds.
    pub expires_in: Option<u64>,
    /// An absolute expiry, seconds since the epoch (Google's `expireTime`).
    pub expires_at: Option<u64>,
    /// `exp` of the issued token, when it is a JWT (read, not verified: it
    /// only bounds how long we cache it).
    pub jwt_exp: Option<u64>,
}

/// Why an exchange failed, as the caller will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// `invalid_grant`: the IdP refused the subject token → 401.
    InvalidGrant,
    /// `invalid_scope` / `invalid_target` → 403.
    InsufficientScope,
    /// Entra wants the user to satisfy more (MFA, a policy): 401 with
    /// `error="insufficient_claims"` and the claims to ask for, if any.
    ClaimsChallenge(Option<String>),
    /// Our configuration or the IdP is wrong (bad client, bad request,
    /// malformed or oversize answer) → 502. The reason is for the log.
    BadGateway(String),
    /// IdP 5xx, connection failure, no answer → 503.
    Unavailable(String),
    /// No answer within `timeoutMs` → 504.
    Timeout,
}

impl Failure {
    /// Short label for the audit log.
    pub fn outcome(&self) -> String {
        match self {
            Failure::InvalidGrant => "invalid_grant".into(),
            Failure::InsufficientScope => "insufficient_scope".into(),
            Failure::ClaimsChallenge(_) => "insufficient_claims".into(),
            Failure::BadGateway(why) => format!("bad_gateway ({why})"),
            Failure::Unavailable(why) => format!("unavailable ({why})"),
            Failure::Timeout => "timeout".into(),
        }
    }

    /// The same failure, its reason prefixed with the step it happened in.
    fn at(self, step: Step) -> Failure {
        match (step, self) {
            (Step::Token, f) => f,
            (Step::Impersonate, Failure::BadGateway(why)) => Failure::BadGateway(format!("impersonation: {why}")),
            (Step::Impersonate, Failure::Unavailable(why)) => Failure::Unavailable(format!("impersonation: {why}")),
            (Step::Impersonate, f) => f,
        }
    }
}

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

#[derive(Deserialize)]
struct ErrorResponse {
    error: Option<String>,
    error_description: Option<String>,
    /// Entra's claims challenge.
    claims: Option<String>,
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

/// The body of an answer that arrived in time, whole, and not as a 5xx.
fn received(resp: &CalloutResponse, elapsed_ms: u64, timeout_ms: u64) -> Result<&[u8], Failure> {
    let timed_out = elapsed_ms.saturating_add(50) >= timeout_ms;
    let Some(status) = resp.status() else {
        return Err(if timed_out {
            Failure::Timeout
        } else {
            Failure::Unavailable("no response: connection failed or reset".into())
        });
    };
    if status == 504 && timed_out {
        return Err(Failure::Timeout);
    }
    if status >= 500 {
        return Err(Failure::Unavailable(format!("HTTP {status}")));
    }
    if resp.truncated || resp.body.len() > MAX_RESPONSE_BYTES {
        return Err(Failure::BadGateway(format!(
            "response larger than {MAX_RESPONSE_BYTES} bytes"
        )));
    }
    Ok(&resp.body)
}

/// An OAuth error answer (RFC 6749 §5.2), logged and mapped by `map`.
fn oauth_error(
    status: u16,
    body: &[u8],
    subject_token: &str,
    map: impl Fn(&str, Option<String>) -> Option<Failure>,
) -> Failure {
    let Ok(err) = serde_json::from_slice::<ErrorResponse>(body) else {
        return Failure::BadGateway(format!("HTTP {status} without a JSON error"));
    };
    let code = err.error.unwrap_or_default();
    let description = safe_description(err.error_description.as_deref(), subject_token);
    log::info!("token endpoint answered HTTP {status} error={code:?} description={description:?}");
    map(&code, err.claims).unwrap_or_else(|| match code.as_str() {
        "invalid_grant" => Failure::InvalidGrant,
        "invalid_scope" | "invalid_target" => Failure::InsufficientScope,
        _ => Failure::BadGateway(format!("HTTP {status} {code}")),
    })
}

/// An access token we can put in a header.
fn access_token(token: Option<String>) -> Result<String, Failure> {
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Failure::BadGateway("no access_token".into()))?;
    if token.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(Failure::BadGateway("access_token is not a header-safe string".into()));
    }
    Ok(token)
}

/// `token_type` must say the token is a bearer token (RFC 8693 allows N_A).
fn bearer_type(token_type: Option<&str>) -> Result<(), Failure> {
    match token_type {
        Some(t) if t.eq_ignore_ascii_case("bearer") || t == "N_A" => Ok(()),
        other => Err(Failure::BadGateway(format!(
            "token_type {other:?} is not Bearer or N_A"
        ))),
    }
}

/// `expires_in` as a number or a numeric string.
/// `expires_in`: absent, or a positive whole number of seconds (as a
/// number or a numeric string). Anything else (0, negative, fractional,
/// not a number) is a malformed answer: caching it would serve a token the
/// IdP says is already dead for the caller token's whole lifetime.
fn seconds(v: Option<serde_json::Value>) -> Result<Option<u64>, Failure> {
    let n = match v {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        Some(_) => None,
    };
    match n {
        Some(n) if n > 0 => Ok(Some(n)),
        _ => Err(Failure::BadGateway("expires_in is not a positive whole number".into())),
    }
}

/// The IdP's error description, for our log only, and only if it cannot be
/// echoing the token.
fn safe_description(d: Option<&str>, subject_token: &str) -> String {
    let Some(d) = d else {
        return String::new();
    };
    let echoes = subject_token
        .split('.')
        .any(|part| part.len() >= 16 && d.contains(part));
    if echoes || d.contains("eyJ") {
        return "(withheld: it may contain a token)".into();
    }
    d.chars().take(200).collect()
}

/// `exp` from a JWT's payload, unverified.
fn jwt_exp(token: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Exp {
        exp: Option<u64>,
    }
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Exp>(&bytes).ok()?.exp
}

#[cfg(test)]
mod tests;
