//! One request's way through the filter, as phases that return outcomes:
//! `select` picks the route's policy (or answers metadata), `validation`
//! checks the caller's token (holding the request while keys arrive), or
//! `introspection` does when the token is opaque and the route asks its
//! issuer (holding it while the issuer answers),
//! `forward` exchanges it when the policy says so (one flight per user and
//! target), and `gate` judges an MCP tool call's body. No phase acts on the
//! request: `apply` is the one place that sets headers, answers, resumes
//! and records the decision.
//!
//! One `Filter` lives per worker (proxy-wasm VM) and is shared by its root
//! and stream contexts. A request may pause twice: for the issuer's keys,
//! and for its exchange. Paused requests are remembered by context id; when
//! the callout they wait for ends, the phase hands back each one decided,
//! and `release` makes each current in turn to act on it. A paused request
//! whose client leaves is simply forgotten (`on_done`).

pub mod apply;
pub mod forward;
pub mod gate;
pub mod introspection;
pub mod keyring;
pub mod metadata;
pub mod outcome;
pub mod path;
pub mod policy;
pub mod routes;
pub mod select;
pub mod validation;

pub use crate::host::Action;

use crate::edge::metrics::Metric;
use crate::host::{CalloutResponse, Host, Plugin};
use apply::{Effects, When};
use forward::{Answered, Forward, Landed};
use gate::{Body, Gate};
use introspection::Introspection;
use outcome::{Outcome, Released};
use plugin_config::{Config, ConfigError};
use policy::Policies;
use select::Select;
use std::rc::Rc;
use validation::Validation;

pub struct Filter {
    select: Select,
    validation: Validation,
    introspection: Introspection,
    forward: Forward,
    gate: Gate,
    effects: Effects,
}

impl Filter {
    /// `plugin_name` names every shared-data key: Istio gives all plugins on
    /// a proxy one keyspace. Keys name nothing else of the config; each
    /// entry holds what it depends on, so a push keeps what it does not
    /// change. Fails on what only the filter can check: a client assertion
    /// key that does not fit.
    pub fn new(config: &Config, plugin_name: &str) -> Result<Filter, ConfigError> {
        let policies = Rc::new(Policies::new(config)?);
        let gate = Gate::new(Rc::clone(&policies));
        let validation = Validation::new(Rc::clone(&policies), config.claim_to_headers.clone(), plugin_name);
        let introspection = Introspection::new(
            Rc::clone(&policies),
            config.claim_to_headers.clone(),
            plugin_name,
            config.cache.max_entries,
        );
        let forward = Forward::new(
            Rc::clone(&policies),
            plugin_name,
            config.cache.max_entries,
            config.cache.expiry_skew_seconds.saturating_mul(1000),
        );
        Ok(Filter {
            select: Select::new(Rc::clone(&policies), &config.metadata),
            effects: Effects::new(policies, config),
            validation,
            introspection,
            forward,
            gate,
        })
    }

    /// Signature checks done so far on this worker.
    pub fn signature_checks(&self) -> u64 {
        self.validation.signature_checks()
    }

    /// After validation, the forwarding phase, for an allowed request.
    fn forward(&mut self, host: &mut dyn Host, token: &str, outcome: Outcome) -> Outcome {
        match outcome {
            Outcome::Allow(passed) => self.forward.forward(host, token, passed, &mut self.effects.metrics),
            other => other,
        }
    }

    /// Makes each released request current in turn, takes it through
    /// `next`, acts on the outcome, and returns to the context it was
    /// called in. A request whose client left is passed over.
    fn release<T>(
        &mut self,
        host: &mut dyn Host,
        items: Vec<(u32, T)>,
        next: fn(&mut Filter, &mut dyn Host, T) -> Outcome,
    ) {
        if items.is_empty() {
            return;
        }
        let origin = host.context_id();
        for (ctx, item) in items {
            if !host.switch_to(ctx) {
                continue;
            }
            let outcome = next(self, host, item);
            self.effects.apply(host, outcome, &mut self.gate, When::Paused);
        }
        host.switch_to(origin);
    }

    /// Requests that waited for keys or an introspection, decided: the
    /// allowed go on to be forwarded.
    fn release_validated(&mut self, host: &mut dyn Host, released: Vec<Released>) {
        let items = released.into_iter().map(|r| (r.ctx, (r.token, r.outcome))).collect();
        self.release(host, items, |f, host, (token, outcome)| {
            f.forward(host, &token, outcome)
        });
    }

    /// Requests that waited for an exchange, each with its own policy.
    fn release_landed(&mut self, host: &mut dyn Host, landed: Landed) {
        let items = landed
            .waiters
            .iter()
            .map(|(ctx, policy)| (*ctx, landed.outcome(*policy)))
            .collect();
        self.release(host, items, |_, _, outcome| outcome);
    }
}

impl Plugin for Filter {
    fn configure(config: &[u8], plugin_name: &str) -> Result<Filter, String> {
        let config = plugin_config::parse(config).map_err(|e| e.to_string())?;
        let filter = Filter::new(&config, plugin_name).map_err(|e| e.to_string())?;
        log_configured(&config);
        Ok(filter)
    }

    fn on_request_headers(&mut self, host: &mut dyn Host, body_follows: bool) -> Action {
        let route = match self.select.route(host, body_follows) {
            Ok(route) => route,
            Err(outcome) => return self.effects.apply(host, outcome, &mut self.gate, When::Inline),
        };
        let token = match self.validation.extract(host, route.policy) {
            Ok(token) => token,
            Err(outcome) => return self.effects.apply(host, outcome, &mut self.gate, When::Inline),
        };
        if route.gated {
            self.gate.open(host.context_id(), route.policy);
        }
        let validated = if self.introspection.takes(&token, route.policy) {
            self.introspection
                .check(host, &token, route.policy, &mut self.effects.metrics)
        } else {
            self.validation.validate(host, &token, route.policy)
        };
        let outcome = self.forward(host, &token, validated);
        self.effects.apply(host, outcome, &mut self.gate, When::Inline)
    }

    /// Only gated requests (a tool with scopes may be called) are held for
    /// their body, so the hot path reads nothing.
    fn on_request_body(&mut self, host: &mut dyn Host, size: usize, end_of_stream: bool) -> Action {
        match self.gate.judge(host, size, end_of_stream) {
            Body::NotHeld => Action::Continue,
            Body::Buffer => Action::Pause,
            Body::Allowed(passed) => {
                self.effects.record_allow(host, &passed);
                Action::Continue
            }
            Body::Refused(d, who) => self.effects.refuse(host, &d, &who),
        }
    }

    fn on_callout(&mut self, host: &mut dyn Host, token: u32, resp: &CalloutResponse) {
        if let Some(released) = self.validation.on_callout(host, token, resp, &mut self.effects.metrics) {
            return self.release_validated(host, released);
        }
        if let Some(released) = self
            .introspection
            .on_callout(host, token, resp, &mut self.effects.metrics)
        {
            return self.release_validated(host, released);
        }
        match self.forward.on_callout(host, token, resp, &mut self.effects.metrics) {
            Answered::Landed(all) => {
                for landed in all {
                    self.release_landed(host, landed);
                }
            }
            Answered::InFlight => {}
            Answered::NotOurs => log::debug!("ignoring answer to unknown callout {token}"),
        }
    }

    fn on_tick(&mut self, host: &mut dyn Host) {
        let created = host.keys_created();
        self.effects.metrics.add(Metric::SharedKeysCreated, created);
        self.effects.metrics.flush(host);
        let released = self.validation.on_tick(host);
        self.release_validated(host, released);
        let released = self.introspection.on_tick(host, &mut self.effects.metrics);
        self.release_validated(host, released);
        for landed in self.forward.on_tick(host, &mut self.effects.metrics) {
            self.release_landed(host, landed);
        }
    }

    /// The stream `id` ended. A gated request that passed but whose body
    /// never came is recorded as allowed now: its headers went on.
    fn on_done(&mut self, host: &mut dyn Host, id: u32) {
        self.validation.leave(host, id);
        self.introspection.leave(id);
        self.forward.leave(id);
        if let Some(passed) = self.gate.leave(id) {
            self.effects.record_allow(host, &passed);
        }
    }
}

/// What the operator should see once a config is in force.
fn log_configured(config: &Config) {
    let sections = config
        .oidc
        .iter()
        .chain(config.rules.iter().filter_map(|r| match &r.action {
            plugin_config::RuleAction::Apply { oidc, .. } => Some(oidc.as_ref()),
            plugin_config::RuleAction::Skip => None,
        }));
    let mut issuers: Vec<String> = Vec::new();
    for o in sections {
        let mut line = format!("issuer {}, {}", o.issuer, o.keys);
        if let Some(i) = &o.introspection {
            line.push_str(&format!(", opaque tokens introspected at {}", i.endpoint.url));
            if i.client.secret_inline {
                log::warn!(
                    "{}.clientSecret is set inline: for local demos only; use clientSecretEnv",
                    i.at
                );
            }
        }
        if !issuers.contains(&line) {
            issuers.push(line);
        }
    }
    log::info!("token-exchange-filter configured: {}", issuers.join("; "));
    let rule_targets = config.rules.iter().filter_map(|r| match &r.action {
        plugin_config::RuleAction::Apply {
            exchange: plugin_config::RuleExchange::Replace(t),
            ..
        } => Some(t.as_ref()),
        _ => None,
    });
    for t in config.token_exchange.iter().chain(rule_targets) {
        log::info!("exchanging tokens at {} via cluster {}", t.token.url, t.token.cluster);
        if t.client.secret_inline {
            log::warn!(
                "tokenExchange.clientSecret is set inline: for local demos only; \
                 use clientSecretEnv with vm_config.environment_variables or vmConfig.env"
            );
        }
    }
    if !config.rules.is_empty() {
        log::info!("{} route rules; the first match wins", config.rules.len());
    }
}

#[cfg(test)]
mod tests;
