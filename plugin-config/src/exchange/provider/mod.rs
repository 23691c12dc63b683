//! Provider presets for `tokenExchange.provider`. Each member fills its
//! provider's defaults before the section is validated (`defaults`) and
//! checks what its provider requires after (`check`), so a config copied
//! from a provider's documentation fails here, with the provider, the field
//! and the fix in one line, rather than at the IdP at request time.

pub mod entra_obo;
pub mod google_sts;
pub mod id_jag;
pub mod keycloak;
pub mod kind;
pub mod okta;

use super::model::{ClientAuthMethod, TokenExchange, TOKEN_TYPE_PREFIX};
use crate::error::ConfigError;
use crate::raw::RawTokenExchange;
use kind::Provider;

type Field<'a> = &'a dyn Fn(&str) -> String;

impl Provider {
    /// Fills the provider's defaults, and refuses keys it has no use for
    /// before they are defaulted.
    pub(crate) fn defaults(self, raw: &mut RawTokenExchange, field: Field) -> Result<(), ConfigError> {
        if self != Provider::EntraObo && raw.tenant_id.is_some() {
            return Err(self.unused(field, "tenantId", "it is for entra-obo"));
        }
        if self != Provider::IdJag && raw.assertion_grant.is_some() {
            return Err(self.unused(field, "assertionGrant", "it is for id-jag"));
        }
        if matches!(self, Provider::GoogleSts | Provider::EntraObo) && raw.actor.is_some() {
            return Err(self.error(field, "actor", "has no actor token parameter; remove actor"));
        }
        if self != Provider::GoogleSts {
            if raw.options.is_some() {
                return Err(self.unused(field, "options", "it is for google-sts"));
            }
            if raw.service_account_impersonation.is_some() {
                return Err(self.unused(field, "serviceAccountImpersonation", "it is for google-sts"));
            }
        }
        match self {
            Provider::GoogleSts => google_sts::defaults(raw, field),
            Provider::EntraObo => entra_obo::defaults(raw, field),
            Provider::IdJag => id_jag::defaults(raw, field),
            Provider::Rfc8693 | Provider::Okta | Provider::Keycloak => Ok(()),
        }
    }

    /// How a client secret is sent when `clientAuthMethod` is left out.
    pub(crate) fn default_secret_method(self) -> ClientAuthMethod {
        match self {
            Provider::EntraObo => ClientAuthMethod::ClientSecretPost,
            _ => ClientAuthMethod::ClientSecretBasic,
        }
    }

    /// What the provider requires of the validated section.
    pub(crate) fn check(self, te: &TokenExchange, field: Field) -> Result<(), ConfigError> {
        match self {
            Provider::Rfc8693 => Ok(()),
            Provider::Okta => okta::check(te, field),
            Provider::GoogleSts => google_sts::check(te, field),
            Provider::EntraObo => entra_obo::check(te, field),
            Provider::Keycloak => keycloak::check(te, field),
            Provider::IdJag => id_jag::check(te, field),
        }
    }

    /// `<field>: <provider> <requirement>`.
    pub(crate) fn error(self, field: Field, key: &str, requirement: &str) -> ConfigError {
        ConfigError::new(field(key), format!("{} {requirement}", self.name()))
    }

    fn unused(self, field: Field, key: &str, why: &str) -> ConfigError {
        self.error(field, key, &format!("does not use {key} ({why}); remove it"))
    }
}

/// The short name of a token-type URN, for messages.
pub(crate) fn short(urn: &str) -> &str {
    urn.strip_prefix(TOKEN_TYPE_PREFIX).unwrap_or(urn)
}
