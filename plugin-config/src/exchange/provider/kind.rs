//! Which provider a `tokenExchange` section is for. A leaf: the validated
//! section names it, and the presets dispatch on it.

use crate::error::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Plain RFC 8693: what the configuration says, nothing more.
    Rfc8693,
    Okta,
    GoogleSts,
    EntraObo,
    Keycloak,
    /// Cross App Access: an ID-JAG from the enterprise IdP (RFC 8693), then
    /// an access token for it at the resource authorization server (RFC 7523).
    IdJag,
}

impl Provider {
    pub fn parse(path: &str, name: Option<&str>) -> Result<Provider, ConfigError> {
        Ok(match name {
            None | Some("rfc8693") => Provider::Rfc8693,
            Some("okta") => Provider::Okta,
            Some("google-sts") => Provider::GoogleSts,
            Some("entra-obo") => Provider::EntraObo,
            Some("keycloak") => Provider::Keycloak,
            Some("id-jag") => Provider::IdJag,
            Some(other) => {
                return Err(ConfigError::new(
                    path,
                    format!(
                        "{other:?} is not a provider; use rfc8693, okta, google-sts, entra-obo, keycloak or id-jag"
                    ),
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Provider::Rfc8693 => "rfc8693",
            Provider::Okta => "okta",
            Provider::GoogleSts => "google-sts",
            Provider::EntraObo => "entra-obo",
            Provider::Keycloak => "keycloak",
            Provider::IdJag => "id-jag",
        }
    }
}
