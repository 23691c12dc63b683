//! `tokenExchange.actor`: who acts for the user, sent as `actor_token` with
//! `actor_token_type` (RFC 8693 §2.1). Either the filter's own token, got
//! with a client credentials grant at the section's token endpoint, or a
//! token from the environment.

use super::client_auth::from_env;
use super::model::{Actor, Client, ClientAuthMethod, Secret};
use super::token_type;
use crate::error::ConfigError;
use crate::field::scope_list;
use crate::raw::RawActor;

/// The actor's token type when `tokenType` is left out: a token from the
/// environment is most often a workload's JWT (a Kubernetes service account
/// token, a SPIFFE JWT-SVID).
const DEFAULT_ENV_TOKEN_TYPE: &str = "jwt";

/// Validates `actor` found at `at` (`tokenExchange.actor`); `client` is the
/// section's, which a client credentials grant authenticates with.
pub fn actor(
    raw: RawActor,
    at: &str,
    client: &Client,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Actor, ConfigError> {
    let field = |name: &str| format!("{at}.{name}");
    match raw.source.as_str() {
        "clientCredentials" => {
            for (key, set) in [("env", raw.env.is_some()), ("tokenType", raw.token_type.is_some())] {
                if set {
                    return Err(ConfigError::new(
                        field(key),
                        "is only used with source env; remove it (a client credentials token is an access_token)",
                    ));
                }
            }
            if client.method == ClientAuthMethod::None {
                return Err(ConfigError::new(
                    field("source"),
                    "clientCredentials needs the section's client authentication: \
                     set clientId and clientSecretEnv, or private_key_jwt",
                ));
            }
            scope_list(&field("scopes"), &raw.scopes)?;
            Ok(Actor::ClientCredentials { scopes: raw.scopes })
        }
        "env" => {
            if !raw.scopes.is_empty() {
                return Err(ConfigError::new(
                    field("scopes"),
                    "is only used with source clientCredentials; remove it",
                ));
            }
            let Some(var) = raw.env else {
                return Err(ConfigError::new(
                    field("env"),
                    "is required with source env: name the environment variable holding the actor token",
                ));
            };
            let token = from_env(&field("env"), &var, env)?;
            let token_type = token_type(
                &field("tokenType"),
                raw.token_type.as_deref().unwrap_or(DEFAULT_ENV_TOKEN_TYPE),
            )?;
            Ok(Actor::Env {
                token: Secret::new(token),
                env: var,
                token_type,
            })
        }
        other => Err(ConfigError::new(
            field("source"),
            format!("{other:?} is not an actor source; use clientCredentials (the filter's own token) or env"),
        )),
    }
}
