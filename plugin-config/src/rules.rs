//! `rules`: per-route policy for gateways that front several backends. The
//! first rule whose `match` fits a request decides; a request no rule
//! matches gets the top-level sections.

use crate::error::ConfigError;
use crate::exchange::{self, TokenExchange};
use crate::field::{non_empty, plain_path, scope_list};
use crate::oidc::{self, Oidc};
use crate::raw::{RawOidc, RawRule};

#[derive(Debug, Clone)]
pub struct Rule {
    pub matcher: Match,
    pub action: Action,
}

/// Every condition given must hold; none given matches every request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// Lower-case host patterns: `api.example.com`, `*.example.com` or `*`,
    /// each optionally with `:port`. Empty: any host.
    pub hosts: Vec<String>,
    /// A plain path (`field::plain_path`); `/admin/` also covers `/admin`.
    pub path_prefix: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Action {
    /// Let the request through untouched: no validation, no exchange.
    Skip,
    /// Validate against `oidc`, and exchange as `exchange` says.
    Apply {
        /// The rule's `oidc` merged over the top-level one, validated.
        oidc: Box<Oidc>,
        exchange: Exchange,
    },
}

#[derive(Debug, Clone)]
pub enum Exchange {
    /// The top-level `tokenExchange`, if any.
    Default,
    /// Validate only; forward the caller's token as it came.
    None,
    Replace(Box<TokenExchange>),
}

/// Validates `rules`; `top` is the top-level `oidc` as written (perhaps
/// partial), which each rule's own keys are merged over.
pub fn rules(raw: Vec<RawRule>, top: &RawOidc, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Rule>, ConfigError> {
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| rule(r, &format!("rules[{i}]"), top, env))
        .collect()
}

/// Whether a rule matches every request: the catch-all that may stand last.
pub fn matches_everything(raw: &RawRule) -> bool {
    raw.matcher.hosts.is_none() && raw.matcher.path_prefix.is_none()
}

fn rule(raw: RawRule, at: &str, top: &RawOidc, env: &dyn Fn(&str) -> Option<String>) -> Result<Rule, ConfigError> {
    let mut matcher = Match::default();
    if let Some(hosts) = &raw.matcher.hosts {
        if hosts.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.match.hosts"),
                "is empty, so the rule matches nothing; list hosts or remove the key",
            ));
        }
        for (i, h) in hosts.iter().enumerate() {
            matcher.hosts.push(host_pattern(&format!("{at}.match.hosts[{i}]"), h)?);
        }
    }
    if let Some(p) = raw.matcher.path_prefix.clone() {
        plain_path(&format!("{at}.match.pathPrefix"), &p)?;
        matcher.path_prefix = Some(p);
    }

    let action = if raw.skip {
        if raw.required_scopes.is_some() || raw.token_exchange.is_some() || raw.oidc.is_some() {
            return Err(ConfigError::new(
                format!("{at}.skip"),
                "a skipped route is neither validated nor exchanged; remove requiredScopes, oidc and \
                 tokenExchange, or remove skip",
            ));
        }
        Action::Skip
    } else {
        if raw.required_scopes.is_none() && raw.token_exchange.is_none() && raw.oidc.is_none() {
            return Err(ConfigError::new(
                at,
                "changes nothing; give it skip: true, oidc, requiredScopes, or tokenExchange (null to validate only)",
            ));
        }
        let oidc = merged_oidc(&raw, at, top, env)?;
        let exchange = match raw.token_exchange {
            None => Exchange::Default,
            Some(None) => Exchange::None,
            Some(Some(t)) => Exchange::Replace(Box::new(exchange::token_exchange(
                t,
                &format!("{at}.tokenExchange"),
                oidc.allow_http,
                env,
            )?)),
        };
        Action::Apply {
            oidc: Box::new(oidc),
            exchange,
        }
    };
    Ok(Rule { matcher, action })
}

/// The rule's `oidc` (with `requiredScopes`, its alias) over the top-level one.
fn merged_oidc(
    raw: &RawRule,
    at: &str,
    top: &RawOidc,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Oidc, ConfigError> {
    let mut own = raw.oidc.clone().unwrap_or_default();
    if let Some(s) = &raw.required_scopes {
        if own.required_scopes.is_some() {
            return Err(ConfigError::new(
                format!("{at}.requiredScopes"),
                "is an alias of oidc.requiredScopes, which is set too; keep one",
            ));
        }
        scope_list(&format!("{at}.requiredScopes"), s)?;
        own.required_scopes = Some(s.clone());
    }
    oidc::oidc(own.over(top), &format!("{at}.oidc"), env)
}

/// `host`, `*.suffix` (one or more labels) or `*`, optionally with `:port`;
/// lower-cased. (IP literals: write IPv4 as a name; IPv6 is not supported.)
fn host_pattern(at: &str, h: &str) -> Result<String, ConfigError> {
    non_empty(at, h)?;
    let host = h.to_ascii_lowercase();
    let (name, port) = match host.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host.as_str(), None),
    };
    let labels = name.strip_prefix("*.").unwrap_or(name);
    let name_ok = name == "*"
        || labels
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !name_ok || !port_ok {
        return Err(ConfigError::new(
            at,
            format!("{h:?} is not a host pattern; use api.example.com, *.example.com or *, optionally with :port"),
        ));
    }
    Ok(host)
}
