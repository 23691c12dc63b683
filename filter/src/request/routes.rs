//! Which policy a request gets: the first `rules` entry whose match fits
//! its `:authority` and `:path`, else the default (the top-level sections).
//!
//! Without rules nothing is read. Paths are matched through a test the
//! caller gives (`select`), once for every reading of the path
//! (`request::path`); hosts are matched here.

use plugin_config::Match;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Let the request through untouched.
    Skip,
    /// Apply policy `n` (0 is the default).
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

    /// The route for a request to `authority` (empty when not read) whose
    /// path starts with a prefix when `starts_with` says so.
    pub fn select(&self, authority: &str, starts_with: impl Fn(&str) -> bool) -> Route {
        self.for_host(authority)
            .find(|(m, _)| m.path_prefix.as_deref().is_none_or(&starts_with))
            .map_or(Route::Policy(0), |(_, r)| *r)
    }

    fn for_host<'a>(&'a self, authority: &'a str) -> impl Iterator<Item = &'a (Match, Route)> {
        self.rules
            .iter()
            .filter(move |(m, _)| m.hosts.is_empty() || m.hosts.iter().any(|h| host_matches(h, authority)))
    }
}

/// `pattern` (lower-case, from the config) against the request's authority,
/// ignoring case; without a port in the pattern, the authority's port is ignored.
fn host_matches(pattern: &str, authority: &str) -> bool {
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
    fn select(routes: &Routes, authority: &str, path: &str) -> Route {
        routes.select(authority, |p| path.starts_with(p))
    }

    #[test]
    fn no_rules_is_the_default_and_needs_no_headers() {
        let routes = Routes::new(vec![]);
        assert!(!routes.by_host() && !routes.by_path() && !routes.path_decides(""));
        assert_eq!(select(&routes, "", ""), Route::Policy(0));
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
        assert_eq!(select(&routes, "API.example.com:443", "/github/x"), Route::Policy(1));
        assert_eq!(select(&routes, "other.example.com", "/github/x"), Route::Policy(3));
        assert_eq!(select(&routes, "api.example.com", "/healthz"), Route::Skip);
        assert_eq!(select(&routes, "a.b.example.org", "/mcp"), Route::Policy(2));
        assert_eq!(
            select(&routes, "example.org", "/mcp"),
            Route::Policy(0),
            "*. needs a label"
        );
        assert_eq!(select(&routes, "api.example.com", "/mcp"), Route::Policy(0));
    }

    #[test]
    fn ports_match_only_when_the_pattern_has_one() {
        let routes = Routes::new(vec![(m(&["api.example.com:8443", "*"], None), Route::Skip)]);
        assert_eq!(select(&routes, "x", "/"), Route::Skip, "* matches any host");
        let routes = Routes::new(vec![(m(&["api.example.com:8443"], None), Route::Skip)]);
        assert_eq!(select(&routes, "api.example.com:8443", "/"), Route::Skip);
        assert_eq!(select(&routes, "api.example.com", "/"), Route::Policy(0));
        assert_eq!(select(&routes, "api.example.com:443", "/"), Route::Policy(0));
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
