//! Finding the JWKS URL when `oidc.jwksUrl` is left out: the issuer's OpenID
//! Connect metadata, else its RFC 8414 metadata. `cache` makes the
//! callouts (with its lease, timeouts and back-off); this holds which document
//! is next and what makes one acceptable.
//!
//! A document counts only if its `issuer` is exactly the configured one
//! (OpenID Connect Discovery §4.3, RFC 8414 §3.3): metadata served for another
//! issuer would name another issuer's keys.

use crate::host::{CalloutResponse, MAX_CALLOUT_BODY};
use crate::support::logsafe::{cut, excerpt, MAX_EXCERPT};
use plugin_config::{Discovery as Locations, Endpoint};

/// Longest stretch of a document's text that goes into a log line.
/// Longest `jwks_uri` considered.
const MAX_URI: usize = 2048;

pub struct Discovery {
    locations: Locations,
    issuer: String,
    /// The OpenID document was not there: the RFC 8414 one is next.
    fallback: bool,
}

/// What one metadata answer led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A document with our issuer named this JWKS endpoint.
    Found(Endpoint),
    /// No OpenID document: the RFC 8414 one is next.
    Fallback,
    /// Nothing usable (logged); the next attempt starts over from the first document.
    Failed,
}

/// Why a document was not used.
enum Miss {
    /// Not there (404), or not a metadata document: worth the other location.
    Absent(String),
    Unusable(String),
    /// The document's `issuer`, if it has a string one.
    WrongIssuer(Option<String>),
}

impl Discovery {
    pub fn new(locations: Locations, issuer: String) -> Discovery {
        Discovery {
            locations,
            issuer,
            fallback: false,
        }
    }

    /// The document to ask for next.
    pub fn endpoint(&self) -> &Endpoint {
        if self.fallback {
            &self.locations.oauth
        } else {
            &self.locations.openid
        }
    }

    pub fn on_response(&mut self, resp: &CalloutResponse) -> Outcome {
        let url = self.endpoint().url.clone();
        let miss = match self.read(resp) {
            Ok(jwks) => {
                log::info!(
                    "oidc discovery: JWKS at {} via cluster {} (from {url})",
                    jwks.url,
                    jwks.cluster
                );
                self.fallback = false;
                return Outcome::Found(jwks);
            }
            Err(miss) => miss,
        };
        let first = !self.fallback;
        self.fallback = false;
        match miss {
            Miss::Absent(why) if first => {
                self.fallback = true;
                log::info!("oidc discovery: {url} {why}; trying {}", self.locations.oauth.url);
                return Outcome::Fallback;
            }
            Miss::Absent(why) | Miss::Unusable(why) => {
                log::warn!("oidc discovery from {url} failed: {why}");
            }
            Miss::WrongIssuer(Some(found)) => log::error!(
                "oidc discovery: issuer in {url} is \"{}\", expected \"{}\"",
                excerpt(&found),
                excerpt(&self.issuer)
            ),
            Miss::WrongIssuer(None) => log::error!(
                "oidc discovery: {url} names no issuer, expected \"{}\"",
                excerpt(&self.issuer)
            ),
        }
        Outcome::Failed
    }

    fn read(&self, resp: &CalloutResponse) -> Result<Endpoint, Miss> {
        let status = resp
            .status()
            .ok_or_else(|| Miss::Unusable("no response (connection failed, reset or timed out)".into()))?;
        if status == 404 {
            return Err(Miss::Absent("answered 404".into()));
        }
        if status != 200 {
            return Err(Miss::Unusable(format!("HTTP status {status}")));
        }
        if resp.truncated {
            return Err(Miss::Unusable(format!("document larger than {MAX_CALLOUT_BODY} bytes")));
        }
        let absent = || Miss::Absent("is not a JSON object with a jwks_uri string".into());
        let doc: serde_json::Value = serde_json::from_slice(&resp.body).map_err(|_| absent())?;
        let jwks_uri = doc.get("jwks_uri").and_then(|v| v.as_str()).ok_or_else(absent)?;
        match doc.get("issuer").and_then(|v| v.as_str()) {
            Some(i) if i == self.issuer => {}
            other => return Err(Miss::WrongIssuer(other.map(str::to_string))),
        }
        // What goes into the error below is then printable and bounded.
        if jwks_uri.len() > MAX_URI || !jwks_uri.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Miss::Unusable(format!(
                "jwks_uri \"{}\" is not a URL",
                excerpt(jwks_uri)
            )));
        }
        self.locations
            .jwks(jwks_uri)
            .map_err(|e| Miss::Unusable(cut(&e.to_string(), 2 * MAX_EXCERPT).to_string()))
    }
}

#[cfg(test)]
mod tests;
