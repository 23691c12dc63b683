//! The first phase: which policy a request gets. RFC 9728 metadata requests
//! are answered here, before any rule is matched, each resource's at its
//! own well-known path on its own host (other hosts' well-known paths are
//! theirs); then the
//! rules pick the policy (or a skip) from `:authority` and `:path`, read
//! only when something needs them, since each read is a call into the proxy,
//! and whether the body gate judges the request. The path is judged on
//! every common reading of it (`request::path`): one servers may read as a
//! path decided differently gets 400.

use crate::edge::challenge::metadata_document;
use crate::host::Host;
use crate::request::outcome::{Outcome, Reply, Unjudged, Who};
use crate::request::policy::{Policies, PolicyId, Selection};
use crate::request::routes::host_matches;
use std::rc::Rc;

/// Metadata is public: any page may read it.
const ANY_ORIGIN: (&str, &str) = ("access-control-allow-origin", "*");

/// An RFC 9728 document and where it is served.
struct Document {
    host: String,
    path: String,
    body: Rc<str>,
}

/// A request's policy, and whether its body is gated (a tool with scopes
/// may be called in it).
pub struct Route {
    pub policy: PolicyId,
    pub gated: bool,
}

pub struct Select {
    policies: Rc<Policies>,
    documents: Vec<Document>,
    /// The MCP endpoint, with tool scopes: the gate looks at the path too.
    gate: Option<String>,
}

impl Select {
    pub fn new(policies: Rc<Policies>, metadata: &[plugin_config::Metadata], gate: Option<&str>) -> Select {
        let documents = metadata
            .iter()
            .map(|m| Document {
                host: m.host.clone(),
                path: m.path.clone(),
                body: metadata_document(m).into(),
            })
            .collect();
        Select {
            policies,
            documents,
            gate: gate.map(String::from),
        }
    }

    /// The current request's route, or what to do with it instead;
    /// `body_follows` unless its headers end it.
    pub fn route(&self, host: &dyn Host, body_follows: bool) -> Result<Route, Outcome> {
        let routes = self.policies.routes();
        let path = if !self.documents.is_empty() || routes.by_path() || self.gate.is_some() {
            host.request_header(":path")
        } else {
            None
        };
        if let Some(reply) = self.metadata(host, path.as_deref()) {
            return Err(Outcome::Answer(reply));
        }
        let authority = if routes.by_host() {
            host.request_header(":authority")
        } else {
            None
        };
        // A POST with a body to the MCP endpoint may call a tool with scopes.
        let gate = self.gate.as_deref().filter(|_| body_follows && is_post(host));
        let (authority, path) = (authority.unwrap_or_default(), path.unwrap_or_default());
        match self.policies.select(&authority, &path, gate) {
            Ok((Selection::Policy(policy), gated)) => Ok(Route { policy, gated }),
            Ok((Selection::Skip, _)) => Err(Outcome::Pass(Unjudged::SkipRoute)),
            Ok((Selection::Nothing, _)) => {
                log::warn!("rejected: no rule matched and there is no top-level policy");
                let d = self.policies.fallback_challenges().invalid_request("no route");
                Err(Outcome::Deny(d, Who::default()))
            }
            Err(refusal) => {
                log::info!("rejected: {}", refusal.description());
                let d = self
                    .policies
                    .fallback_challenges()
                    .invalid_request(refusal.description());
                Err(Outcome::Deny(d, Who::default()))
            }
        }
    }

    /// The answer to an RFC 9728 metadata request, which needs no
    /// authentication; `None` for any other request.
    fn metadata(&self, host: &dyn Host, path: Option<&str>) -> Option<Reply> {
        let path = path?.split('?').next()?;
        if !self.documents.iter().any(|d| d.path == path) {
            return None;
        }
        // Only the resource's own host: another host's well-known path is
        // that host's business.
        let authority = host.request_header(":authority").unwrap_or_default();
        let doc = self
            .documents
            .iter()
            .find(|d| d.path == path && host_matches(&d.host, &authority))?;
        Some(match host.request_header(":method").as_deref().unwrap_or_default() {
            "GET" | "HEAD" => Reply {
                status: 200,
                headers: &[
                    ("content-type", "application/json"),
                    ("cache-control", "max-age=300"),
                    ANY_ORIGIN,
                ],
                body: Rc::clone(&doc.body),
            },
            "OPTIONS" => Reply {
                status: 204,
                headers: &[
                    ANY_ORIGIN,
                    ("access-control-allow-methods", "GET, HEAD, OPTIONS"),
                    ("access-control-allow-headers", "authorization, mcp-protocol-version"),
                    ("access-control-max-age", "86400"),
                ],
                body: Rc::from(""),
            },
            _ => Reply {
                status: 405,
                headers: &[("allow", "GET, HEAD, OPTIONS")],
                body: Rc::from(""),
            },
        })
    }
}

fn is_post(host: &dyn Host) -> bool {
    host.request_header(":method")
        .is_some_and(|m| m.eq_ignore_ascii_case("POST"))
}
