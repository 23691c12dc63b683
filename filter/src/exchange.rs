//! RFC 8693 token exchange: the request we send to the token endpoint and the
//! answer we accept back.
//!
//! Everything that does not depend on the caller's token (client
//! authentication, audience, scopes, token types, resource) is encoded once at
//! configure time; a request only appends `subject_token`.

use crate::host::CalloutResponse;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use plugin_config::{ClientAuthMethod, TokenExchange};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use url::form_urlencoded;

/// Largest token-endpoint answer accepted.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// A successful exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchanged {
    pub access_token: String,
    /// `expires_in`, seconds.
    pub expires_in: Option<u64>,
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
            Failure::BadGateway(why) => format!("bad_gateway ({why})"),
            Failure::Unavailable(why) => format!("unavailable ({why})"),
            Failure::Timeout => "timeout".into(),
        }
    }
}

pub struct Exchanger {
    config: TokenExchange,
    /// `Basic …` for client_secret_basic.
    authorization: Option<String>,
    /// The form without `subject_token`, already encoded.
    form_prefix: String,
    /// SHA-256 over everything that shapes the result but the subject token.
    params_digest: [u8; 32],
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    issued_token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: Option<String>,
    error_description: Option<String>,
}

impl Exchanger {
    pub fn new(config: &TokenExchange) -> Exchanger {
        let secret = config.client_secret.as_ref().map(|s| s.expose()).unwrap_or_default();
        let id = config.client_id.as_deref().unwrap_or_default();
        let authorization = (config.auth_method == ClientAuthMethod::ClientSecretBasic).then(|| {
            // RFC 6749 §2.3.1: form-urlencode id and secret, then base64.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            format!("Basic {}", STANDARD.encode(format!("{}:{}", enc(id), enc(secret))))
        });
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", GRANT_TYPE);
        form.append_pair("subject_token_type", &config.subject_token_type);
        if let Some(t) = &config.requested_token_type {
            form.append_pair("requested_token_type", t);
        }
        if let Some(a) = &config.audience {
            form.append_pair("audience", a);
        }
        if !config.scopes.is_empty() {
            form.append_pair("scope", &config.scopes.join(" "));
        }
        if let Some(r) = &config.resource {
            form.append_pair("resource", r);
        }
        match config.auth_method {
            ClientAuthMethod::ClientSecretPost => {
                form.append_pair("client_id", id);
                form.append_pair("client_secret", secret);
            }
            ClientAuthMethod::None if !id.is_empty() => {
                form.append_pair("client_id", id);
            }
            _ => {}
        }
        let form_prefix = form.finish();
        let mut h = Sha256::new();
        h.update(config.token.url.as_bytes());
        h.update([0]);
        h.update(id.as_bytes());
        h.update([0]);
        h.update(form_prefix.as_bytes());
        Exchanger {
            config: config.clone(),
            authorization,
            form_prefix,
            params_digest: h.finalize().into(),
        }
    }

    pub fn config(&self) -> &TokenExchange {
        &self.config
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

    /// Headers and body of the exchange request for `subject_token`.
    pub fn request(&self, subject_token: &str) -> (Vec<(&str, &str)>, Vec<u8>) {
        let e = &self.config.token;
        let mut headers = vec![
            (":method", "POST"),
            (":path", e.path.as_str()),
            (":authority", e.authority.as_str()),
            (":scheme", e.scheme.as_str()),
            ("content-type", "application/x-www-form-urlencoded"),
            ("accept", "application/json"),
        ];
        if let Some(a) = &self.authorization {
            headers.push(("authorization", a.as_str()));
        }
        let mut body = self.form_prefix.clone();
        let mut tail = form_urlencoded::Serializer::new(String::new());
        tail.append_pair("subject_token", subject_token);
        body.push('&');
        body.push_str(&tail.finish());
        (headers, body.into_bytes())
    }

    /// Checks the token endpoint's answer. `elapsed_ms` tells a timeout from
    /// other failures: proxies report both as no answer (or as their own 504).
    pub fn parse(&self, resp: &CalloutResponse, elapsed_ms: u64, subject_token: &str) -> Result<Exchanged, Failure> {
        let timed_out = elapsed_ms.saturating_add(50) >= self.config.timeout_ms;
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
        if !(200..300).contains(&status) {
            let err: ErrorResponse = serde_json::from_slice(&resp.body)
                .map_err(|_| Failure::BadGateway(format!("HTTP {status} without a JSON error")))?;
            let code = err.error.unwrap_or_default();
            let description = safe_description(err.error_description.as_deref(), subject_token);
            log::info!("token endpoint answered HTTP {status} error={code:?} description={description:?}");
            return Err(match code.as_str() {
                "invalid_grant" => Failure::InvalidGrant,
                "invalid_scope" | "invalid_target" => Failure::InsufficientScope,
                _ => Failure::BadGateway(format!("HTTP {status} {code}")),
            });
        }
        let ok: TokenResponse =
            serde_json::from_slice(&resp.body).map_err(|_| Failure::BadGateway("response is not JSON".into()))?;
        let access_token = ok
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Failure::BadGateway("no access_token".into()))?;
        if access_token.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
            return Err(Failure::BadGateway("access_token is not a header-safe string".into()));
        }
        match ok.token_type.as_deref() {
            Some(t) if t.eq_ignore_ascii_case("bearer") || t == "N_A" => {}
            other => {
                return Err(Failure::BadGateway(format!(
                    "token_type {other:?} is not Bearer or N_A"
                )))
            }
        }
        let Some(issued) = ok.issued_token_type else {
            return Err(Failure::BadGateway("no issued_token_type".into()));
        };
        if let Some(want) = &self.config.requested_token_type {
            if &issued != want {
                return Err(Failure::BadGateway(format!(
                    "issued_token_type {issued:?} is not the one requested"
                )));
            }
        }
        let expires_in = match ok.expires_in {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            Some(_) => None,
        };
        let jwt_exp = jwt_exp(&access_token);
        Ok(Exchanged {
            access_token,
            expires_in,
            jwt_exp,
        })
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
