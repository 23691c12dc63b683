//! id-jag's `assertionGrant`: where and how the ID-JAG is presented, as an
//! RFC 7523 JWT bearer grant at the resource authorization server. It is
//! written like a `tokenExchange` section (`tokenUrl`, `tokenCluster`, the
//! client keys, `scopes`, `resource`) and validated by the same code; keys
//! that only step 1 uses are refused here, where they would be ignored.

use super::client_auth::client_auth;
use super::model::AssertionGrant;
use super::provider::kind::Provider;
use super::{resources, token_url};
use crate::endpoint;
use crate::error::ConfigError;
use crate::field::scope_list;
use crate::raw::RawTokenExchange;

pub fn assertion_grant(
    mut raw: RawTokenExchange,
    at: &str,
    allow_http: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AssertionGrant, ConfigError> {
    let field = |name: &str| format!("{at}.{name}");
    refuse_step_one_keys(&raw, &field)?;
    let (url, written) = token_url(&raw, &field, allow_http)?;
    let client = client_auth(
        &raw.client(),
        Provider::IdJag.default_secret_method(),
        &field,
        &written,
        env,
    )?;
    scope_list(&field("scopes"), &raw.scopes)?;
    let resources = resources(raw.resource.take(), &field("resource"))?;
    Ok(AssertionGrant {
        at: at.to_string(),
        token: endpoint::endpoint(&url, raw.token_cluster.take()),
        client,
        scopes: raw.scopes,
        resources,
    })
}

fn refuse_step_one_keys(raw: &RawTokenExchange, field: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    let set = [
        ("provider", raw.provider.is_some()),
        ("tenantId", raw.tenant_id.is_some()),
        ("audience", raw.audience.is_some()),
        ("subjectTokenType", raw.subject_token_type.is_some()),
        ("requestedTokenType", raw.requested_token_type.is_some()),
        ("options", raw.options.is_some()),
        (
            "serviceAccountImpersonation",
            raw.service_account_impersonation.is_some(),
        ),
        ("externalTokenHeaderName", raw.external_token_header_name.is_some()),
        ("timeoutMs", raw.timeout_ms.is_some()),
        ("actor", raw.actor.is_some()),
        ("assertionGrant", raw.assertion_grant.is_some()),
    ];
    match set.iter().find(|(_, set)| *set) {
        Some((key, _)) => Err(ConfigError::new(
            field(key),
            "is not used in assertionGrant (it takes tokenUrl, tokenCluster, the client keys, scopes and \
             resource; timeoutMs and the rest belong to the tokenExchange section); remove it",
        )),
        None => Ok(()),
    }
}
