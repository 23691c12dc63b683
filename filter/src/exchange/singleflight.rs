//! Exchanges in flight on this worker, one per exchange target and subject
//! token (by SHA-256): concurrent misses for the same user and target wait on
//! the first one's callout instead of making their own.
//!
//! A flight belongs to the context that made its callout (the proxy cancels
//! the callout if that context ends). When the owner goes, the flight is
//! orphaned but kept while others wait, and the next tick starts it again
//! from the root context.

use crate::exchange::Step;
use crate::token::verified::TokenHash;
use crate::token::verify::Principal;
use std::collections::HashMap;
use std::rc::Rc;

/// The exchange target (an index into the filter's targets) and the subject token's SHA-256.
pub type Key = (usize, TokenHash);

pub struct Flight {
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
    /// The policy of the request that started it (its waiters share the target).
    pub policy: usize,
    /// Paused requests, by context id.
    pub waiters: Vec<u32>,
}

#[derive(Default)]
pub struct Flights {
    by_key: HashMap<Key, Flight>,
    by_token: HashMap<u32, Key>,
}

impl Flights {
    /// Adds `ctx` to the flight for `key`, if there is one.
    pub fn join(&mut self, key: &Key, ctx: u32) -> bool {
        match self.by_key.get_mut(key) {
            Some(f) => {
                f.waiters.push(ctx);
                true
            }
            None => false,
        }
    }

    pub fn start(&mut self, key: Key, flight: Flight) {
        if let Some(t) = flight.token {
            self.by_token.insert(t, key);
        }
        self.by_key.insert(key, flight);
    }

    /// The flight a callout answer belongs to, removed.
    pub fn finish(&mut self, token: u32) -> Option<(Key, Flight)> {
        let key = self.by_token.remove(&token)?;
        self.by_key.remove(&key).map(|f| (key, f))
    }

    /// Context `ctx` ended: it waits no more, and a flight it owned lost its callout.
    pub fn leave(&mut self, ctx: u32) {
        let mut dead = Vec::new();
        for (key, f) in self.by_key.iter_mut() {
            f.waiters.retain(|w| *w != ctx);
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
    pub fn orphans(&self) -> Vec<Key> {
        self.by_key
            .iter()
            .filter(|(_, f)| f.token.is_none())
            .map(|(k, _)| *k)
            .collect()
    }

    pub fn get(&self, key: &Key) -> Option<&Flight> {
        self.by_key.get(key)
    }

    /// Records a restarted callout for an orphaned flight: the exchange
    /// starts over from its first step.
    pub fn restarted(&mut self, key: &Key, token: u32, owner: u32, now_ms: u64) {
        if let Some(f) = self.by_key.get_mut(key) {
            f.token = Some(token);
            f.step = Step::Token;
            f.owner = owner;
            f.started_ms = now_ms;
            self.by_token.insert(token, *key);
        }
    }

    /// Removes and returns the flights `pred` picks, with their keys.
    pub fn take(&mut self, pred: impl Fn(&Key, &Flight) -> bool) -> Vec<(Key, Flight)> {
        let keys: Vec<Key> = self
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
