//! Which rule a request meets: the first `rules` entry whose match fits
//! its `:authority` and `:path`, if any (else the top-level policy applies).
//!
//! Without rules nothing is read. Paths are matched through a test the
//! caller gives (`select`), once for every reading of the path
//! (`request::path`); hosts are matched here.

use plugin_config::Match;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Let the request through untouched.
    Skip,
    /// Apply policy `n` of the policy table.
    Policy(usize),
}

/// Rules by index, in their order in the config.
type Ids = Vec<u32>;

/// The rules, and for each host pattern the rules that may fit its
/// requests, merged in rule order at configure time: matching costs a map
/// lookup or two whatever the number of rules, and first-match order holds.
pub struct Routes {
    rules: Vec<(Match, Route)>,
    /// By exact host name (lower-case, no port): its own rules, the
    /// wildcard rules that fit it, and the rules for any host.
    exact: HashMap<String, Ids>,
    /// By wildcard suffix (`.example.com` for `*.example.com`): its rules
    /// and the rules for any host.
    wildcard: HashMap<String, Ids>,
    /// Rules for any host (no `hosts`, or `*`).
    any: Ids,
    by_host: bool,
    by_path: bool,
}

impl Routes {
    pub fn new(rules: Vec<(Match, Route)>) -> Routes {
        let mut exact: HashMap<String, Ids> = HashMap::new();
        let mut wildcard: HashMap<String, Ids> = HashMap::new();
        let mut any = Ids::new();
        for (i, (m, _)) in (0u32..).zip(&rules) {
            let names = m.hosts.iter().map(|h| split_port(h).0);
            if m.hosts.is_empty() || m.hosts.iter().any(|h| split_port(h).0 == "*") {
                any.push(i);
            }
            for name in names.filter(|n| *n != "*") {
                let (map, key) = match name.strip_prefix('*') {
                    Some(suffix) => (&mut wildcard, suffix),
                    None => (&mut exact, name),
                };
                map.entry(key.to_string()).or_default().push(i);
            }
        }
        // Each exact host also meets the wildcards that fit it; every list
        // also holds the rules for any host.
        for (name, ids) in exact.iter_mut() {
            for (suffix, wild) in &wildcard {
                if name.len() > suffix.len() && name.ends_with(suffix.as_str()) {
                    ids.extend(wild);
                }
            }
        }
        for ids in exact.values_mut().chain(wildcard.values_mut()) {
            ids.extend(&any);
            ids.sort_unstable();
            ids.dedup();
        }
        Routes {
            by_host: rules.iter().any(|(m, _)| !m.hosts.is_empty()),
            by_path: rules.iter().any(|(m, _)| m.path_prefix.is_some()),
            rules,
            exact,
            wildcard,
            any,
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

    /// The rules that may fit a request to `authority` (empty when not
    /// read), found once for all the readings of its path.
    pub fn for_host<'a>(&'a self, authority: &'a str) -> HostRules<'a> {
        let name = split_port(authority).0;
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        let ids = match self.exact.get(name) {
            Some(ids) => Candidates::Shared(ids),
            None => self.wildcards(name),
        };
        HostRules {
            routes: self,
            authority,
            ids,
        }
    }

    /// The rules of the wildcards that fit `name` (`*.example.com` needs a
    /// label before `.example.com`), with those for any host.
    fn wildcards<'a>(&'a self, name: &str) -> Candidates<'a> {
        if self.wildcard.is_empty() {
            return Candidates::Shared(&self.any);
        }
        let mut found: Vec<&Ids> = name
            .match_indices('.')
            .filter(|(at, _)| *at > 0)
            .filter_map(|(at, _)| name.get(at..).and_then(|suffix| self.wildcard.get(suffix)))
            .collect();
        match found.len() {
            0 => Candidates::Shared(&self.any),
            1 => Candidates::Shared(found.swap_remove(0)),
            _ => {
                let mut ids: Ids = found.into_iter().flatten().copied().collect();
                ids.sort_unstable();
                ids.dedup();
                Candidates::Owned(ids)
            }
        }
    }
}

enum Candidates<'a> {
    Shared(&'a [u32]),
    /// A host that several wildcards fit: their lists merged.
    Owned(Ids),
}

/// The rules that may fit one request's host, in rule order.
pub struct HostRules<'a> {
    routes: &'a Routes,
    authority: &'a str,
    ids: Candidates<'a>,
}

impl HostRules<'_> {
    /// Whether the path can change the route: the first rule for this host
    /// has a `pathPrefix` (one without matches any path).
    pub fn path_decides(&self) -> bool {
        self.fitting().next().is_some_and(|(m, _)| m.path_prefix.is_some())
    }

    /// The route of the first rule that fits, for a path that starts with
    /// a prefix when `starts_with` says so; `None` if no rule does.
    pub fn select(&self, starts_with: impl Fn(&str) -> bool) -> Option<Route> {
        self.fitting()
            .find(|(m, _)| m.path_prefix.as_deref().is_none_or(&starts_with))
            .map(|(_, r)| *r)
    }

    /// The candidates whose hosts fit, ports included.
    fn fitting(&self) -> impl Iterator<Item = &(Match, Route)> {
        let ids = match &self.ids {
            Candidates::Shared(ids) => ids,
            Candidates::Owned(ids) => ids.as_slice(),
        };
        let authority = self.authority;
        ids.iter()
            .filter_map(|i| self.routes.rules.get(*i as usize))
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

/// The host name of an authority or host pattern, without its port.
pub fn host_name(authority: &str) -> &str {
    split_port(authority).0
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
        routes.for_host(authority).select(|p| path.starts_with(p))
    }

    #[test]
    fn no_rules_is_the_default_and_needs_no_headers() {
        let routes = Routes::new(vec![]);
        assert!(!routes.by_host() && !routes.by_path() && !routes.for_host("").path_decides());
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
        assert!(
            !routes.for_host("skip.example").path_decides(),
            "its host-only rule comes first"
        );
        assert!(routes.for_host("api.example").path_decides());
        assert!(routes.for_host("elsewhere.org").path_decides());
        let routes = Routes::new(vec![(m(&["h"], None), Route::Skip)]);
        assert!(!routes.for_host("h").path_decides() && !routes.for_host("other").path_decides());
    }

    #[test]
    fn first_match_order_holds_across_exact_wildcard_and_any_host_rules() {
        let routes = Routes::new(vec![
            (m(&[], Some("/first")), Route::Policy(0)),
            (m(&["*.example.com"], Some("/w")), Route::Policy(1)),
            (m(&["a.b.example.com"], Some("/w")), Route::Policy(2)),
            (m(&["*.b.example.com"], None), Route::Policy(3)),
            (m(&["a.b.example.com:8443"], None), Route::Policy(4)),
            (m(&[], None), Route::Skip),
        ]);
        let at = |authority: &str, path: &str| select(&routes, authority, path);
        assert_eq!(
            at("a.b.example.com", "/first/x"),
            Some(Route::Policy(0)),
            "any-host rule first"
        );
        assert_eq!(
            at("a.b.example.com", "/w"),
            Some(Route::Policy(1)),
            "the wildcard comes before the exact"
        );
        assert_eq!(
            at("A.B.EXAMPLE.COM", "/x"),
            Some(Route::Policy(3)),
            "two wildcards fit; case ignored"
        );
        assert_eq!(at("c.b.example.com", "/w"), Some(Route::Policy(1)));
        assert_eq!(at("c.b.example.com", "/x"), Some(Route::Policy(3)));
        assert_eq!(at("x.example.com", "/x"), Some(Route::Skip));
        assert_eq!(
            at("b.example.com", "/x"),
            Some(Route::Skip),
            "*.b.example.com needs a label"
        );
        assert_eq!(at("elsewhere.org", "/w"), Some(Route::Skip));
    }

    #[test]
    fn a_hundred_hosts_are_a_lookup_each() {
        let mut rules: Vec<(Match, Route)> = (0..100)
            .map(|i| (m(&[&format!("mcp{i}.example.com")], Some("/mcp")), Route::Policy(i)))
            .collect();
        rules.push((m(&[], None), Route::Skip));
        let routes = Routes::new(rules);
        assert_eq!(select(&routes, "mcp99.example.com", "/mcp"), Some(Route::Policy(99)));
        assert_eq!(
            select(&routes, "mcp7.example.com:443", "/mcp/x"),
            Some(Route::Policy(7))
        );
        assert_eq!(select(&routes, "mcp7.example.com", "/other"), Some(Route::Skip));
        assert_eq!(select(&routes, "app.example.com", "/mcp"), Some(Route::Skip));
        assert!(
            !routes.for_host("app.example.com").path_decides(),
            "one lookup says the path is not read"
        );
    }
}
