//! Starting an exchange. A target whose exchanges carry the filter's own
//! actor token sends each with the token this worker holds; without one,
//! the exchange is parked on the one fetch out for the target, which sends
//! every parked exchange when it lands (or fails them all). Flights and
//! fetches whose owner went away start again from the tick.

use super::{ExchangeFlight, Forward, Key, Landed, CALLOUT_GRACE_MS};
use crate::edge::metrics::Metrics;
use crate::exchange::actor_tokens::{Fetch, Have};
use crate::exchange::singleflight::Out;
use crate::exchange::{Call, Exchanger, Failure, Stamp, Step};
use crate::host::{CalloutResponse, Host};
use crate::request::policy::TargetId;
use std::rc::Rc;

impl Forward {
    /// Sends `flight`'s first callout (or parks it) and records it; hands
    /// it back, with why, if it could not.
    pub(super) fn launch(
        &mut self,
        host: &mut dyn Host,
        key: Key,
        mut flight: ExchangeFlight,
    ) -> Result<(), (Failure, ExchangeFlight)> {
        let policies = Rc::clone(&self.policies);
        let x = policies.target(key.0);
        let now = host.now_ms();
        let out = match x.needs_actor() {
            true => self.with_actor(host, key.0, x, &flight.job.subject, now),
            false => exchange(host, x, &flight.job.subject, None).map(Out::Callout),
        };
        match out {
            Ok(Out::Parked) => {
                self.actors.park(key.0.index(), key);
                (flight.out, flight.job.step) = (Out::Parked, Step::Actor);
            }
            Ok(out) => (flight.out, flight.job.step) = (out, Step::Token),
            Err(f) => return Err((f, flight)),
        }
        flight.owner = host.origin_id();
        flight.started_ms = now;
        self.flights.start(key, flight);
        Ok(())
    }

    /// The exchange with the actor token this worker holds, or `Parked`
    /// on its fetch (started here if none is out).
    fn with_actor(
        &mut self,
        host: &mut dyn Host,
        target: TargetId,
        x: &Exchanger,
        subject: &str,
        now: u64,
    ) -> Result<Out, Failure> {
        match self.actors.get(target.index(), now) {
            Have::Token(token) => exchange(host, x, subject, Some(&token)).map(Out::Callout),
            Have::Fetching => Ok(Out::Parked),
            Have::Nothing => {
                let stamp = stamp(host, x)?;
                let id = send(host, &x.actor_request(&stamp)?, x.config().timeout_ms)?;
                self.actors.fetching(target.index(), id, host.origin_id(), now);
                Ok(Out::Parked)
            }
        }
    }

    /// The actor token's answer (or its absence): keep it and send every
    /// exchange parked on it, or fail them all with the reason.
    pub(super) fn actor_landed(
        &mut self,
        host: &mut dyn Host,
        target: usize,
        fetch: Fetch<Key>,
        resp: &CalloutResponse,
        metrics: &mut Metrics,
    ) -> Vec<Landed> {
        let policies = Rc::clone(&self.policies);
        let Some(x) = policies.targets().nth(target) else {
            return Vec::new();
        };
        let now = host.now_ms();
        let answer = x.actor_answer(resp, now.saturating_sub(fetch.started_ms));
        let token = answer.map(|ex| self.actors.keep(target, &ex, self.skew_ms, now));
        if let Err(f) = &token {
            log::warn!("actor token for audience={} outcome={}", x.target_name(), f.outcome());
        }
        let mut landed = Vec::new();
        for key in fetch.parked {
            let Some(mut flight) = self.flights.unpark(&key) else {
                continue;
            };
            let sent = match &token {
                Ok(t) => {
                    flight.job.step = Step::Token;
                    exchange(host, x, &flight.job.subject, Some(t))
                }
                Err(f) => Err(f.clone()),
            };
            match sent {
                Ok(id) => {
                    flight.out = Out::Callout(id);
                    (flight.owner, flight.started_ms) = (host.origin_id(), now);
                    self.flights.start(key, flight);
                }
                Err(f) => landed.push(self.finish(host, key, flight, Err(f), metrics)),
            }
        }
        landed
    }

    /// Restarts actor token fetches whose owner went away, and fails those
    /// that will never be answered, with every exchange parked on them.
    pub(super) fn actor_tick(&mut self, host: &mut dyn Host, now: u64, metrics: &mut Metrics) -> Vec<Landed> {
        let policies = Rc::clone(&self.policies);
        for i in self.actors.orphans() {
            let Some(x) = policies.targets().nth(i) else {
                continue;
            };
            let sent = stamp(host, x).and_then(|s| {
                x.actor_request(&s)
                    .and_then(|call| send(host, &call, x.config().timeout_ms))
            });
            match sent {
                Ok(id) => self.actors.restarted(i, id, host.origin_id(), now),
                Err(f) => log::warn!("could not restart an actor token fetch: {}", f.outcome()),
            }
        }
        let stuck = self.actors.take(|i, f| {
            let limit = policies.targets().nth(i).map_or(0, |x| x.config().timeout_ms) + CALLOUT_GRACE_MS;
            f.callout.is_none() || now.saturating_sub(f.started_ms) > limit
        });
        let mut landed = Vec::new();
        for (i, fetch) in stuck {
            landed.extend(self.actor_landed(host, i, fetch, &CalloutResponse::default(), metrics));
        }
        landed
    }

    /// Starts flights again whose owner went away; one that cannot start
    /// stays orphaned, for the tick to fail.
    pub(super) fn restart_orphans(&mut self, host: &mut dyn Host) {
        for key in self.flights.orphans() {
            let Some(flight) = self.flights.remove(&key) else {
                continue;
            };
            match self.launch(host, key, flight) {
                Ok(()) => log::debug!("restarted an exchange whose owner went away"),
                Err((f, mut flight)) => {
                    log::warn!("could not restart an orphaned exchange: {}", f.outcome());
                    flight.out = Out::Orphaned;
                    self.flights.start(key, flight);
                }
            }
        }
    }
}

/// A fresh `Stamp`: now, and a random `jti` when the exchanger signs.
pub(super) fn stamp(host: &mut dyn Host, x: &Exchanger) -> Result<Stamp, Failure> {
    let mut jti = [0u8; 16];
    if x.signs() && !host.random(&mut jti) {
        return Err(Failure::Unavailable("no random source for the client assertion".into()));
    }
    Ok(Stamp {
        now_ms: host.now_ms(),
        jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// The exchange's first callout for `subject`.
fn exchange(host: &mut dyn Host, x: &Exchanger, subject: &str, actor: Option<&str>) -> Result<u32, Failure> {
    let call = x.request(subject, actor, &stamp(host, x)?)?;
    send(host, &call, x.config().timeout_ms)
}

pub(super) fn send(host: &mut dyn Host, call: &Call, timeout_ms: u64) -> Result<u32, Failure> {
    host.dispatch(call.endpoint, &call.header_pairs(), Some(&call.body), timeout_ms)
        .ok_or_else(|| {
            Failure::Unavailable(format!(
                "callout refused: is cluster {:?} defined?",
                call.endpoint.cluster
            ))
        })
}
