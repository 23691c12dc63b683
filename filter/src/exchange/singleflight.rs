//! Callouts in flight on this worker, one per key: concurrent misses for
//! the same key wait on the first one's callout instead of making their
//! own. The exchange keys flights by target and subject token (SHA-256),
//! introspection by endpoint and token; each keeps its own job beside.
//!
//! A flight belongs to the context that made its callout (the proxy cancels
//! the callout if that context ends). When the owner goes, the flight is
//! orphaned but kept while others wait, and the next tick starts it again
//! from the root context. A flight may also be parked: waiting, with others,
//! on the callout that fetches the filter's own actor token.

use std::collections::HashMap;
use std::hash::Hash;

/// Where a flight's exchange stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// Its callout is out, by token.
    Callout(u32),
    /// Its callout was lost with the context that made it.
    Orphaned,
    /// Waiting on a callout it shares with other flights (the filter's own
    /// actor token), which sends its exchange when it lands.
    Parked,
}

/// One callout in flight. `W` is what each waiting request brings along
/// (the filter keeps its policy there); `J` what the flight's owner keeps
/// to go on or start again (the caller's token, which step is out).
pub struct Flight<W, J> {
    pub out: Out,
    pub owner: u32,
    /// When the current callout started, for its timeout.
    pub started_ms: u64,
    /// Paused requests, by context id, each with what it brought.
    pub waiters: Vec<(u32, W)>,
    pub job: J,
}

/// Flights by key (the filter's: exchange target and subject token's SHA-256)
/// and by the token of their callout.
pub struct Flights<K, W, J> {
    by_key: HashMap<K, Flight<W, J>>,
    by_token: HashMap<u32, K>,
}

impl<K, W, J> Default for Flights<K, W, J> {
    fn default() -> Self {
        Flights {
            by_key: HashMap::new(),
            by_token: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash, W, J> Flights<K, W, J> {
    /// Adds `ctx` to the flight for `key`, if there is one; else hands
    /// `with` back.
    pub fn join(&mut self, key: &K, ctx: u32, with: W) -> Result<(), W> {
        match self.by_key.get_mut(key) {
            Some(f) => {
                f.waiters.push((ctx, with));
                Ok(())
            }
            None => Err(with),
        }
    }

    pub fn start(&mut self, key: K, flight: Flight<W, J>) {
        if let Out::Callout(t) = flight.out {
            self.by_token.insert(t, key);
        }
        self.by_key.insert(key, flight);
    }

    /// The flight a callout answer belongs to, removed.
    pub fn finish(&mut self, token: u32) -> Option<(K, Flight<W, J>)> {
        let key = self.by_token.remove(&token)?;
        self.by_key.remove(&key).map(|f| (key, f))
    }

    /// Context `ctx` ended: it waits no more, and a flight it owned lost its callout.
    pub fn leave(&mut self, ctx: u32) {
        let mut dead = Vec::new();
        for (key, f) in self.by_key.iter_mut() {
            f.waiters.retain(|(w, _)| *w != ctx);
            if let (Out::Callout(t), true) = (f.out, f.owner == ctx) {
                self.by_token.remove(&t);
                f.out = Out::Orphaned;
            }
            if f.waiters.is_empty() {
                dead.push(*key);
            }
        }
        for key in dead {
            self.remove(&key);
        }
    }

    /// Keys of flights that lost their callout but still have waiters.
    pub fn orphans(&self) -> Vec<K> {
        self.by_key
            .iter()
            .filter(|(_, f)| f.out == Out::Orphaned)
            .map(|(k, _)| *k)
            .collect()
    }

    /// The flight for `key`, removed.
    pub fn remove(&mut self, key: &K) -> Option<Flight<W, J>> {
        let f = self.by_key.remove(key)?;
        if let Out::Callout(t) = f.out {
            self.by_token.remove(&t);
        }
        Some(f)
    }

    /// The flight for `key`, removed, if it is parked.
    pub fn unpark(&mut self, key: &K) -> Option<Flight<W, J>> {
        match self.by_key.get(key) {
            Some(f) if f.out == Out::Parked => self.remove(key),
            _ => None,
        }
    }

    /// Removes and returns the flights `pred` picks, with their keys.
    pub fn take(&mut self, pred: impl Fn(&K, &Flight<W, J>) -> bool) -> Vec<(K, Flight<W, J>)> {
        let keys: Vec<K> = self
            .by_key
            .iter()
            .filter(|(k, f)| pred(k, f))
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .filter_map(|k| self.remove(&k).map(|f| (k, f)))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}
