//! What a validated `tokenExchange` section and the `cache` section hold:
//! where and how the caller's token is exchanged, how the filter
//! authenticates there, and how long results are kept. Validation is in
//! the family's `mod.rs` and `client_auth`; provider presets in `provider`.

use super::provider::kind::Provider;
use crate::endpoint::Endpoint;
use std::fmt;

pub(crate) const TOKEN_TYPE_PREFIX: &str = "urn:ietf:params:oauth:token-type:";
/// The token type of an Identity Assertion JWT Authorization Grant
/// (draft-ietf-oauth-identity-assertion-authz-grant).
pub const ID_JAG: &str = "urn:ietf:params:oauth:token-type:id-jag";

pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
pub const MAX_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_MAX_ENTRIES: u32 = 10_000;
pub const MAX_MAX_ENTRIES: u64 = 1_000_000;
pub const DEFAULT_EXPIRY_SKEW_SECONDS: u64 = 30;
pub const MAX_EXPIRY_SKEW_SECONDS: u64 = 3_600;

/// A client secret. Its `Debug` never shows it, so it cannot leak through a
/// log line that prints a config.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub(crate) fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How the filter authenticates to the token endpoint (RFC 6749 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    /// HTTP Basic with id and secret form-urlencoded first (§2.3.1).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// A JWT signed with the client's private key (RFC 7523 §2.2, OIDC Core §9).
    PrivateKeyJwt,
    /// A public client: `client_id` in the body, if any, and no secret.
    None,
}

/// The key and header of `private_key_jwt` client assertions. The PEM is
/// only checked for shape here; the filter parses it at configure time
/// and refuses the config if it does not fit `alg`.
#[derive(Debug, Clone)]
pub struct ClientAssertion {
    pub key_pem: Secret,
    /// The environment variable the key came from, for error messages.
    pub key_env: String,
    pub alg: AssertionAlg,
    pub kid: Option<String>,
    /// `aud` of the assertion: the token URL unless configured.
    pub audience: String,
    /// `x5t`: base64url SHA-1 of the certificate's DER (Entra certificate credentials).
    pub x5t: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionAlg {
    RS256,
    PS256,
    ES256,
}

/// google-sts's optional second step: a service account's token from IAM
/// Credentials' generateAccessToken, asked for with the federated token.
#[derive(Debug, Clone)]
pub struct Impersonation {
    pub endpoint: Endpoint,
    pub scopes: Vec<String>,
    pub lifetime_seconds: u64,
}

/// How the filter authenticates at one token endpoint (RFC 6749 §2.3).
#[derive(Debug, Clone)]
pub struct Client {
    pub id: Option<String>,
    pub secret: Option<Secret>,
    /// The secret was written into the config rather than taken from the environment.
    pub secret_inline: bool,
    pub method: ClientAuthMethod,
    /// With `PrivateKeyJwt`.
    pub assertion: Option<ClientAssertion>,
}

/// Who acts for the user: sent as `actor_token` with `actor_token_type`
/// (RFC 8693 §2.1), so the issued token can name the actor in `act` (§4.1).
#[derive(Debug, Clone)]
pub enum Actor {
    /// The filter's own token: a client credentials grant (RFC 6749 §4.4)
    /// at the section's token endpoint, with its client authentication.
    ClientCredentials { scopes: Vec<String> },
    /// A token from the environment, and its type (full URN).
    Env {
        token: Secret,
        /// The variable it came from, for messages.
        env: String,
        token_type: String,
    },
}

impl Actor {
    /// What is sent as `actor_token_type` (full URN).
    pub fn token_type(&self) -> String {
        match self {
            Actor::ClientCredentials { .. } => format!("{TOKEN_TYPE_PREFIX}access_token"),
            Actor::Env { token_type, .. } => token_type.clone(),
        }
    }
}

/// id-jag's second step: the ID-JAG presented as an RFC 7523 JWT bearer
/// grant at the resource authorization server, with that server's own
/// client authentication.
#[derive(Debug, Clone)]
pub struct AssertionGrant {
    /// Where it is in the config (`tokenExchange.assertionGrant`).
    pub at: String,
    pub token: Endpoint,
    pub client: Client,
    /// `scope`, space-joined (RFC 7523 §2.1).
    pub scopes: Vec<String>,
    /// Repeated `resource` parameters (RFC 8707).
    pub resources: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct TokenExchange {
    pub provider: Provider,
    /// Where this section is in the config (`tokenExchange`, `rules[1].tokenExchange`).
    pub at: String,
    pub token: Endpoint,
    pub client: Client,
    /// Sent as repeated `audience` parameters (RFC 8693 §2.1).
    pub audiences: Vec<String>,
    pub scopes: Vec<String>,
    /// Full URN. Not sent by entra-obo.
    pub subject_token_type: String,
    /// Full URN; `None` only for entra-obo, which has no such parameter.
    pub requested_token_type: Option<String>,
    /// Sent as repeated `resource` parameters (RFC 8707).
    pub resources: Vec<String>,
    /// google-sts `options`, compact JSON.
    pub options: Option<String>,
    pub impersonation: Option<Impersonation>,
    pub actor: Option<Actor>,
    /// id-jag only.
    pub assertion_grant: Option<AssertionGrant>,
    /// Lower-case header that gets `Bearer <exchanged>`; `None` replaces Authorization.
    pub external_token_header: Option<String>,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    pub max_entries: u32,
    pub expiry_skew_seconds: u64,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            max_entries: DEFAULT_MAX_ENTRIES,
            expiry_skew_seconds: DEFAULT_EXPIRY_SKEW_SECONDS,
        }
    }
}
