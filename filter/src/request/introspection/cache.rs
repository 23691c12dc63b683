//! Introspection answers in proxy-wasm shared data, so every worker takes a
//! token the endpoint already vouched for without asking again, and a bad
//! token cannot make the filter hammer it.
//!
//! A fixed table of slots (`support::slots`), keyed `tef:<plugin>:i<slot>`:
//! junk tokens overwrite slots, never add keys. An entry's key is SHA-256
//! over the introspector's parameters (endpoint, client, issuer, the
//! route's audiences) and the token's SHA-256, so an answer got for one
//! resource is never taken for another, and a changed config finds nothing.
//! An entry holds the answer itself (`I`, or `A` and its JSON), and the
//! checks run again on every worker that reads it; each worker keeps the
//! verdicts it read in memory, bounded, in front of shared data.

use crate::host::Host;
use crate::support::bounded::Bounded;
use crate::support::slots::{Put, SlotKey, SlotTable};
use crate::token::introspection::{self, Answer, MAX_ANSWER_BYTES};
use crate::token::verified::TokenHash;
use crate::token::verify::{Principal, Reject};
use sha2::{Digest, Sha256};
use std::rc::Rc;

/// How long an answer that refuses the token is kept: long enough that a
/// bad token cannot hammer the endpoint, short enough for a fix to show.
pub const NEGATIVE_MS: u64 = 10_000;
/// Verdicts each worker keeps in memory, and the bytes they may hold.
pub const LOCAL_CAPACITY: usize = 10_000;
pub const LOCAL_BYTES: usize = 8 << 20;

const INACTIVE: u8 = b'I';
const ACTIVE: u8 = b'A';

/// What an answer means for a route.
pub type Verdict = Result<Rc<Principal>, Reject>;

pub struct AnswerCache {
    table: SlotTable,
    local: Bounded<SlotKey, (Verdict, u64)>,
}

impl AnswerCache {
    pub fn new(plugin: &str, max_entries: u32) -> AnswerCache {
        AnswerCache {
            table: SlotTable::new(format!("tef:{plugin}:i"), max_entries, MAX_ANSWER_BYTES + 1),
            local: Bounded::new(LOCAL_CAPACITY.min(max_entries.max(1) as usize), LOCAL_BYTES),
        }
    }

    /// The entry's key for a token under an introspector's `params`.
    pub fn key(params: &[u8; 32], token: &TokenHash) -> SlotKey {
        let mut h = Sha256::new();
        h.update(params);
        h.update(token);
        h.finalize().into()
    }

    /// A verdict this worker already has.
    pub fn verdict(&mut self, key: &SlotKey, now_ms: u64) -> Option<Verdict> {
        match self.local.get(key) {
            Some((v, until)) if now_ms < *until => Some(v.clone()),
            Some(_) => {
                self.local.remove(key);
                None
            }
            None => None,
        }
    }

    /// An answer another worker (or this one, earlier) stored, and until when.
    pub fn answer(&self, host: &dyn Host, key: &SlotKey, now_ms: u64) -> Option<(Answer, u64)> {
        let (raw, until) = self.table.get(host, key, now_ms)?;
        let answer = match raw.split_first() {
            Some((&INACTIVE, _)) => Answer::Inactive,
            Some((&ACTIVE, json)) => introspection::parse(json).ok()?,
            _ => return None,
        };
        Some((answer, until))
    }

    /// Keeps a verdict in this worker's memory until `until_ms`.
    pub fn remember(&mut self, key: SlotKey, verdict: &Verdict, until_ms: u64, now_ms: u64) {
        let size = match verdict {
            Ok(p) => 64 + p.claim_headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>(),
            Err(_) => 64,
        };
        self.local
            .insert(key, (verdict.clone(), until_ms), size, |(_, until)| now_ms < *until);
    }

    /// Stores `body` (an answer's JSON; `None`: inactive) in shared data.
    pub fn store(&self, host: &mut dyn Host, key: &SlotKey, body: Option<&[u8]>, until_ms: u64, now_ms: u64) -> Put {
        let raw = match body {
            None => vec![INACTIVE],
            Some(json) => [&[ACTIVE][..], json].concat(),
        };
        self.table.put(host, key, &raw, until_ms, now_ms)
    }
}
