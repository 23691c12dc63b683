//! Which rule a request meets: the first `rules` entry whose match fits
//! its `:authority` and `:path`, if any (else the top-level policy applies).
//!
//! Without rules nothing is read. With a `pathPrefix` rule, a path that is
//! not in normal form (`//`, dot segments, backslashes, or encoded `.`, `/`
//! or `\`) is refused: the upstream may resolve `/healthz/../admin` to
//! `/admin`, so matching its raw text would let a request pick a laxer
//! rule. Envoy's `normalize_path` and `merge_slashes` (Istio sets both)
//! make such paths rare before they reach the filter.

use plugin_config::Match;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Let the request through untouched.
    Skip,
    /// Apply policy `n` of the policy table.
    Policy(usize),
}

/// The path cannot be matched safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotNormal;

pub struct Routes {
    rules: Vec<(Match, Route)>,
    by_host: bool,
    by_path: bool,
}

impl Routes {
    pub fn new(rules: Vec<(Match, Route)>) -> Routes {
        Routes {
            by_host: rules.iter().any(|(m, _)| !m.hosts.is_empty()),
            by_path: rules.iter().any(|(m, _)| m.path_prefix.is_some()),
            rules,
        }
    }

    /// Whether any rule looks at `:authority` / `:path`: the caller reads
    /// only the headers a match needs (each read is a call into the proxy).
    pub fn by_host(&self) -> bool {
        self.by_host
    }

    pub fn by_path(&self) -> bool {
        self.by_path
    }

    /// The route of the first rule that fits a request with these
    /// `:authority` and `:path` values (`None` when not read or absent);
    /// `None` if no rule does.
    pub fn select(&self, authority: Option<&str>, path: Option<&str>) -> Result<Option<Route>, NotNormal> {
        if self.rules.is_empty() {
            return Ok(None);
        }
        let authority = authority.unwrap_or_default();
        let path = path.unwrap_or_default();
        let path = path.split(['?', '#']).next().unwrap_or_default();
        if self.by_path && !is_normal(path) {
            return Err(NotNormal);
        }
        Ok(self
            .rules
            .iter()
            .find(|(m, _)| {
                (m.hosts.is_empty() || m.hosts.iter().any(|h| host_matches(h, authority)))
                    && m.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
            })
            .map(|(_, r)| *r))
    }
}

/// `pattern` (lower-case, from the config) against the request's authority,
/// ignoring case; without a port in the pattern, the authority's port is ignored.
pub fn host_matches(pattern: &str, authority: &str) -> bool {
    let (name, port) = split_port(pattern);
    let (req_name, req_port) = split_port(authority);
    if port.is_some() && port != req_port {
        return false;
    }
    match name.strip_prefix('*') {
        Some("") => true,
        // `*.example.com`: one or more labels before the suffix.
        Some(suffix) => {
            req_name.len() > suffix.len()
                && req_name
                    .get(req_name.len() - suffix.len()..)
                    .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
        }
        None => name.eq_ignore_ascii_case(req_name),
    }
}

fn split_port(s: &str) -> (&str, Option<&str>) {
    match s.rsplit_once(':') {
        Some((n, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (n, Some(p)),
        _ => (s, None),
    }
}

fn is_normal(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    path.starts_with('/')
        && !path.contains("//")
        && !path.contains('\\')
        && !["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e))
        && !path.split('/').any(|seg| seg == "." || seg == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(hosts: &[&str], prefix: Option<&str>) -> Match {
        Match {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path_prefix: prefix.map(String::from),
        }
    }

    fn select(routes: &Routes, authority: &str, path: &str) -> Result<Option<Route>, NotNormal> {
        routes.select(Some(authority), Some(path))
    }

    #[test]
    fn no_rules_is_the_default_and_needs_no_headers() {
        let routes = Routes::new(vec![]);
        assert!(!routes.by_host() && !routes.by_path());
        assert_eq!(routes.select(None, None), Ok(None));
        let routes = Routes::new(vec![(m(&["h"], None), Route::Skip)]);
        assert!(routes.by_host() && !routes.by_path());
    }

    #[test]
    fn first_match_wins_and_unmatched_gets_the_default() {
        let routes = Routes::new(vec![
            (m(&["api.example.com"], Some("/github/")), Route::Policy(1)),
            (m(&[], Some("/healthz")), Route::Skip),
            (m(&["*.example.org"], None), Route::Policy(2)),
            (m(&[], Some("/github/")), Route::Policy(3)),
        ]);
        assert_eq!(
            select(&routes, "API.example.com:443", "/github/x?y=1"),
            Ok(Some(Route::Policy(1)))
        );
        assert_eq!(
            select(&routes, "other.example.com", "/github/x"),
            Ok(Some(Route::Policy(3)))
        );
        assert_eq!(select(&routes, "api.example.com", "/healthz"), Ok(Some(Route::Skip)));
        assert_eq!(select(&routes, "a.b.example.org", "/mcp"), Ok(Some(Route::Policy(2))));
        assert_eq!(select(&routes, "example.org", "/mcp"), Ok(None), "*. needs a label");
        assert_eq!(select(&routes, "api.example.com", "/mcp"), Ok(None));
    }

    #[test]
    fn ports_match_only_when_the_pattern_has_one() {
        let routes = Routes::new(vec![(m(&["api.example.com:8443", "*"], None), Route::Skip)]);
        assert_eq!(select(&routes, "x", "/"), Ok(Some(Route::Skip)), "* matches any host");
        let routes = Routes::new(vec![(m(&["api.example.com:8443"], None), Route::Skip)]);
        assert_eq!(select(&routes, "api.example.com:8443", "/"), Ok(Some(Route::Skip)));
        assert_eq!(select(&routes, "api.example.com", "/"), Ok(None));
        assert_eq!(select(&routes, "api.example.com:443", "/"), Ok(None));
    }

    #[test]
    fn paths_not_in_normal_form_are_refused_when_paths_are_matched() {
        let routes = Routes::new(vec![(m(&[], Some("/healthz")), Route::Skip)]);
        for bad in [
            "/healthz/../mcp",
            "/healthz/..",
            "/healthz/./x",
            "//healthz",
            "/healthz%2F..%2Fmcp",
            "/healthz/%2e%2e/mcp",
            "/healthz\\..\\mcp",
            "healthz",
        ] {
            assert_eq!(select(&routes, "h", bad), Err(NotNormal), "{bad}");
        }
        assert_eq!(
            select(&routes, "h", "/healthz?x=/../"),
            Ok(Some(Route::Skip)),
            "the query is not the path"
        );
        assert_eq!(select(&routes, "h", "/mcp/..x"), Ok(None), "only whole dot segments");
        // Host-only rules do not care about the path.
        let routes = Routes::new(vec![(m(&["h"], None), Route::Skip)]);
        assert_eq!(select(&routes, "h", "/a/../b"), Ok(Some(Route::Skip)));
    }
}
