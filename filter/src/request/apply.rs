//! The one place that acts on an outcome: it sets the exchanged token and
//! the claim headers, answers refusals (readable by allowed origins),
//! resumes paused requests, and records each decision once, in the metrics
//! and the audit line.

use crate::edge::audit;
use crate::edge::challenge::Denial;
use crate::edge::cors;
use crate::edge::metrics::{Metric, Metrics};
use crate::host::{Action, Host};
use crate::request::gate::Gate;
use crate::request::outcome::{Outcome, Passed, Unjudged, Who};
use crate::request::policy::Policies;
use plugin_config::{ClaimHeader, Config, Cors};
use std::rc::Rc;

/// Whether the proxy is waiting on this call for the request's fate, or the
/// request was paused earlier and must be resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// In the request's own headers callback: the returned `Action` decides.
    Inline,
    /// Paused earlier: going on means resuming it.
    Paused,
}

pub struct Effects {
    policies: Rc<Policies>,
    claim_headers: Vec<ClaimHeader>,
    cors: Option<Cors>,
    audit: bool,
    pub metrics: Metrics,
}

impl Effects {
    pub fn new(policies: Rc<Policies>, config: &Config) -> Effects {
        Effects {
            policies,
            claim_headers: config.claim_to_headers.clone(),
            cors: config.cors.clone(),
            audit: config.audit,
            metrics: Metrics::default(),
        }
    }

    /// Acts on `outcome` for the current request.
    pub fn apply(&mut self, host: &mut dyn Host, outcome: Outcome, gate: &mut Gate, when: When) -> Action {
        match outcome {
            Outcome::Allow(passed) => {
                self.set_headers(host, &passed);
                if let Some(decided) = gate.hold(host.context_id(), passed) {
                    self.record_allow(host, &decided);
                }
                if when == When::Paused {
                    host.resume_request();
                }
                Action::Continue
            }
            Outcome::Wait => Action::Pause,
            Outcome::Answer(reply) => {
                host.send_response(reply.status, reply.headers, reply.body.as_bytes());
                Action::Pause
            }
            Outcome::Deny(d, who) => {
                gate.close(host.context_id());
                self.refuse(host, &d, &who)
            }
            Outcome::Pass(why) => {
                // No client may supply the claim headers, judged or not.
                for h in &self.claim_headers {
                    host.remove_request_header(&h.header);
                }
                if why == Unjudged::SkipRoute {
                    self.metrics.inc(Metric::Skipped);
                }
                Action::Continue
            }
        }
    }

    /// Records an allowed request's decision.
    pub fn record_allow(&mut self, host: &dyn Host, passed: &Passed) {
        self.metrics.inc(Metric::Allowed);
        if !self.audit || !log::log_enabled!(log::Level::Info) {
            return;
        }
        let forwarded = passed.forwarded.as_ref();
        let target = forwarded.map(|f| self.policies.target(f.target).target_name());
        let p = passed.principal();
        let policy = self.policies.policy(passed.policy);
        let entry = audit::Entry {
            now_ms: host.now_ms(),
            sub: p.sub.as_deref(),
            client: p.client.as_deref(),
            issuer: Some(self.policies.verifier(policy.verifier).issuer()),
            resource: policy.resource.as_deref(),
            decision: "allow",
            reason: "ok",
            status: None,
            target: target.as_deref(),
            cache: forwarded.map(|f| f.cache.name()),
            latency_ms: forwarded.and_then(|f| f.latency_ms),
        };
        log::info!("audit {}", entry.line());
    }

    /// Answers the current request with `d`, and records the decision.
    pub fn refuse(&mut self, host: &mut dyn Host, d: &Denial, who: &Who) -> Action {
        self.metrics.inc(Metric::for_denial(d));
        if self.audit && log::log_enabled!(log::Level::Info) {
            let p = who.principal.as_deref();
            let target = who.target.map(|t| self.policies.target(t).target_name());
            let policy = who.policy.map(|id| self.policies.policy(id));
            let entry = audit::Entry {
                now_ms: host.now_ms(),
                sub: p.and_then(|p| p.sub.as_deref()),
                client: p.and_then(|p| p.client.as_deref()),
                issuer: policy.map(|p| self.policies.verifier(p.verifier).issuer()),
                resource: policy.and_then(|p| p.resource.as_deref()),
                decision: "deny",
                reason: d.description,
                status: Some(d.status),
                target: target.as_deref(),
                cache: None,
                latency_ms: None,
            };
            log::info!("audit {}", entry.line());
        }
        self.send(host, d);
        Action::Pause
    }

    /// The exchanged token and the claim headers of a passed request.
    fn set_headers(&self, host: &mut dyn Host, passed: &Passed) {
        if let Some(f) = &passed.forwarded {
            host.set_request_header(self.policies.target(f.target).forward_header(), &f.value);
        }
        for h in &self.claim_headers {
            match passed.principal().claim_headers.iter().find(|(k, _)| *k == h.header) {
                Some((k, v)) => host.set_request_header(k, v),
                None => host.remove_request_header(&h.header),
            }
        }
    }

    /// Answers the current request with `d`, readable by an allowed origin.
    fn send(&self, host: &mut dyn Host, d: &Denial) {
        let retry;
        let mut headers = vec![("content-type", "application/json")];
        if let Some(w) = &d.www_authenticate {
            headers.push(("www-authenticate", w.as_str()));
        }
        if let Some(r) = d.retry_after {
            retry = r.to_string();
            headers.push(("retry-after", retry.as_str()));
        }
        let cors_headers = self.cors.as_ref().and_then(|c| cors::reply_headers(c, host));
        if let Some(ch) = &cors_headers {
            headers.extend(ch.iter().map(|(k, v)| (*k, v.as_str())));
        }
        host.send_response(d.status, &headers, d.body().as_bytes());
    }
}
