//! OAuth 2.0 Token Exchange (RFC 8693), as Okta, Keycloak and Google STS
//! speak it: the form of §2.1 and the answer of §2.2. Lists of audiences
//! and resources are sent as repeated parameters; Google STS also takes
//! `options`.

use super::answer::{access_token, bearer_type, jwt_exp, oauth_error, seconds, Exchanged, Failure};
use plugin_config::TokenExchange;
use serde::Deserialize;
use url::form_urlencoded::Serializer;

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    issued_token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
}

/// Everything but `subject_token` and client authentication.
pub fn form(c: &TokenExchange, form: &mut Serializer<String>) {
    form.append_pair("grant_type", GRANT_TYPE);
    form.append_pair("subject_token_type", &c.subject_token_type);
    if let Some(t) = &c.requested_token_type {
        form.append_pair("requested_token_type", t);
    }
    for a in &c.audiences {
        form.append_pair("audience", a);
    }
    if !c.scopes.is_empty() {
        form.append_pair("scope", &c.scopes.join(" "));
    }
    for r in &c.resources {
        form.append_pair("resource", r);
    }
    if let Some(o) = &c.options {
        form.append_pair("options", o);
    }
}

/// §2.2.1: a Bearer (or N_A) `access_token`, and `issued_token_type`, which
/// must be the type we asked for.
pub fn answer(c: &TokenExchange, status: u16, body: &[u8], subject_token: &str) -> Result<Exchanged, Failure> {
    if !(200..300).contains(&status) {
        return Err(oauth_error(status, body, subject_token, |_, _| None));
    }
    let ok: TokenResponse =
        serde_json::from_slice(body).map_err(|_| Failure::BadGateway("response is not JSON".into()))?;
    let access_token = access_token(ok.access_token)?;
    bearer_type(ok.token_type.as_deref())?;
    let Some(issued) = ok.issued_token_type else {
        return Err(Failure::BadGateway("no issued_token_type".into()));
    };
    if let Some(want) = &c.requested_token_type {
        if &issued != want {
            return Err(Failure::BadGateway(format!(
                "issued_token_type {issued:?} is not the one requested"
            )));
        }
    }
    Ok(Exchanged {
        jwt_exp: jwt_exp(&access_token),
        expires_in: seconds(ok.expires_in)?,
        expires_at: None,
        access_token,
    })
}
