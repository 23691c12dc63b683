//! Okta: RFC 8693 between two custom authorization servers. The client must
//! authenticate, and Okta's token exchange wants the target authorization
//! server's audience and the scopes to grant, for an access token.

use super::kind::Provider;
use super::{short, Field};
use crate::error::ConfigError;
use crate::exchange::model::{ClientAuthMethod, TokenExchange};

pub fn check(te: &TokenExchange, field: Field) -> Result<(), ConfigError> {
    let p = Provider::Okta;
    if te.client.method == ClientAuthMethod::None {
        return Err(p.error(
            field,
            "clientId",
            "requires client authentication: set clientId and clientSecretEnv (client_secret_basic), \
             or private_key_jwt",
        ));
    }
    if te.audiences.is_empty() {
        return Err(p.error(
            field,
            "audience",
            "requires the backend authorization server's audience, e.g. api://backend",
        ));
    }
    if te.scopes.is_empty() {
        return Err(p.error(field, "scopes", "requires the scopes to grant, e.g. [\"backend:read\"]"));
    }
    if short(&te.subject_token_type) != "access_token" {
        return Err(p.error(
            field,
            "subjectTokenType",
            &format!(
                "exchanges access tokens: use access_token, got {}",
                short(&te.subject_token_type)
            ),
        ));
    }
    Ok(())
}
