//! The filter's own actor tokens (`actor.source: clientCredentials`), one
//! per exchange target, in this worker's memory until shortly before they
//! expire. Each worker fetches its own: one client credentials grant per
//! worker and token lifetime, and the token never enters shared data or its
//! keyspace. One fetch per target is out at a time; every exchange that
//! needs the token meanwhile is parked on it (`K` names each), and is sent
//! when it lands.

use super::Exchanged;
use std::rc::Rc;

/// A fetch in flight.
pub struct Fetch<K> {
    /// Its callout; `None` once the context that made it is gone.
    pub callout: Option<u32>,
    pub owner: u32,
    pub started_ms: u64,
    /// The exchanges waiting for it.
    pub parked: Vec<K>,
}

/// What a target has when an exchange is about to start.
pub enum Have {
    /// A live token.
    Token(Rc<str>),
    /// None, but a fetch is out: park on it.
    Fetching,
    /// None: fetch one.
    Nothing,
}

struct Slot<K> {
    /// The token and until when (ms) it may be used.
    token: Option<(Rc<str>, u64)>,
    fetch: Option<Fetch<K>>,
}

/// By target index.
pub struct ActorTokens<K> {
    slots: Vec<Slot<K>>,
}

impl<K: PartialEq> ActorTokens<K> {
    pub fn new(targets: usize) -> ActorTokens<K> {
        ActorTokens {
            slots: (0..targets)
                .map(|_| Slot {
                    token: None,
                    fetch: None,
                })
                .collect(),
        }
    }

    pub fn get(&self, target: usize, now_ms: u64) -> Have {
        match self.slots.get(target) {
            Some(Slot {
                token: Some((t, until)),
                ..
            }) if now_ms < *until => Have::Token(Rc::clone(t)),
            Some(Slot { fetch: Some(_), .. }) => Have::Fetching,
            _ => Have::Nothing,
        }
    }

    /// A fetch for `target` went out as `callout`, from context `owner`.
    pub fn fetching(&mut self, target: usize, callout: u32, owner: u32, now_ms: u64) {
        if let Some(s) = self.slots.get_mut(target) {
            s.fetch = Some(Fetch {
                callout: Some(callout),
                owner,
                started_ms: now_ms,
                parked: Vec::new(),
            });
        }
    }

    /// Parks `key` on `target`'s fetch. False if there is none.
    pub fn park(&mut self, target: usize, key: K) -> bool {
        match self.slots.get_mut(target).and_then(|s| s.fetch.as_mut()) {
            Some(f) => {
                if !f.parked.contains(&key) {
                    f.parked.push(key);
                }
                true
            }
            None => false,
        }
    }

    /// The fetch `callout` answers, removed, with its target.
    pub fn finish(&mut self, callout: u32) -> Option<(usize, Fetch<K>)> {
        let i = self
            .slots
            .iter()
            .position(|s| s.fetch.as_ref().is_some_and(|f| f.callout == Some(callout)))?;
        self.slots[i].fetch.take().map(|f| (i, f))
    }

    /// Keeps `target`'s fetched token until it expires, less `skew_ms`; one
    /// whose answer gives no lifetime serves only the exchanges parked on it.
    pub fn keep(&mut self, target: usize, ex: &Exchanged, skew_ms: u64, now_ms: u64) -> Rc<str> {
        let token: Rc<str> = ex.access_token.as_str().into();
        let until = ex.expires_at_ms(now_ms).map_or(0, |at| at.saturating_sub(skew_ms));
        if let Some(s) = self.slots.get_mut(target) {
            s.token = (until > now_ms).then(|| (Rc::clone(&token), until));
        }
        token
    }

    /// Drops `target`'s token: an exchange made with it was refused, and a
    /// revoked actor token must not be used until it expires.
    pub fn forget(&mut self, target: usize) {
        if let Some(s) = self.slots.get_mut(target) {
            s.token = None;
        }
    }

    /// Context `ctx` ended: a fetch it made lost its callout.
    pub fn leave(&mut self, ctx: u32) {
        for f in self.slots.iter_mut().filter_map(|s| s.fetch.as_mut()) {
            if f.owner == ctx {
                f.callout = None;
            }
        }
    }

    /// Targets whose fetch lost its callout.
    pub fn orphans(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].fetch.as_ref().is_some_and(|f| f.callout.is_none()))
            .collect()
    }

    /// An orphaned fetch went out again.
    pub fn restarted(&mut self, target: usize, callout: u32, owner: u32, now_ms: u64) {
        if let Some(f) = self.slots.get_mut(target).and_then(|s| s.fetch.as_mut()) {
            (f.callout, f.owner, f.started_ms) = (Some(callout), owner, now_ms);
        }
    }

    /// Removes and returns the fetches `pred` picks, with their targets.
    pub fn take(&mut self, pred: impl Fn(usize, &Fetch<K>) -> bool) -> Vec<(usize, Fetch<K>)> {
        let mut out = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.fetch.as_ref().is_some_and(|f| pred(i, f)) {
                out.extend(s.fetch.take().map(|f| (i, f)));
            }
        }
        out
    }
}
