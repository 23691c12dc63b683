//! A flight's callout answered (or never will): its next callout in the
//! same pause, or its end, logged once: the token cached and every waiter
//! released with it, or the failure they all get.

use super::launch::{send, stamp};
use super::{cache_until, exchange_line, ExchangeFlight, Forward, Key, Landed};
use crate::edge::metrics::{Metric, Metrics};
use crate::exchange::singleflight::Out;
use crate::exchange::{Call, Exchanged, Exchanger, Failure, Next, Step};
use crate::host::{CalloutResponse, Host};
use crate::request::outcome::{CacheUse, Forwarded};
use crate::token::verified::Verified;
use std::rc::Rc;

impl Forward {
    /// Makes the next callout in the same pause (`None`), or ends the flight.
    pub(super) fn land(
        &mut self,
        host: &mut dyn Host,
        key: Key,
        flight: ExchangeFlight,
        resp: &CalloutResponse,
        metrics: &mut Metrics,
    ) -> Option<Landed> {
        let policies = Rc::clone(&self.policies);
        let x = policies.target(key.0);
        let elapsed = host.now_ms().saturating_sub(flight.started_ms);
        let next = stamp(host, x).and_then(|s| x.answer(flight.job.step, resp, elapsed, &flight.job.subject, &s));
        match next {
            Ok(Next::Then(call)) => self.then(host, key, flight, &call, x.config().timeout_ms, metrics),
            Ok(Next::Done(ex)) => Some(self.finish(host, key, flight, Ok(ex), metrics)),
            Err(f) => Some(self.finish(host, key, flight, Err(f), metrics)),
        }
    }

    fn then(
        &mut self,
        host: &mut dyn Host,
        key: Key,
        mut flight: ExchangeFlight,
        call: &Call,
        timeout_ms: u64,
        metrics: &mut Metrics,
    ) -> Option<Landed> {
        flight.job.step = call.step;
        match send(host, call, timeout_ms) {
            Ok(id) => {
                flight.out = Out::Callout(id);
                (flight.owner, flight.started_ms) = (host.origin_id(), host.now_ms());
                self.flights.start(key, flight);
                None
            }
            Err(f) => Some(self.finish(host, key, flight, Err(f), metrics)),
        }
    }

    /// Ends a flight: logs and counts it, caches the token, and says what
    /// every waiter gets. An exchange refused while carrying the filter's
    /// own actor token drops that token: a revoked one must not be reused.
    pub(super) fn finish(
        &mut self,
        host: &mut dyn Host,
        key: Key,
        flight: ExchangeFlight,
        result: Result<Exchanged, Failure>,
        metrics: &mut Metrics,
    ) -> Landed {
        let (target, hash) = key;
        let policies = Rc::clone(&self.policies);
        let x = policies.target(target);
        let now = host.now_ms();
        let latency = now.saturating_sub(flight.job.begun_ms);
        log_end(x, &flight, &result, latency);
        metrics.inc(if result.is_ok() {
            Metric::ExchangesOk
        } else {
            Metric::ExchangesFailed
        });
        metrics.record(host, Metric::ExchangeLatency, latency);
        let refused = matches!(result, Err(Failure::InvalidGrant | Failure::BadGateway(_)));
        if refused && flight.job.step == Step::Token && x.needs_actor() {
            self.actors.forget(target.index());
        }
        // The cache must not outlive the caller's token as the strictest
        // of the waiting routes checks it.
        let clock_skew_s = flight
            .waiters
            .iter()
            .map(|(_, p)| policies.verifier(policies.policy(*p).verifier).skew())
            .min()
            .unwrap_or(0);
        let result = result.map(|ex| {
            let value: Rc<str> = format!("Bearer {}", ex.access_token).into();
            let until = cache_until(&ex, &flight.job.principal, clock_skew_s, self.skew_ms, now);
            self.store(host, target, &hash, &value, until, metrics);
            Forwarded {
                target,
                value,
                cache: CacheUse::Miss,
                latency_ms: Some(latency),
            }
        });
        Landed {
            waiters: flight.waiters,
            verified: Verified {
                principal: flight.job.principal,
                hash,
            },
            target,
            result,
            policies,
        }
    }
}

/// The exchange's one log line; a failure names the step it failed in.
fn log_end(x: &Exchanger, flight: &ExchangeFlight, result: &Result<Exchanged, Failure>, latency: u64) {
    let (line, waiters) = (exchange_line(x, &flight.job.principal), flight.waiters.len());
    match result {
        Ok(_) => log::info!("{line} outcome=ok cache=miss latency_ms={latency} waiters={waiters}"),
        Err(f) => log::info!(
            "{line} outcome={} step={} cache=miss latency_ms={latency} waiters={waiters}",
            f.outcome(),
            flight.job.step.name()
        ),
    }
}
