//! Which rule a request meets: the first `rules` entry whose match fits
//! its `:authority` and `:path`, if any (else the top-level policy applies).
//!
//! Without rules nothing is read. Paths are matched through a test the
//! caller gives (`select`), once for every reading of the path
//! (`request::path`); hosts are matched here.

use plugin_config::Match;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Let the request through untouched.
    Skip,
    /// Apply policy `n` of the policy table.
    Policy(usize),
}

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

    /// Whether the path can change the route of a request to `authority`:
    /// some rule for its host has a `pathPrefix` and comes before the first
    /// one without (which matches any path).
    pub fn path_decides(&self, authority: &str) -> bool {
        self.for_host(authority)
            .next()
            .is_some_and(|(m, _)| m.path_prefix.is_some())
    }

    /// The route of the first rule that fits a request to `authority`
    /// (empty when not read) whose path starts with a prefix when
    /// `starts_with` says so; `None` if no rule does.
    pub fn select(&self, authority: &str, starts_with: impl Fn(&str) -> bool) -> Option<Route> {
        self.for_host(authority)
            .find(|(m, _)| m.path_prefix.as_deref().is_none_or(&starts_with))
            .map(|(_, r)| *r)
    }

    fn for_host<'a>(&'a self, authority: &'a str) -> impl Iterator<Item = &'a (Match, Route)> {
        self.rules
            .iter()
            .filter(move |(m, _)| m.hosts.is_empty() || m.hosts.iter().any(|h| host_matches(h, authority)))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn m(hosts: &[&str], prefix: Option<&str>) -> Match {
        Match {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path_prefix: prefix.map(String::from),
        }
    }

    /// The route by the exact text (`request::path` adds the other readings).
    fn select(routes: &Routes, authority: &str, path: &str) -> Option<Route> {
        routes.select(authority, |p| path.starts_with(p))
    }

    #[test]
    fn no_rules_is_the_default_and_needs_no_headers() {
        let routes = Routes::new(vec![]);
        assert!(!routes.by_host() && !routes.by_path() && !routes.path_decides(""));
        assert_eq!(select(&routes, "", ""), None);
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
            select(&routes, "API.example.com:443", "/github/x"),
            Some(Route::Policy(1))
        );
        assert_eq!(
            select(&routes, "other.example.com", "/github/x"),
            Some(Route::Policy(3))
        );
        assert_eq!(select(&routes, "api.example.com", "/healthz"), Some(Route::Skip));
        assert_eq!(select(&routes, "a.b.example.org", "/mcp"), Some(Route::Policy(2)));
        assert_eq!(select(&routes, "example.org", "/mcp"), None, "*. needs a label");
        assert_eq!(select(&routes, "api.example.com", "/mcp"), None);
    }

    #[test]
    fn ports_match_only_when_the_pattern_has_one() {
        let routes = Routes::new(vec![(m(&["api.example.com:8443", "*"], None), Route::Skip)]);
        assert_eq!(select(&routes, "x", "/"), Some(Route::Skip), "* matches any host");
        let routes = Routes::new(vec![(m(&["api.example.com:8443"], None), Route::Skip)]);
        assert_eq!(select(&routes, "api.example.com:8443", "/"), Some(Route::Skip));
        assert_eq!(select(&routes, "api.example.com", "/"), None);
        assert_eq!(select(&routes, "api.example.com:443", "/"), None);
    }

    #[test]
    fn the_path_decides_only_before_a_rule_that_takes_any_path() {
        let routes = Routes::new(vec![
            (m(&["skip.example"], None), Route::Skip),
            (m(&["*.example"], Some("/admin/")), Route::Policy(1)),
            (m(&["*.example"], None), Route::Policy(2)),
            (m(&[], Some("/healthz")), Route::Skip),
        ]);
        assert!(!routes.path_decides("skip.example"), "its host-only rule comes first");
        assert!(routes.path_decides("api.example"));
        assert!(routes.path_decides("elsewhere.org"));
        let routes = Routes::new(vec![(m(&["h"], None), Route::Skip)]);
        assert!(!routes.path_decides("h") && !routes.path_decides("other"));
    }
}
