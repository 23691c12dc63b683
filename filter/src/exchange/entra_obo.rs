//! Microsoft Entra on-behalf-of: the JWT bearer grant (RFC 7523) with
//! `requested_token_use=on_behalf_of`, the caller's token as `assertion`, and
//! the target named by `scope`. The answer has no `issued_token_type`. When
//! Conditional Access wants more from the user (MFA, a compliant device),
//! Entra answers `interaction_required` (or `invalid_grant`) with a `claims`
//! challenge, which the client must see to step up.

use super::answer::{access_token, bearer_type, jwt_exp, oauth_error, seconds, Exchanged, Failure};
use plugin_config::TokenExchange;
use serde::Deserialize;
use url::form_urlencoded::Serializer;

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
}

/// Everything but `assertion` and client authentication.
pub fn form(c: &TokenExchange, form: &mut Serializer<String>) {
    form.append_pair("grant_type", GRANT_TYPE);
    form.append_pair("requested_token_use", "on_behalf_of");
    form.append_pair("scope", &c.scopes.join(" "));
}

pub fn answer(status: u16, body: &[u8], subject_token: &str) -> Result<Exchanged, Failure> {
    if !(200..300).contains(&status) {
        return Err(oauth_error(status, body, subject_token, |code, claims| match code {
            "interaction_required" => Some(Failure::ClaimsChallenge(claims)),
            "invalid_grant" if claims.is_some() => Some(Failure::ClaimsChallenge(claims)),
            _ => None,
        }));
    }
    let ok: TokenResponse =
        serde_json::from_slice(body).map_err(|_| Failure::BadGateway("response is not JSON".into()))?;
    let access_token = access_token(ok.access_token)?;
    bearer_type(ok.token_type.as_deref())?;
    Ok(Exchanged {
        jwt_exp: jwt_exp(&access_token),
        expires_in: seconds(ok.expires_in)?,
        expires_at: None,
        access_token,
    })
}
