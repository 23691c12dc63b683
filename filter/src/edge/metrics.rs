//! Counters and a histogram through proxy-wasm's metric ABI, so operators
//! see the filter in Envoy's `/stats` and `/stats/prometheus`. Defined on
//! first use in each worker's VM (definition is idempotent by name, so every
//! worker and every plugin with this module adds to the same series).
//!
//! Counting costs no call into the proxy: counts gather in the worker and
//! `flush` hands them over on the root context's tick (every 500 ms), since
//! a hostcall per request would cost more than the rest of a cache hit.

use crate::edge::challenge::{Denial, DenialKind};
use crate::host::{Host, MetricKind};

pub const PREFIX: &str = "token_exchange_filter";

/// Every metric, in definition order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Allowed,
    Skipped,
    MissingToken,
    InvalidRequest,
    InvalidToken,
    InsufficientScope,
    InsufficientClaims,
    BodyTooLarge,
    /// The IdP refused the subject token (`invalid_grant`).
    ExchangeRefused,
    BadGateway,
    Unavailable,
    Timeout,
    ExchangesOk,
    ExchangesFailed,
    CacheHit,
    CacheMiss,
    /// A cache write that evicted another user's live entry.
    CacheOverwrite,
    JwksFetchOk,
    JwksFetchFailed,
    /// Gauge: keys loaded on this worker.
    JwksKeys,
    /// Histogram: exchange latency, ms.
    ExchangeLatency,
    /// Shared-data keys created: what shared data grows by (it is bounded).
    SharedKeysCreated,
    /// Introspections answered (whatever they said), and those that failed.
    IntrospectionsOk,
    IntrospectionsFailed,
    /// Opaque tokens decided from the introspection cache.
    IntrospectionCacheHit,
}

const ALL: [Metric; 25] = [
    Metric::Allowed,
    Metric::Skipped,
    Metric::MissingToken,
    Metric::InvalidRequest,
    Metric::InvalidToken,
    Metric::InsufficientScope,
    Metric::InsufficientClaims,
    Metric::BodyTooLarge,
    Metric::ExchangeRefused,
    Metric::BadGateway,
    Metric::Unavailable,
    Metric::Timeout,
    Metric::ExchangesOk,
    Metric::ExchangesFailed,
    Metric::CacheHit,
    Metric::CacheMiss,
    Metric::CacheOverwrite,
    Metric::JwksFetchOk,
    Metric::JwksFetchFailed,
    Metric::JwksKeys,
    Metric::ExchangeLatency,
    Metric::SharedKeysCreated,
    Metric::IntrospectionsOk,
    Metric::IntrospectionsFailed,
    Metric::IntrospectionCacheHit,
];

impl Metric {
    /// The name after the prefix.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Allowed => "requests.allowed",
            Metric::Skipped => "requests.skipped",
            Metric::MissingToken => "requests.missing_token",
            Metric::InvalidRequest => "requests.invalid_request",
            Metric::InvalidToken => "requests.invalid_token",
            Metric::InsufficientScope => "requests.insufficient_scope",
            Metric::InsufficientClaims => "requests.insufficient_claims",
            Metric::BodyTooLarge => "requests.body_too_large",
            Metric::ExchangeRefused => "requests.exchange_refused",
            Metric::BadGateway => "requests.exchange_bad_gateway",
            Metric::Unavailable => "requests.unavailable",
            Metric::Timeout => "requests.exchange_timeout",
            Metric::ExchangesOk => "exchanges.ok",
            Metric::ExchangesFailed => "exchanges.failed",
            Metric::CacheHit => "cache.hit",
            Metric::CacheMiss => "cache.miss",
            Metric::CacheOverwrite => "cache.overwrite",
            Metric::JwksFetchOk => "jwks.fetch_ok",
            Metric::JwksFetchFailed => "jwks.fetch_failed",
            Metric::JwksKeys => "jwks.keys",
            Metric::ExchangeLatency => "exchange.latency_ms",
            Metric::SharedKeysCreated => "shared_data.keys_created",
            Metric::IntrospectionsOk => "introspections.ok",
            Metric::IntrospectionsFailed => "introspections.failed",
            Metric::IntrospectionCacheHit => "introspection_cache.hit",
        }
    }

    fn kind(self) -> MetricKind {
        match self {
            Metric::JwksKeys => MetricKind::Gauge,
            Metric::ExchangeLatency => MetricKind::Histogram,
            _ => MetricKind::Counter,
        }
    }
}

impl Metric {
    /// The counter for a refusal.
    pub fn for_denial(d: &Denial) -> Metric {
        match d.kind {
            DenialKind::MissingToken => Metric::MissingToken,
            DenialKind::InvalidRequest => Metric::InvalidRequest,
            DenialKind::InvalidToken => Metric::InvalidToken,
            DenialKind::InsufficientScope => Metric::InsufficientScope,
            DenialKind::InsufficientClaims => Metric::InsufficientClaims,
            DenialKind::BodyTooLarge => Metric::BodyTooLarge,
            DenialKind::ExchangeRefused => Metric::ExchangeRefused,
            DenialKind::BadGateway => Metric::BadGateway,
            DenialKind::Unavailable => Metric::Unavailable,
            DenialKind::Timeout => Metric::Timeout,
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    /// Ids by `Metric as usize`, once defined; `None` where the proxy refused one.
    ids: Option<Vec<Option<u32>>>,
    /// Counts not yet handed to the proxy, by `Metric as usize`.
    pending: [i64; ALL.len()],
}

impl Metrics {
    fn id(&mut self, host: &mut dyn Host, m: Metric) -> Option<u32> {
        let ids = self.ids.get_or_insert_with(|| {
            ALL.iter()
                .map(|m| host.define_metric(m.kind(), &format!("{PREFIX}.{}", m.name())))
                .collect()
        });
        ids.get(m as usize).copied().flatten()
    }

    /// Counts one; the proxy sees it at the next `flush`.
    pub fn inc(&mut self, m: Metric) {
        self.add(m, 1);
    }

    /// Counts `n`; the proxy sees them at the next `flush`.
    pub fn add(&mut self, m: Metric, n: u64) {
        if let Some(p) = self.pending.get_mut(m as usize) {
            *p = p.saturating_add(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Hands the gathered counts to the proxy.
    pub fn flush(&mut self, host: &mut dyn Host) {
        for m in ALL {
            let n = std::mem::take(&mut self.pending[m as usize]);
            if n != 0 {
                if let Some(id) = self.id(host, m) {
                    host.add_metric(id, n);
                }
            }
        }
    }

    /// Sets a gauge or records a histogram value.
    pub fn record(&mut self, host: &mut dyn Host, m: Metric, value: u64) {
        if let Some(id) = self.id(host, m) {
            host.record_metric(id, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::challenge::{self, Denial, DenialKind, MISSING_TOKEN};

    #[test]
    fn denials_are_counted_by_their_kind_not_their_wording() {
        let worded_like_missing = Denial {
            kind: DenialKind::InvalidToken,
            description: MISSING_TOKEN,
            ..challenge::bad_gateway()
        };
        assert_eq!(Metric::for_denial(&worded_like_missing), Metric::InvalidToken);
        assert_eq!(Metric::for_denial(&challenge::gateway_timeout()), Metric::Timeout);
        assert_eq!(
            Metric::for_denial(&challenge::payload_too_large()),
            Metric::BodyTooLarge
        );
    }

    #[test]
    fn every_metric_is_listed_once_in_order() {
        for (i, m) in ALL.iter().enumerate() {
            assert_eq!(*m as usize, i, "{m:?}");
        }
        let mut names: Vec<_> = ALL.iter().map(|m| m.name()).collect();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }
}
