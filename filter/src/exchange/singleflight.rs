//! Exchanges in flight on this worker, one per exchange target and subject
//! token (by SHA-256): concurrent misses for the same user and target wait on
//! the first one's callout instead of making their own.
//!
//! A flight belongs to the context that made its callout (the proxy cancels
//! the callout if that context ends). When the owner goes, the flight is
//! orphaned but kept while others wait, and the next tick starts it again
//! from the root context.

use crate::exchange::Step;
use crate::token::verify::Principal;
use std::collections::HashMap;
use std::hash::Hash;
use std::rc::Rc;

/// One exchange in flight. `W` is what each waiting request brings along
/// (the filter keeps its policy there).
pub struct Flight<W> {
    /// The callout's token; `None` while orphaned.
    pub token: Option<u32>,
    /// Which callout of the exchange is out (Google's takes two).
    pub step: Step,
    pub owner: u32,
    /// When the current callout started, for its timeout.
    pub started_ms: u64,
    /// When the exchange started, for the log.
    pub begun_ms: u64,
    /// The caller's token, to send again if the flight is restarted. Kept in
    /// memory only, never logged.
    pub subject: String,
    pub principal: Rc<Principal>,
    /// Paused requests, by context id, each with what it brought.
    pub waiters: Vec<(u32, W)>,
}

/// Flights by key (the filter's: exchange target and subject token's SHA-256)
/// and by the token of their callout.
pub struct Flights<K, W> {
    by_key: HashMap<K, Flight<W>>,
    by_token: HashMap<u32, K>,
}

impl<K, W> Default for Flights<K, W> {
    fn default() -> Self {
        Flights {
            by_key: HashMap::new(),
            by_token: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash, W> Flights<K, W> {
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

    pub fn start(&mut self, key: K, flight: Flight<W>) {
        if let Some(t) = flight.token {
            self.by_token.insert(t, key);
        }
        self.by_key.insert(key, flight);
    }

    /// The flight a callout answer belongs to, removed.
    pub fn finish(&mut self, token: u32) -> Option<(K, Flight<W>)> {
        let key = self.by_token.remove(&token)?;
        self.by_key.remove(&key).map(|f| (key, f))
    }

    /// Context `ctx` ended: it waits no more, and a flight it owned lost its callout.
    pub fn leave(&mut self, ctx: u32) {
        let mut dead = Vec::new();
        for (key, f) in self.by_key.iter_mut() {
            f.waiters.retain(|(w, _)| *w != ctx);
            if f.owner == ctx {
                if let Some(t) = f.token.take() {
                    self.by_token.remove(&t);
                }
            }
            if f.waiters.is_empty() {
                dead.push(*key);
            }
        }
        for key in dead {
            if let Some(Flight { token: Some(t), .. }) = self.by_key.remove(&key) {
                self.by_token.remove(&t);
            }
        }
    }

    /// Keys of flights that lost their callout but still have waiters.
    pub fn orphans(&self) -> Vec<K> {
        self.by_key
            .iter()
            .filter(|(_, f)| f.token.is_none())
            .map(|(k, _)| *k)
            .collect()
    }

    pub fn get(&self, key: &K) -> Option<&Flight<W>> {
        self.by_key.get(key)
    }

    /// Records a restarted callout for an orphaned flight: the exchange
    /// starts over from its first step.
    pub fn restarted(&mut self, key: &K, token: u32, owner: u32, now_ms: u64) {
        if let Some(f) = self.by_key.get_mut(key) {
            f.token = Some(token);
            f.step = Step::Token;
            f.owner = owner;
            f.started_ms = now_ms;
            self.by_token.insert(token, *key);
        }
    }

    /// Removes and returns the flights `pred` picks, with their keys.
    pub fn take(&mut self, pred: impl Fn(&K, &Flight<W>) -> bool) -> Vec<(K, Flight<W>)> {
        let keys: Vec<K> = self
            .by_key
            .iter()
            .filter(|(k, f)| pred(k, f))
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .filter_map(|k| {
                let f = self.by_key.remove(&k)?;
                if let Some(t) = f.token {
                    self.by_token.remove(&t);
                }
                Some((k, f))
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}
