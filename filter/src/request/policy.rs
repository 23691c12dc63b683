//! What each route asks of a request, built once from the config and shared
//! (immutable) by every phase: the policies (scopes, exchange target,
//! challenges), the exchange targets they point at, and the rules that pick
//! a policy. Ids are made only here, so an id always names an entry.

use crate::edge::challenge::Challenges;
use crate::exchange::Exchanger;
use crate::request::path::{self, Refusal};
use crate::request::routes::{Route, Routes};
use plugin_config::{Config, ConfigError, RuleAction, RuleExchange, TokenExchange};

/// A policy of the table: the default (top-level sections) or a rule's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyId(usize);

/// An exchange target of the table: the top-level `tokenExchange`, or a
/// rule's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TargetId(usize);

impl TargetId {
    /// Its place in the table, for per-target state kept beside it.
    pub fn index(self) -> usize {
        self.0
    }
}

/// What a route asks of a request.
pub struct Policy {
    pub required_scopes: Vec<String>,
    /// Where the token is exchanged; `None` validates only.
    pub target: Option<TargetId>,
    /// Challenges naming this policy's scopes.
    pub challenges: Challenges,
}

/// Which policy a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// A `skip` rule: the request passes untouched.
    Skip,
    Policy(PolicyId),
}

pub struct Policies {
    /// The default policy first, then one per non-skip rule.
    policies: Vec<Policy>,
    targets: Vec<Exchanger>,
    routes: Routes,
}

impl Policies {
    /// Fails only on what the exchange targets check themselves (a client
    /// assertion key that does not fit).
    pub fn new(config: &Config) -> Result<Policies, ConfigError> {
        let o = &config.oidc;
        let mut targets: Vec<&TokenExchange> = config.token_exchange.iter().collect();
        let default_target = (!targets.is_empty()).then_some(TargetId(0));
        let challenges = Challenges::new(config);
        let mut policies = vec![Policy {
            required_scopes: o.required_scopes.clone(),
            target: default_target,
            challenges: challenges.clone(),
        }];
        let mut rules = Vec::new();
        for rule in &config.rules {
            let route = match &rule.action {
                RuleAction::Skip => Route::Skip,
                RuleAction::Apply {
                    required_scopes,
                    exchange,
                } => {
                    let target = match exchange {
                        RuleExchange::Default => default_target,
                        RuleExchange::None => None,
                        RuleExchange::Replace(t) => {
                            targets.push(t);
                            Some(TargetId(targets.len() - 1))
                        }
                    };
                    let required_scopes = required_scopes.clone().unwrap_or_else(|| o.required_scopes.clone());
                    policies.push(Policy {
                        challenges: challenges.with_scopes(&required_scopes),
                        required_scopes,
                        target,
                    });
                    Route::Policy(policies.len() - 1)
                }
            };
            rules.push((rule.matcher.clone(), route));
        }
        let targets = targets
            .into_iter()
            .map(Exchanger::new)
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(Policies {
            policies,
            targets,
            routes: Routes::new(rules),
        })
    }

    /// The top-level sections' policy.
    pub fn default_id(&self) -> PolicyId {
        PolicyId(0)
    }

    pub fn default(&self) -> &Policy {
        self.policy(self.default_id())
    }

    /// Never out of range: ids come from this table, which never shrinks.
    pub fn policy(&self, id: PolicyId) -> &Policy {
        &self.policies[id.0]
    }

    /// Never out of range: ids come from this table, which never shrinks.
    pub fn target(&self, id: TargetId) -> &Exchanger {
        &self.targets[id.0]
    }

    pub fn targets(&self) -> impl Iterator<Item = (TargetId, &Exchanger)> {
        self.targets.iter().enumerate().map(|(i, x)| (TargetId(i), x))
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The policy for a request to `authority` (empty when not read) at
    /// `path`, judged on every reading of the path (`request::path`), and
    /// whether its body is gated; `gate` is the MCP endpoint when the
    /// request is a POST with a body and tools have scopes.
    pub fn select(&self, authority: &str, path: &str, gate: Option<&str>) -> Result<(Selection, bool), Refusal> {
        let target = path::target(&self.routes, authority, path, gate)?;
        let selection = match target.route {
            Route::Skip => Selection::Skip,
            Route::Policy(n) => Selection::Policy(PolicyId(n)),
        };
        Ok((selection, target.gated))
    }
}
