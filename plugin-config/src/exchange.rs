//! The `tokenExchange` and `cache` sections: where and how the caller's token
//! is exchanged (RFC 8693), and how long results are kept.

use crate::endpoint::{self, Endpoint};
use crate::raw::{RawCache, RawTokenExchange};
use crate::{non_empty, scope_list, ConfigError};
use std::fmt;

const TOKEN_TYPE_PREFIX: &str = "urn:ietf:params:oauth:token-type:";
const TOKEN_TYPES: [&str; 6] = ["access_token", "refresh_token", "id_token", "saml1", "saml2", "jwt"];

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
    /// A public client: `client_id` in the body, if any, and no secret.
    None,
}

#[derive(Debug, Clone)]
pub struct TokenExchange {
    pub token: Endpoint,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    /// The secret was written into the config rather than taken from the environment.
    pub secret_inline: bool,
    pub auth_method: ClientAuthMethod,
    pub audience: Option<String>,
    pub scopes: Vec<String>,
    /// Full URN.
    pub subject_token_type: String,
    /// Full URN, when one is requested.
    pub requested_token_type: Option<String>,
    pub resource: Option<String>,
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

/// Validates a `tokenExchange` section found at `at` (`tokenExchange`, or
/// `rules[2].tokenExchange`), so every error names its real path.
pub fn token_exchange(
    raw: RawTokenExchange,
    at: &str,
    allow_http: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TokenExchange, ConfigError> {
    let field = |name: &str| format!("{at}.{name}");
    let url = endpoint::parse_url(&field("tokenUrl"), &raw.token_url, allow_http)?;
    if let Some(c) = &raw.token_cluster {
        non_empty(&field("tokenCluster"), c)?;
    }
    if let Some(id) = &raw.client_id {
        non_empty(&field("clientId"), id)?;
    }

    let (client_secret, secret_inline) = match (raw.client_secret_env, raw.client_secret) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                field("clientSecret"),
                "set either clientSecretEnv or clientSecret, not both; prefer clientSecretEnv",
            ))
        }
        (Some(var), None) => {
            non_empty(&field("clientSecretEnv"), &var)?;
            match env(&var) {
                Some(v) if !v.is_empty() => (Some(Secret(v)), false),
                _ => {
                    return Err(ConfigError::new(
                        field("clientSecretEnv"),
                        format!(
                            "environment variable {var} is not set or empty; set it in \
                             vm_config.environment_variables (Envoy) or vmConfig.env (Istio)"
                        ),
                    ))
                }
            }
        }
        (None, Some(s)) => {
            non_empty(&field("clientSecret"), &s)?;
            (Some(Secret(s)), true)
        }
        (None, None) => (None, false),
    };

    let auth_method = match raw.client_auth_method.as_deref() {
        None if client_secret.is_some() => ClientAuthMethod::ClientSecretBasic,
        None | Some("none") => ClientAuthMethod::None,
        Some("client_secret_basic") => ClientAuthMethod::ClientSecretBasic,
        Some("client_secret_post") => ClientAuthMethod::ClientSecretPost,
        Some(other) => {
            return Err(ConfigError::new(
                field("clientAuthMethod"),
                format!("{other:?} is not supported; use client_secret_basic, client_secret_post or none"),
            ))
        }
    };
    match auth_method {
        ClientAuthMethod::None if client_secret.is_some() => {
            return Err(ConfigError::new(
                field("clientAuthMethod"),
                "is none, so the client secret would never be sent; remove the secret or use client_secret_basic",
            ))
        }
        ClientAuthMethod::ClientSecretBasic | ClientAuthMethod::ClientSecretPost => {
            if raw.client_id.is_none() {
                return Err(ConfigError::new(
                    field("clientId"),
                    "is required to authenticate with a client secret",
                ));
            }
            if client_secret.is_none() {
                return Err(ConfigError::new(
                    field("clientSecretEnv"),
                    "is required by this clientAuthMethod; name the environment variable holding the secret",
                ));
            }
        }
        ClientAuthMethod::None => {}
    }

    if let Some(a) = &raw.audience {
        non_empty(&field("audience"), a)?;
    }
    scope_list(&field("scopes"), &raw.scopes)?;
    let subject_token_type = match raw.subject_token_type {
        None => format!("{TOKEN_TYPE_PREFIX}access_token"),
        Some(t) => token_type(&field("subjectTokenType"), &t)?,
    };
    let requested_token_type = raw
        .requested_token_type
        .map(|t| token_type(&field("requestedTokenType"), &t))
        .transpose()?;
    if let Some(r) = &raw.resource {
        let bad = || {
            ConfigError::new(
                field("resource"),
                format!("must be an absolute URI without a fragment, got {r:?}"),
            )
        };
        let u = url::Url::parse(r).map_err(|_| bad())?;
        if u.fragment().is_some() {
            return Err(bad());
        }
    }
    let external_token_header = match raw.external_token_header_name.as_deref() {
        None | Some("") => None,
        Some(h) => Some(header_name(&field("externalTokenHeaderName"), h)?).filter(|h| h != "authorization"),
    };
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(ConfigError::new(
            field("timeoutMs"),
            format!("must be between 1 and {MAX_TIMEOUT_MS}, got {timeout_ms}"),
        ));
    }

    Ok(TokenExchange {
        token: endpoint::endpoint(&url, raw.token_cluster),
        client_id: raw.client_id,
        client_secret,
        secret_inline,
        auth_method,
        audience: raw.audience,
        scopes: raw.scopes,
        subject_token_type,
        requested_token_type,
        resource: raw.resource,
        external_token_header,
        timeout_ms,
    })
}

pub fn cache(raw: Option<RawCache>) -> Result<Cache, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Cache::default());
    };
    let max_entries = raw.max_entries.unwrap_or(u64::from(DEFAULT_MAX_ENTRIES));
    if !(1..=MAX_MAX_ENTRIES).contains(&max_entries) {
        return Err(ConfigError::new(
            "cache.maxEntries",
            format!("must be between 1 and {MAX_MAX_ENTRIES}, got {max_entries}"),
        ));
    }
    let expiry_skew_seconds = raw.expiry_skew_seconds.unwrap_or(DEFAULT_EXPIRY_SKEW_SECONDS);
    if expiry_skew_seconds > MAX_EXPIRY_SKEW_SECONDS {
        return Err(ConfigError::new(
            "cache.expirySkewSeconds",
            format!("must be between 0 and {MAX_EXPIRY_SKEW_SECONDS}, got {expiry_skew_seconds}"),
        ));
    }
    Ok(Cache {
        max_entries: max_entries as u32,
        expiry_skew_seconds,
    })
}

/// Short forms (`access_token`, `id_token`, `jwt`, …) or the full RFC 8693 URN.
fn token_type(path: &str, t: &str) -> Result<String, ConfigError> {
    let short = t.strip_prefix(TOKEN_TYPE_PREFIX).unwrap_or(t);
    if TOKEN_TYPES.contains(&short) {
        Ok(format!("{TOKEN_TYPE_PREFIX}{short}"))
    } else {
        Err(ConfigError::new(
            path,
            format!(
                "{t:?} is not a token type; use access_token, id_token, jwt, refresh_token, saml1, saml2 \
                 or the full urn:ietf:params:oauth:token-type:* form"
            ),
        ))
    }
}

/// An HTTP field name (RFC 9110 token), lower-cased as HTTP/2 requires.
fn header_name(path: &str, h: &str) -> Result<String, ConfigError> {
    let ok = h
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        return Err(ConfigError::new(path, format!("{h:?} is not a valid header name")));
    }
    Ok(h.to_ascii_lowercase())
}
