//! The RFC 9728 documents the filter serves: one per protected resource,
//! at the resource's own well-known path on its own host. Routes that name
//! the same resource share its document, which lists the scopes of every
//! one of them; two resources that would be described at the same place,
//! or one resource with two authorization servers, are refused.

use crate::error::ConfigError;
use crate::oidc::Oidc;

/// One protected resource's metadata document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Where it is served: the resource URL's host (with its port when one
    /// is written) and the well-known path.
    pub host: String,
    pub path: String,
    /// `resource`, as configured.
    pub resource: String,
    /// The one authorization server.
    pub issuer: String,
    pub scopes_supported: Vec<String>,
    /// Where the config defined it first, for errors.
    at: String,
}

/// The documents of every `oidc` section (at its path in the config) that
/// names a resource.
pub fn documents<'a>(sections: impl Iterator<Item = (String, &'a Oidc)>) -> Result<Vec<Metadata>, ConfigError> {
    let mut docs: Vec<Metadata> = Vec::new();
    for (at, oidc) in sections {
        let Some(r) = &oidc.resource else {
            continue;
        };
        let field = format!("{at}.resourceUrl");
        if let Some(d) = docs.iter_mut().find(|d| d.resource == r.url) {
            if d.issuer != oidc.issuer {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "{} is also the resource of {}, whose issuer is {}; a resource has one \
                         authorization server: give this route its own resourceUrl, or the same issuer",
                        r.url, d.at, d.issuer
                    ),
                ));
            }
            for s in &r.scopes_supported {
                if !d.scopes_supported.contains(s) {
                    d.scopes_supported.push(s.clone());
                }
            }
            continue;
        }
        if let Some(d) = docs.iter().find(|d| d.host == r.host && d.path == r.metadata_path) {
            return Err(ConfigError::new(
                field,
                format!(
                    "{} would be described at {}, as {}'s {} is; give the two resources distinct paths",
                    r.url, r.metadata_url, d.at, d.resource
                ),
            ));
        }
        docs.push(Metadata {
            host: r.host.clone(),
            path: r.metadata_path.clone(),
            resource: r.url.clone(),
            issuer: oidc.issuer.clone(),
            scopes_supported: r.scopes_supported.clone(),
            at,
        });
    }
    Ok(docs)
}
