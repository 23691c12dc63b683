//! Microsoft Entra on-behalf-of: not RFC 8693 but the JWT bearer grant with
//! `requested_token_use=on_behalf_of`. The target is named by `scope`
//! (`api://backend/.default`); there is no audience, resource or token type.
//! The client authenticates with a secret in the body or a certificate
//! (private_key_jwt, whose assertion Entra wants with an `x5t`).

use super::kind::Provider;
use super::Field;
use crate::error::ConfigError;
use crate::exchange::model::{ClientAuthMethod, TokenExchange};
use crate::raw::RawTokenExchange;

const LOGIN: &str = "https://login.microsoftonline.com";

pub fn defaults(raw: &mut RawTokenExchange, field: Field) -> Result<(), ConfigError> {
    let p = Provider::EntraObo;
    for (key, set, why) in [
        (
            "audience",
            raw.audience.is_some(),
            "name the target in scopes, e.g. api://backend/.default",
        ),
        (
            "resource",
            raw.resource.is_some(),
            "name the target in scopes, e.g. api://backend/.default",
        ),
        (
            "subjectTokenType",
            raw.subject_token_type.is_some(),
            "the caller's token is always the assertion",
        ),
        (
            "requestedTokenType",
            raw.requested_token_type.is_some(),
            "Entra returns an access token",
        ),
    ] {
        if set {
            return Err(p.error(field, key, &format!("does not take {key} ({why}); remove it")));
        }
    }
    match (&raw.tenant_id, &raw.token_url) {
        (Some(_), Some(_)) => Err(p.error(field, "tenantId", "takes tenantId or tokenUrl, not both; remove one")),
        (Some(t), None) => {
            let ok = !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !ok {
                return Err(p.error(
                    field,
                    "tenantId",
                    &format!("needs a tenant id (a GUID) or domain, got {t:?}"),
                ));
            }
            raw.token_url = Some(format!("{LOGIN}/{t}/oauth2/v2.0/token"));
            Ok(())
        }
        (None, Some(_)) => Ok(()),
        (None, None) => Err(p.error(
            field,
            "tenantId",
            "requires tenantId (or a full tokenUrl, https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token)",
        )),
    }
}

pub fn check(te: &TokenExchange, field: Field) -> Result<(), ConfigError> {
    let p = Provider::EntraObo;
    match te.client.method {
        ClientAuthMethod::ClientSecretPost => {}
        ClientAuthMethod::PrivateKeyJwt => {
            if te.client.assertion.as_ref().is_some_and(|a| a.x5t.is_none()) {
                return Err(p.error(
                    field,
                    "clientAssertionCertEnv",
                    "certificate credentials need the certificate's x5t: name the environment variable \
                     holding its PEM",
                ));
            }
        }
        _ => {
            return Err(p.error(
                field,
                "clientAuthMethod",
                "authenticates with client_secret_post (a secret, the default) or private_key_jwt (a certificate)",
            ))
        }
    }
    if te.scopes.is_empty() {
        return Err(p.error(
            field,
            "scopes",
            "requires the target's scope, e.g. [\"api://backend/.default\"]",
        ));
    }
    Ok(())
}
