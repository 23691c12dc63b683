//! Microsoft Entra on-behalf-of: the JWT bearer grant (RFC 7523) with
//! `requested_token_use=on_behalf_of`, the caller's token as `assertion`, and
//! the target named by `scope`. The answer has no `issued_token_type`. When
//! Conditional Access wants more from the user (MFA, a compliant device),
//! Entra answers `interaction_required` (or `invalid_grant`) with a `claims`
//! challenge, which the client must see to step up.

use super::answer::{token_response, Exchanged, Failure};
use super::JWT_BEARER;
use plugin_config::TokenExchange;
use url::form_urlencoded::Serializer;

/// Everything but `assertion` and client authentication.
pub fn form(c: &TokenExchange, form: &mut Serializer<String>) {
    form.append_pair("grant_type", JWT_BEARER);
    form.append_pair("requested_token_use", "on_behalf_of");
    form.append_pair("scope", &c.scopes.join(" "));
}

pub fn answer(status: u16, body: &[u8], subject_token: &str) -> Result<Exchanged, Failure> {
    token_response(status, body, subject_token, |code, claims| match code {
        "interaction_required" => Some(Failure::ClaimsChallenge(claims)),
        "invalid_grant" if claims.is_some() => Some(Failure::ClaimsChallenge(claims)),
        _ => None,
    })
}
