//! What each route asks of a request, built once from the config and shared
//! (immutable) by every phase: the policies (their `oidc`: issuer,
//! audiences, scopes, resource; and their exchange target), the verifiers
//! and issuers the policies share, the exchange targets, the introspection
//! endpoints, and the rules that
//! pick a policy. Ids are made only here, so an id always names an entry.

use crate::edge::challenge::Challenges;
use crate::exchange::Exchanger;
use crate::request::introspection::call::Introspector;
use crate::request::path::{self, Refusal};
use crate::request::routes::{HostRules, Route, Routes};
use crate::token::verify::Verifier;
use plugin_config::{Config, ConfigError, KeySource, Oidc, RuleAction, RuleExchange, TokenExchange};

/// A policy of the table: the default (top-level sections) or a rule's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyId(usize);

/// An exchange target: the top-level `tokenExchange`, or a rule's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TargetId(usize);

/// A way of checking tokens (issuer, audiences, skew, types), shared by
/// the policies that check them alike, so a token checked for one is taken
/// by the others and by no other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifierId(usize);

/// An issuer's signing keys (the issuer and where its keys are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IssuerId(usize);

/// A route's introspection endpoint, with what it expects of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IntrospectorId(usize);

macro_rules! index {
    ($($id:ident),*) => {$(
        impl $id {
            /// Its place in the table, for per-entry state kept beside it.
            pub fn index(self) -> usize {
                self.0
            }
        }
    )*};
}
index!(TargetId, IssuerId);

/// What a route asks of a request.
pub struct Policy {
    pub required_scopes: Vec<String>,
    /// Where the token is exchanged; `None` validates only.
    pub target: Option<TargetId>,
    pub verifier: VerifierId,
    pub issuer: IssuerId,
    /// Where opaque bearers are checked; `None` refuses them.
    pub introspector: Option<IntrospectorId>,
    /// Challenges naming this route's resource metadata and scopes.
    pub challenges: Challenges,
    /// The protected resource, for the audit line.
    pub resource: Option<String>,
}

/// Which policy a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// A `skip` rule: the request passes untouched.
    Skip,
    Policy(PolicyId),
    /// No rule matched and there is no top-level policy. The config makes
    /// this impossible (its last rule then matches every request); it is
    /// refused all the same.
    Nothing,
}

pub struct Policies {
    /// The default policy first when there is one, then one per rule that is not a skip.
    policies: Vec<Policy>,
    default: Option<PolicyId>,
    targets: Vec<Exchanger>,
    verifiers: Vec<(Verifier, IssuerId)>,
    /// Each issuer's `oidc` section (the first that named it).
    issuers: Vec<Oidc>,
    introspectors: Vec<Introspector>,
    routes: Routes,
}

impl Policies {
    /// Fails only on what the exchange targets check themselves (a client
    /// assertion key that does not fit).
    pub fn new(config: &Config) -> Result<Policies, ConfigError> {
        let mut table = Policies {
            policies: Vec::new(),
            default: None,
            targets: Vec::new(),
            verifiers: Vec::new(),
            issuers: Vec::new(),
            introspectors: Vec::new(),
            routes: Routes::new(Vec::new()),
        };
        let default_target = config
            .token_exchange
            .as_ref()
            .map(|t| table.add_target(t))
            .transpose()?;
        if let Some(oidc) = &config.oidc {
            table.default = Some(table.add_policy(oidc, default_target)?);
        }
        let mut rules = Vec::new();
        for rule in &config.rules {
            let route = match &rule.action {
                RuleAction::Skip => Route::Skip,
                RuleAction::Apply { oidc, exchange } => {
                    let target = match exchange {
                        RuleExchange::Default => default_target,
                        RuleExchange::None => None,
                        RuleExchange::Replace(t) => Some(table.add_target(t)?),
                    };
                    Route::Policy(table.add_policy(oidc, target)?.0)
                }
            };
            rules.push((rule.matcher.clone(), route));
        }
        table.routes = Routes::new(rules);
        Ok(table)
    }

    fn add_target(&mut self, t: &TokenExchange) -> Result<TargetId, ConfigError> {
        self.targets.push(Exchanger::new(t)?);
        Ok(TargetId(self.targets.len() - 1))
    }

    /// Fails only on an introspection client key that does not fit.
    fn add_policy(&mut self, oidc: &Oidc, target: Option<TargetId>) -> Result<PolicyId, ConfigError> {
        let issuer = match self.issuers.iter().position(|o| same_keys(o, oidc)) {
            Some(i) => IssuerId(i),
            None => {
                self.issuers.push(oidc.clone());
                IssuerId(self.issuers.len() - 1)
            }
        };
        let verifier = Verifier::new(oidc);
        let verifier = match self.verifiers.iter().position(|(v, i)| *v == verifier && *i == issuer) {
            Some(v) => VerifierId(v),
            None => {
                self.verifiers.push((verifier, issuer));
                VerifierId(self.verifiers.len() - 1)
            }
        };
        let introspector = match &oidc.introspection {
            None => None,
            Some(i) => {
                self.introspectors.push(Introspector::new(oidc, i)?);
                Some(IntrospectorId(self.introspectors.len() - 1))
            }
        };
        self.policies.push(Policy {
            required_scopes: oidc.required_scopes.clone(),
            target,
            verifier,
            issuer,
            introspector,
            challenges: Challenges::new(oidc),
            resource: oidc.resource.as_ref().map(|r| r.url.clone()),
        });
        Ok(PolicyId(self.policies.len() - 1))
    }

    /// Challenges for a refusal made before any policy applies: the
    /// top-level one's, else bare.
    pub fn fallback_challenges(&self) -> Challenges {
        self.default
            .map_or_else(Challenges::bare, |d| self.policy(d).challenges.clone())
    }

    /// Never out of range: ids come from this table, which never shrinks.
    pub fn policy(&self, id: PolicyId) -> &Policy {
        &self.policies[id.0]
    }

    /// Never out of range: ids come from this table, which never shrinks.
    pub fn target(&self, id: TargetId) -> &Exchanger {
        &self.targets[id.0]
    }

    pub fn targets(&self) -> impl Iterator<Item = &Exchanger> {
        self.targets.iter()
    }

    /// Never out of range: ids come from this table, which never shrinks.
    pub fn verifier(&self, id: VerifierId) -> &Verifier {
        &self.verifiers[id.0].0
    }

    /// Never out of range: ids come from this table, which never shrinks.
    pub fn introspector(&self, id: IntrospectorId) -> &Introspector {
        &self.introspectors[id.0]
    }

    /// The issuer whose keys a verifier's tokens are checked with.
    pub fn issuer_of(&self, id: VerifierId) -> IssuerId {
        self.verifiers[id.0].1
    }

    /// Every issuer, with the `oidc` section that says where its keys are.
    pub fn issuers(&self) -> impl Iterator<Item = (IssuerId, &Oidc)> {
        self.issuers.iter().enumerate().map(|(i, o)| (IssuerId(i), o))
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The policy for a request whose host's rules are `rules`, at `path`,
    /// judged on every reading of the path (`request::path`), and whether
    /// its body is gated; `gate` is the MCP endpoint when the request is a
    /// POST with a body and tools have scopes.
    pub fn select(&self, rules: &HostRules, path: &str, gate: Option<&str>) -> Result<(Selection, bool), Refusal> {
        let target = path::target(rules, path, gate)?;
        let selection = match target.route {
            Some(Route::Skip) => Selection::Skip,
            Some(Route::Policy(n)) => Selection::Policy(PolicyId(n)),
            None => self.default.map_or(Selection::Nothing, Selection::Policy),
        };
        Ok((selection, target.gated))
    }
}

/// Whether two sections name the same keys: one issuer, found the same way.
fn same_keys(a: &Oidc, b: &Oidc) -> bool {
    let source = |o: &Oidc| match &o.keys {
        KeySource::Jwks(e) => e.url.clone(),
        KeySource::Discovery(d) => d.openid.url.clone(),
    };
    a.issuer == b.issuer && source(a) == source(b) && a.jwks_refresh_seconds == b.jwks_refresh_seconds
}
