//! The `tokenExchange` and `cache` sections: where and how the caller's token
//! is exchanged (RFC 8693 and the dialects in `provider`), how the filter
//! authenticates there (`client_auth`), and how long results are kept. What
//! a validated section holds is `model`; this module validates.

mod actor;
mod assertion_grant;
pub(crate) mod client_auth;
pub mod model;
pub mod provider;

pub use model::*;
pub use provider::kind::Provider;

use crate::endpoint;
use crate::error::ConfigError;
use crate::field::{non_empty, scope_list};
use crate::raw::{OneOrMany, RawCache, RawTokenExchange};

const TOKEN_TYPES: [&str; 6] = ["access_token", "refresh_token", "id_token", "saml1", "saml2", "jwt"];

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

    let (url, token_url) = token_url(&raw, &field, allow_http)?;
    let client = client_auth::client_auth(&raw.client(), provider.default_secret_method(), &field, &token_url, env)?;
    let ExtraCallouts {
        actor,
        grant: assertion_grant,
        impersonation,
    } = extra_callouts(&mut raw, &field, &client, allow_http, env)?;
    let audiences = audiences(raw.audience.take(), &field("audience"))?;
    scope_list(&field("scopes"), &raw.scopes)?;
    let (subject_token_type, requested_token_type) = token_types(&raw, provider, &field)?;
    let resources = resources(raw.resource.take(), &field("resource"))?;
    let external_token_header = match raw.external_token_header_name.as_deref() {
        None | Some("") => None,
        Some(h) => Some(header_name(&field("externalTokenHeaderName"), h)?).filter(|h| h != "authorization"),
    };
    let te = TokenExchange {
        provider,
        at: at.to_string(),
        token: endpoint::endpoint(&url, raw.token_cluster.take()),
        client,
        audiences,
        scopes: raw.scopes,
        subject_token_type,
        requested_token_type,
        resources,
        options: raw.options.take().map(|v| options(&field("options"), v)).transpose()?,
        impersonation,
        actor,
        assertion_grant,
        external_token_header,
        timeout_ms: timeout(raw.timeout_ms, &field("timeoutMs"))?,
    };
    provider.check(&te, &field)?;
    Ok(te)
}

/// The sections that add callouts to an exchange: the filter's own actor
/// token before it, id-jag's assertion grant or google-sts's impersonation after.
struct ExtraCallouts {
    actor: Option<Actor>,
    grant: Option<AssertionGrant>,
    impersonation: Option<Impersonation>,
}

fn extra_callouts(
    raw: &mut RawTokenExchange,
    field: &dyn Fn(&str) -> String,
    client: &Client,
    allow_http: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ExtraCallouts, ConfigError> {
    let actor = match raw.actor.take() {
        None => None,
        Some(a) => Some(actor::actor(a, &field("actor"), client, env)?),
    };
    let grant = match raw.assertion_grant.take() {
        None => None,
        Some(g) => Some(assertion_grant::assertion_grant(
            *g,
            &field("assertionGrant"),
            allow_http,
            env,
        )?),
    };
    let impersonation = match raw.service_account_impersonation.take() {
        None => None,
        Some(i) => Some(provider::google_sts::impersonation(
            &field("serviceAccountImpersonation"),
            i,
            allow_http,
        )?),
    };
    Ok(ExtraCallouts {
        actor,
        grant,
        impersonation,
    })
}

/// `tokenUrl` (required, unless the provider's preset filled it) and
/// `tokenCluster`, checked; the URL as parsed and as written.
pub(super) fn token_url(
    raw: &RawTokenExchange,
    field: &dyn Fn(&str) -> String,
    allow_http: bool,
) -> Result<(url::Url, String), ConfigError> {
    let url = endpoint::required(
        &field("tokenUrl"),
        raw.token_url.as_deref(),
        "the token endpoint's URL",
        &field("tokenCluster"),
        raw.token_cluster.as_deref(),
        allow_http,
    )?;
    Ok((url, raw.token_url.clone().unwrap_or_default()))
}

fn timeout(raw: Option<u64>, path: &str) -> Result<u64, ConfigError> {
    let timeout_ms = raw.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(ConfigError::new(
            path,
            format!("must be between 1 and {MAX_TIMEOUT_MS}, got {timeout_ms}"),
        ));
    }
    Ok(timeout_ms)
}

/// `audience`: one or more non-empty names (RFC 8693 §2.1).
fn audiences(raw: Option<OneOrMany>, path: &str) -> Result<Vec<String>, ConfigError> {
    let audiences = raw.map(OneOrMany::into_vec).unwrap_or_default();
    for (i, a) in audiences.iter().enumerate() {
        non_empty(&list_item(path, i, audiences.len()), a)?;
    }
    Ok(audiences)
}

/// `subjectTokenType` and `requestedTokenType` as full URNs; entra-obo has
/// no requested type.
fn token_types(
    raw: &RawTokenExchange,
    provider: Provider,
    field: &dyn Fn(&str) -> String,
) -> Result<(String, Option<String>), ConfigError> {
    let subject = match raw.subject_token_type.as_deref() {
        None => format!("{TOKEN_TYPE_PREFIX}access_token"),
        Some(t) => token_type(&field("subjectTokenType"), t)?,
    };
    let requested = match raw.requested_token_type.as_deref() {
        None if provider == Provider::EntraObo => None,
        None => Some(format!("{TOKEN_TYPE_PREFIX}access_token")),
        Some(t) if provider::short(t) == "id-jag" => {
            if provider != Provider::IdJag {
                return Err(ConfigError::new(
                    field("requestedTokenType"),
                    "is id-jag, a grant for a resource authorization server, not a token to forward: \
                     use provider id-jag with its assertionGrant",
                ));
            }
            Some(ID_JAG.to_string())
        }
        Some(t) => Some(token_type(&field("requestedTokenType"), t)?),
    };
    Ok((subject, requested))
}

/// `resource`: absolute URIs without a fragment (RFC 8707 §2).
pub(super) fn resources(raw: Option<OneOrMany>, path: &str) -> Result<Vec<String>, ConfigError> {
    let resources = raw.map(OneOrMany::into_vec).unwrap_or_default();
    for (i, r) in resources.iter().enumerate() {
        let bad = || {
            ConfigError::new(
                list_item(path, i, resources.len()),
                format!("must be an absolute URI without a fragment, got {r:?}"),
            )
        };
        let u = url::Url::parse(r).map_err(|_| bad())?;
        if u.fragment().is_some() {
            return Err(bad());
        }
    }
    Ok(resources)
}

/// `audience` for one value, `audience[2]` for an item of a list.
fn list_item(path: &str, i: usize, len: usize) -> String {
    if len == 1 {
        path.to_string()
    } else {
        format!("{path}[{i}]")
    }
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
pub(super) fn token_type(path: &str, t: &str) -> Result<String, ConfigError> {
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

#[cfg(test)]
mod tests;
