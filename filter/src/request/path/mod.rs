//! What a request's path decides, judged on every reading of it
//! (`reading`): the route (`request::routes`), and whether the body is read
//! for the tool gate (`edge::tools`). The rule: **when any common reading of
//! a path would be decided differently from its exact text, the request is
//! refused with 400; otherwise it gets the decision all readings agree on.**
//! Paths are read for matching only: the upstream gets the path as it came.
//!
//! Only a path that can change the decision is read: a host whose first
//! matching rule takes any path is decided without it (`%2F` and all),
//! unless its route is a policy and the request a POST the gate may judge.

pub mod reading;

use crate::request::routes::{HostRules, Route};
use reading::{Reading, Unjudgeable};
use std::borrow::Cow;

/// What a request's path decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The rule's route; `None` when no rule fits (the top-level policy).
    pub route: Option<Route>,
    /// The body must be read: a tool with scopes may be called in it.
    pub gated: bool,
}

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Some reading is decided differently from the exact text.
    Ambiguous,
    Unjudgeable(Unjudgeable),
}

impl Refusal {
    /// The 400's `error_description`.
    pub fn description(self) -> &'static str {
        match self {
            Refusal::Ambiguous => "ambiguous path: servers may read it as a path the filter decides differently",
            Refusal::Unjudgeable(Unjudgeable::Tangled) => {
                "ambiguous path: it needs more than one rewrite to read, which servers apply in different orders"
            }
            Refusal::Unjudgeable(Unjudgeable::Malformed) => "malformed path",
        }
    }
}

/// Whether the path can change the decision: a rule for the host looks at
/// it, or the request's route is a policy and the gate may judge its body.
pub fn needs_path(rules: &HostRules, gate: Option<&str>) -> bool {
    rules.path_decides() || (gate.is_some() && rules.select(|_| false) != Some(Route::Skip))
}

/// The decision for a request whose host's rules are `rules`, at `path`
/// (`:path`, query included; empty when not read, which it need not be
/// where `needs_path` says no). `gate` is the MCP endpoint when the request
/// is a POST with a body and tools have scopes.
pub fn target(rules: &HostRules, path: &str, gate: Option<&str>) -> Result<Target, Refusal> {
    if !needs_path(rules, gate) {
        return Ok(Target {
            route: rules.select(|_| false),
            gated: false,
        });
    }
    let path = path.as_bytes();
    let path = path.split(|&b| b == b'?' || b == b'#').next().unwrap_or(path);
    let rewrites = reading::rewrites(path).map_err(Refusal::Unjudgeable)?;
    let decide = |r: &Reading| {
        let route = rules.select(|prefix| r.starts_with(prefix));
        Target {
            route,
            gated: route != Some(Route::Skip) && gate.is_some_and(|endpoint| r.is(endpoint)),
        }
    };
    let exact = decide(&Reading::exact(path));
    for with in rewrites.subsets() {
        let text = if with.is_empty() {
            Cow::Borrowed(path)
        } else {
            Cow::Owned(reading::rewrite(path, with))
        };
        let [as_is, folded] = Reading::all(&text);
        // The exact text as it is was decided first.
        if (!with.is_empty() && decide(&as_is) != exact) || decide(&folded) != exact {
            return Err(Refusal::Ambiguous);
        }
    }
    Ok(exact)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::routes::Routes;
    use plugin_config::Match;

    fn rule(hosts: &[&str], prefix: Option<&str>, route: Route) -> (Match, Route) {
        let m = Match {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path_prefix: prefix.map(String::from),
        };
        (m, route)
    }

    fn to(route: Route) -> Result<Target, Refusal> {
        Ok(Target {
            route: Some(route),
            gated: false,
        })
    }

    /// No rule fits: the top-level policy.
    const DEFAULT: Result<Target, Refusal> = Ok(Target {
        route: None,
        gated: false,
    });

    const AMBIGUOUS: Result<Target, Refusal> = Err(Refusal::Ambiguous);
    const GATED: Result<Target, Refusal> = Ok(Target {
        route: None,
        gated: true,
    });

    #[test]
    fn a_stricter_prefix_gets_every_reading_or_400() {
        let routes = Routes::new(vec![rule(&[], Some("/admin/"), Route::Policy(1))]);
        let at = |p: &str| target(&routes.for_host("h"), p, None);
        assert_eq!(at("/admin/users?x=/../"), to(Route::Policy(1)));
        assert_eq!(at("/admin"), to(Route::Policy(1)), "/admin/ covers /admin");
        assert_eq!(at("/admin/./users"), to(Route::Policy(1)), "every reading agrees");
        assert_eq!(at("/public//x"), DEFAULT);
        assert_eq!(at("/public/../x"), DEFAULT);
        assert_eq!(at("/administrator"), DEFAULT);
        for variant in [
            "/Admin/users",
            "/ADMIN",
            "/%61dmin/users",
            "/%41dmin/users",
            "/admin;v=1/users",
            "//admin/users",
            "/x/../admin/users",
            "/admin%2Fusers",
            "/admin%5cusers",
            "/admin\\users",
            "/admin/../x",
        ] {
            assert_eq!(at(variant), AMBIGUOUS, "{variant}");
        }
        assert_eq!(
            at("/a/..;/admin/users"),
            Err(Refusal::Unjudgeable(Unjudgeable::Tangled))
        );
        assert_eq!(at("/admin%2"), Err(Refusal::Unjudgeable(Unjudgeable::Malformed)));
    }

    #[test]
    fn the_exact_and_the_folded_reading_may_pick_different_rules() {
        let routes = Routes::new(vec![
            rule(&[], Some("/Admin/"), Route::Policy(1)),
            rule(&[], Some("/admin/"), Route::Policy(2)),
            rule(&[], Some("/api/"), Route::Skip),
            rule(&[], Some("/API/v2/"), Route::Policy(3)),
        ]);
        let at = |p: &str| target(&routes.for_host("h"), p, None);
        assert_eq!(at("/Admin/x"), to(Route::Policy(1)), "both readings pick the first");
        assert_eq!(at("/admin/x"), AMBIGUOUS, "exact: the second; folded: the first");
        assert_eq!(at("/ADMIN/x"), AMBIGUOUS, "exact: no rule; folded: the first");
        assert_eq!(at("/api/v2/x"), to(Route::Skip), "the skip comes first in both");
        assert_eq!(at("/API/v2/x"), AMBIGUOUS, "exact: policy 3; folded: skip");
    }

    #[test]
    fn the_gate_judges_the_endpoint_and_refuses_its_variants() {
        let routes = Routes::new(vec![]);
        let post = |p: &str| target(&routes.for_host(""), p, Some("/mcp"));
        assert_eq!(post("/mcp"), GATED);
        assert_eq!(post("/mcp/?session=1"), GATED, "with or without a trailing slash");
        assert_eq!(post("/mcpx"), DEFAULT);
        assert_eq!(post("/mcp/tools"), DEFAULT);
        assert_eq!(post("/other%2Fx"), DEFAULT, "no reading is the endpoint");
        for variant in [
            "/MCP",
            "/Mcp/",
            "/%6Dcp",
            "/mcp;x",
            "//mcp",
            "/x/../mcp",
            "/mcp/.",
            "/mcp%2F",
            "/mcp\\",
        ] {
            assert_eq!(post(variant), AMBIGUOUS, "{variant}");
        }
        // Without a gate (not a POST with a body) the path is never read.
        assert_eq!(target(&routes.for_host(""), "/MCP%zz", None), DEFAULT);
    }

    #[test]
    fn a_skipped_reading_of_the_endpoint_is_ambiguous_too() {
        let routes = Routes::new(vec![rule(&[], Some("/mcp/public"), Route::Skip)]);
        let post = |p: &str| target(&routes.for_host(""), p, Some("/mcp"));
        assert_eq!(post("/mcp/public"), to(Route::Skip), "skipped: nothing to gate");
        assert_eq!(post("/mcp/Public"), AMBIGUOUS);
    }

    #[test]
    fn hosts_whose_route_takes_any_path_are_untouched() {
        let routes = Routes::new(vec![
            rule(&["other.example"], None, Route::Skip),
            rule(&["api.example"], None, Route::Policy(1)),
            rule(&[], Some("/admin/"), Route::Policy(2)),
        ]);
        for p in ["/a%2Fb/../%zz;x", "relative", ""] {
            assert_eq!(
                target(&routes.for_host("other.example"), p, None),
                to(Route::Skip),
                "{p:?}"
            );
            assert_eq!(
                target(&routes.for_host("other.example"), p, Some("/mcp")),
                to(Route::Skip),
                "{p:?}"
            );
            assert_eq!(
                target(&routes.for_host("api.example"), p, None),
                to(Route::Policy(1)),
                "{p:?}"
            );
        }
        // A policy route with the gate configured still has its POSTs read.
        assert_eq!(target(&routes.for_host("api.example"), "/MCP", Some("/mcp")), AMBIGUOUS);
        assert_eq!(target(&routes.for_host("elsewhere"), "/Admin/", None), AMBIGUOUS);
    }
}
