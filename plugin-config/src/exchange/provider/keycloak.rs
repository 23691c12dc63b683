//! Keycloak 26.2+ standard token exchange (V2): a confidential client
//! exchanges an access token for one whose audience is one or more client
//! ids. V2 has no `resource`, and takes only access tokens as subjects.

use super::kind::Provider;
use super::{short, Field};
use crate::error::ConfigError;
use crate::exchange::model::{ClientAuthMethod, TokenExchange};

pub fn check(te: &TokenExchange, field: Field) -> Result<(), ConfigError> {
    let p = Provider::Keycloak;
    if te.client.method == ClientAuthMethod::None {
        return Err(p.error(
            field,
            "clientId",
            "requires a confidential client: set clientId and clientSecretEnv, or private_key_jwt",
        ));
    }
    if !te.resources.is_empty() {
        return Err(p.error(
            field,
            "resource",
            "token exchange (V2) does not support resource; name the target client ids in audience",
        ));
    }
    if short(&te.subject_token_type) != "access_token" {
        return Err(p.error(
            field,
            "subjectTokenType",
            &format!(
                "(V2) exchanges access tokens only: use access_token, got {}",
                short(&te.subject_token_type)
            ),
        ));
    }
    let requested = te.requested_token_type.as_deref().map(short).unwrap_or_default();
    if !["access_token", "refresh_token", "id_token"].contains(&requested) {
        return Err(p.error(
            field,
            "requestedTokenType",
            &format!("issues access_token, refresh_token or id_token, got {requested}"),
        ));
    }
    Ok(())
}
