//! Cross App Access (draft-ietf-oauth-identity-assertion-authz-grant). Step
//! 1 is RFC 8693 at the enterprise IdP, asking for an Identity Assertion JWT
//! Authorization Grant (`requested_token_type` id-jag) whose `audience` is
//! the resource authorization server's issuer; step 2 presents it there as
//! an RFC 7523 JWT bearer grant (`assertionGrant`), with that server's own
//! client authentication. The draft is for confidential clients only, so
//! both steps must authenticate.

use super::kind::Provider;
use super::{short, Field};
use crate::error::ConfigError;
use crate::exchange::model::{ClientAuthMethod, TokenExchange, ID_JAG};
use crate::raw::RawTokenExchange;

pub fn defaults(raw: &mut RawTokenExchange, field: Field) -> Result<(), ConfigError> {
    raw.requested_token_type.get_or_insert_with(|| ID_JAG.to_string());
    if raw.assertion_grant.is_none() {
        return Err(Provider::IdJag.error(
            field,
            "assertionGrant",
            "requires assertionGrant: the resource authorization server's tokenUrl, and the \
             clientId and clientSecretEnv (or private_key_jwt keys) the filter has there",
        ));
    }
    Ok(())
}

pub fn check(te: &TokenExchange, field: Field) -> Result<(), ConfigError> {
    let p = Provider::IdJag;
    if te.client.method == ClientAuthMethod::None {
        return Err(p.error(
            field,
            "clientId",
            "requires client authentication at the IdP (the draft is for confidential clients): \
             set clientId and clientSecretEnv, or private_key_jwt",
        ));
    }
    if te.audiences.len() != 1 {
        return Err(p.error(
            field,
            "audience",
            "requires one audience: the resource authorization server's issuer, e.g. https://as.example.com/",
        ));
    }
    let subject = short(&te.subject_token_type);
    if !matches!(subject, "access_token" | "id_token") {
        return Err(p.error(
            field,
            "subjectTokenType",
            &format!("presents the caller's token: use access_token or id_token, got {subject}"),
        ));
    }
    if te.requested_token_type.as_deref() != Some(ID_JAG) {
        return Err(p.error(
            field,
            "requestedTokenType",
            "requests an ID-JAG (urn:ietf:params:oauth:token-type:id-jag): leave requestedTokenType out",
        ));
    }
    if te
        .assertion_grant
        .as_ref()
        .is_some_and(|g| g.client.method == ClientAuthMethod::None)
    {
        return Err(p.error(
            field,
            "assertionGrant.clientId",
            "requires client authentication at the resource authorization server: \
             set clientId and clientSecretEnv, or private_key_jwt",
        ));
    }
    Ok(())
}
