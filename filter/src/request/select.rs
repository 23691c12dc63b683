//! The first phase: which policy a request gets. RFC 9728 metadata requests
//! are answered here, before any rule is matched, each resource's at its
//! own well-known path on its own host (other hosts' well-known paths are
//! theirs); then the
//! rules pick the policy (or a skip) from `:authority` and `:path`, read
//! only when something needs them, since each read is a call into the proxy,
//! and whether the body gate judges the request. The path is judged on
//! every common reading of it (`request::path`): one servers may read as a
//! path decided differently gets 400.

use crate::host::Host;
use crate::request::metadata::Documents;
use crate::request::outcome::{Outcome, Unjudged, Who};
use crate::request::path;
use crate::request::policy::{Policies, PolicyId, Selection};
use std::rc::Rc;

/// A request's policy, and whether its body is gated (a tool with scopes
/// may be called in it).
pub struct Route {
    pub policy: PolicyId,
    pub gated: bool,
}

pub struct Select {
    policies: Rc<Policies>,
    documents: Documents,
    /// The MCP endpoint, with tool scopes: the gate looks at the path too.
    gate: Option<String>,
}

impl Select {
    pub fn new(policies: Rc<Policies>, metadata: &[plugin_config::Metadata], gate: Option<&str>) -> Select {
        Select {
            policies,
            documents: Documents::new(metadata),
            gate: gate.map(String::from),
        }
    }

    /// The current request's route, or what to do with it instead;
    /// `body_follows` unless its headers end it. `:authority` is read when
    /// a rule looks at hosts, `:path` when a document, a rule or the gate
    /// may need it for this host.
    pub fn route(&self, host: &dyn Host, body_follows: bool) -> Result<Route, Outcome> {
        let routes = self.policies.routes();
        let authority = if routes.by_host() {
            host.request_header(":authority")
        } else {
            None
        };
        let rules = routes.for_host(authority.as_deref().unwrap_or_default());
        // A POST with a body to the MCP endpoint may call a tool with scopes.
        let gate = self.gate.as_deref().filter(|_| body_follows && is_post(host));
        let path = if self.documents.may_serve(authority.as_deref()) || path::needs_path(&rules, gate) {
            host.request_header(":path").unwrap_or_default()
        } else {
            String::new()
        };
        if self.documents.has_path(&path) {
            let read;
            let authority = match &authority {
                Some(a) => a.as_str(),
                None => {
                    read = host.request_header(":authority").unwrap_or_default();
                    read.as_str()
                }
            };
            let method = host.request_header(":method").unwrap_or_default();
            if let Some(reply) = self.documents.reply(authority, &path, &method) {
                return Err(Outcome::Answer(reply));
            }
        }
        match self.policies.select(&rules, &path, gate) {
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
}

fn is_post(host: &dyn Host) -> bool {
    host.request_header(":method")
        .is_some_and(|m| m.eq_ignore_ascii_case("POST"))
}
