//! The `tokenExchange` and `cache` sections: where and how the caller's token
//! is exchanged (RFC 8693 and the dialects in `provider`), how the filter
//! authenticates there, and how long results are kept.

use crate::endpoint::{self, Endpoint};
use crate::provider::{self, Provider};
use crate::raw::{OneOrMany, RawCache, RawTokenExchange};
use crate::{non_empty, scope_list, ConfigError};
use std::fmt;

pub(crate) const TOKEN_TYPE_PREFIX: &str = "urn:ietf:params:oauth:token-type:";
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

#[derive(Debug, Clone)]
pub struct TokenExchange {
    pub provider: Provider,
    /// Where this section is in the config (`tokenExchange`, `rules[1].tokenExchange`).
    pub at: String,
    pub token: Endpoint,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    /// The secret was written into the config rather than taken from the environment.
    pub secret_inline: bool,
    pub auth_method: ClientAuthMethod,
    /// With `PrivateKeyJwt`.
    pub assertion: Option<ClientAssertion>,
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
/// `rules[2].tokenExchange`), so every error names its real path. The
/// provider's preset fills its defaults first, and checks what it requires last.
pub fn token_exchange(
    mut raw: RawTokenExchange,
    at: &str,
    allow_http: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TokenExchange, ConfigError> {
    let field = |name: &str| format!("{at}.{name}");
    let provider = Provider::parse(&field("provider"), raw.provider.as_deref())?;
    provider.defaults(&mut raw, &field)?;

    let Some(token_url) = raw.token_url.as_deref() else {
        return Err(ConfigError::new(
            field("tokenUrl"),
            "is required: the token endpoint's URL",
        ));
    };
    let url = endpoint::parse_url(&field("tokenUrl"), token_url, allow_http)?;
    if let Some(c) = &raw.token_cluster {
        non_empty(&field("tokenCluster"), c)?;
    }
    if let Some(id) = &raw.client_id {
        non_empty(&field("clientId"), id)?;
    }

    let (client_secret, secret_inline) = match (&raw.client_secret_env, &raw.client_secret) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                field("clientSecret"),
                "set either clientSecretEnv or clientSecret, not both; prefer clientSecretEnv",
            ))
        }
        (Some(var), None) => (Some(Secret(from_env(&field("clientSecretEnv"), var, env)?)), false),
        (None, Some(s)) => {
            non_empty(&field("clientSecret"), s)?;
            (Some(Secret(s.clone())), true)
        }
        (None, None) => (None, false),
    };

    let auth_method = match raw.client_auth_method.as_deref() {
        None if raw.client_assertion_key_env.is_some() => ClientAuthMethod::PrivateKeyJwt,
        None if client_secret.is_some() => provider.default_secret_method(),
        None | Some("none") => ClientAuthMethod::None,
        Some("client_secret_basic") => ClientAuthMethod::ClientSecretBasic,
        Some("client_secret_post") => ClientAuthMethod::ClientSecretPost,
        Some("private_key_jwt") => ClientAuthMethod::PrivateKeyJwt,
        Some(other) => {
            return Err(ConfigError::new(
                field("clientAuthMethod"),
                format!(
                    "{other:?} is not supported; use client_secret_basic, client_secret_post, private_key_jwt or none"
                ),
            ))
        }
    };
    let assertion_keys = [
        ("clientAssertionKid", raw.client_assertion_kid.is_some()),
        ("clientAssertionAlg", raw.client_assertion_alg.is_some()),
        ("clientAssertionAudience", raw.client_assertion_audience.is_some()),
        ("clientAssertionCertEnv", raw.client_assertion_cert_env.is_some()),
    ];
    match auth_method {
        ClientAuthMethod::None if client_secret.is_some() => {
            return Err(ConfigError::new(
                field("clientAuthMethod"),
                "is none, so the client secret would never be sent; remove the secret or use client_secret_basic",
            ))
        }
        ClientAuthMethod::ClientSecretBasic | ClientAuthMethod::ClientSecretPost if client_secret.is_none() => {
            return Err(ConfigError::new(
                field("clientSecretEnv"),
                "is required by this clientAuthMethod; name the environment variable holding the secret",
            ))
        }
        ClientAuthMethod::PrivateKeyJwt if client_secret.is_some() => {
            return Err(ConfigError::new(
                field("clientAuthMethod"),
                "is private_key_jwt, so the client secret would never be sent; remove clientSecretEnv",
            ))
        }
        ClientAuthMethod::PrivateKeyJwt if raw.client_assertion_key_env.is_none() => {
            return Err(ConfigError::new(
                field("clientAssertionKeyEnv"),
                "is required by private_key_jwt; name the environment variable holding the PEM private key",
            ))
        }
        ClientAuthMethod::PrivateKeyJwt => {}
        _ => {
            let mut set = assertion_keys.iter().filter(|(_, set)| *set).map(|(k, _)| *k);
            let key_env = raw.client_assertion_key_env.as_ref().map(|_| "clientAssertionKeyEnv");
            if let Some(k) = key_env.or_else(|| set.next()) {
                return Err(ConfigError::new(
                    field(k),
                    "is only used with clientAuthMethod private_key_jwt; remove it or set that method",
                ));
            }
        }
    }
    if auth_method != ClientAuthMethod::None && raw.client_id.is_none() {
        return Err(ConfigError::new(
            field("clientId"),
            "is required to authenticate the client",
        ));
    }
    let assertion = match auth_method {
        ClientAuthMethod::PrivateKeyJwt => Some(client_assertion(&raw, &field, token_url, env)?),
        _ => None,
    };

    let audiences = raw.audience.take().map(OneOrMany::into_vec).unwrap_or_default();
    for (i, a) in audiences.iter().enumerate() {
        non_empty(&list_item(&field("audience"), i, audiences.len()), a)?;
    }
    scope_list(&field("scopes"), &raw.scopes)?;
    let subject_token_type = match raw.subject_token_type.as_deref() {
        None => format!("{TOKEN_TYPE_PREFIX}access_token"),
        Some(t) => token_type(&field("subjectTokenType"), t)?,
    };
    let requested_token_type = match raw.requested_token_type.as_deref() {
        None if provider == Provider::EntraObo => None,
        None => Some(format!("{TOKEN_TYPE_PREFIX}access_token")),
        Some(t) => Some(token_type(&field("requestedTokenType"), t)?),
    };
    let resources = raw.resource.take().map(OneOrMany::into_vec).unwrap_or_default();
    for (i, r) in resources.iter().enumerate() {
        let bad = || {
            ConfigError::new(
                list_item(&field("resource"), i, resources.len()),
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
    let options = match raw.options.take() {
        None => None,
        Some(v) => Some(options(&field("options"), v)?),
    };
    let impersonation = match raw.service_account_impersonation.take() {
        None => None,
        Some(i) => Some(provider::google_sts::impersonation(
            &field("serviceAccountImpersonation"),
            i,
            allow_http,
        )?),
    };

    let te = TokenExchange {
        provider,
        at: at.to_string(),
        token: endpoint::endpoint(&url, raw.token_cluster.take()),
        client_id: raw.client_id.take(),
        client_secret,
        secret_inline,
        auth_method,
        assertion,
        audiences,
        scopes: raw.scopes,
        subject_token_type,
        requested_token_type,
        resources,
        options,
        impersonation,
        external_token_header,
        timeout_ms,
    };
    provider.check(&te, &field)?;
    Ok(te)
}

/// `audience` for one value, `audience[2]` for an item of a list.
fn list_item(path: &str, i: usize, len: usize) -> String {
    if len == 1 {
        path.to_string()
    } else {
        format!("{path}[{i}]")
    }
}

/// A secret's value from the environment, or an error naming the variable.
fn from_env(path: &str, var: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    non_empty(path, var)?;
    match env(var) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ConfigError::new(
            path,
            format!(
                "environment variable {var} is not set or empty; set it in \
                 vm_config.environment_variables (Envoy) or vmConfig.env (Istio)"
            ),
        )),
    }
}

fn client_assertion(
    raw: &RawTokenExchange,
    field: &dyn Fn(&str) -> String,
    token_url: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ClientAssertion, ConfigError> {
    let key_env = raw.client_assertion_key_env.clone().unwrap_or_default();
    let key_pem = from_env(&field("clientAssertionKeyEnv"), &key_env, env)?;
    if !key_pem.contains("-----BEGIN") || !key_pem.contains("PRIVATE KEY-----") {
        return Err(ConfigError::new(
            field("clientAssertionKeyEnv"),
            format!("environment variable {key_env} does not hold a PEM private key (-----BEGIN ... PRIVATE KEY-----)"),
        ));
    }
    let alg = match raw.client_assertion_alg.as_deref() {
        None | Some("RS256") => AssertionAlg::RS256,
        Some("PS256") => AssertionAlg::PS256,
        Some("ES256") => AssertionAlg::ES256,
        Some(other) => {
            return Err(ConfigError::new(
                field("clientAssertionAlg"),
                format!("{other:?} is not supported; use RS256, PS256 or ES256"),
            ))
        }
    };
    if let Some(k) = &raw.client_assertion_kid {
        non_empty(&field("clientAssertionKid"), k)?;
    }
    let audience = match &raw.client_assertion_audience {
        Some(a) => {
            non_empty(&field("clientAssertionAudience"), a)?;
            a.clone()
        }
        None => token_url.to_string(),
    };
    let x5t = match &raw.client_assertion_cert_env {
        None => None,
        Some(var) => {
            let path = field("clientAssertionCertEnv");
            let pem = from_env(&path, var, env)?;
            Some(thumbprint(&pem).ok_or_else(|| {
                ConfigError::new(
                    path,
                    format!("environment variable {var} does not hold a PEM certificate (-----BEGIN CERTIFICATE-----)"),
                )
            })?)
        }
    };
    Ok(ClientAssertion {
        key_pem: Secret(key_pem),
        key_env,
        alg,
        kid: raw.client_assertion_kid.clone(),
        audience,
        x5t,
    })
}

/// `x5t`: base64url (no padding) of the SHA-1 of the first certificate's DER.
fn thumbprint(pem: &str) -> Option<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine;
    use sha1::{Digest, Sha1};
    let body = pem.split("-----BEGIN CERTIFICATE-----").nth(1)?;
    let body = body.split("-----END CERTIFICATE-----").next()?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = STANDARD.decode(b64).ok()?;
    // A DER certificate is a SEQUENCE.
    if der.first() != Some(&0x30) {
        return None;
    }
    Some(URL_SAFE_NO_PAD.encode(Sha1::digest(&der)))
}

/// google-sts `options`: a JSON object, or a string holding one; sent compact.
fn options(path: &str, v: serde_json::Value) -> Result<String, ConfigError> {
    let parsed = match v {
        serde_json::Value::String(s) => serde_json::from_str::<serde_json::Value>(&s).ok(),
        other => Some(other),
    };
    match parsed {
        Some(o @ serde_json::Value::Object(_)) => Ok(o.to_string()),
        _ => Err(ConfigError::new(
            path,
            "must be a JSON object (or a string holding one), e.g. {\"userProject\": \"my-project\"}",
        )),
    }
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
