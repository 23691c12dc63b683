//! The key caches of the policy table's issuers, one each: each has its own
//! shared-data entries, refresh schedule, unknown-kid rate limit and
//! discovery, so a key of one issuer never verifies another's token.

use crate::host::{CalloutResponse, Host};
use crate::keys::cache::{Answer, Fetch, JwksCache};
use crate::request::policy::{IssuerId, Policies};
use plugin_config::{KeySource, Oidc};
use sha2::{Digest, Sha256};

/// How the fetch that waiting requests waited for ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastFetch {
    Succeeded,
    /// An unknown key is then our problem, not the client's.
    Failed,
}

pub struct Keyring {
    /// By `IssuerId`, in the table's order.
    caches: Vec<(IssuerId, JwksCache)>,
}

impl Keyring {
    /// `plugin` names the shared-data keys: Istio gives all plugins on a
    /// proxy one keyspace.
    pub fn new(policies: &Policies, plugin: &str) -> Keyring {
        let caches = policies
            .issuers()
            .map(|(id, oidc)| (id, JwksCache::new(oidc, &keys_name(plugin, oidc))))
            .collect();
        Keyring { caches }
    }

    pub fn get(&self, issuer: IssuerId) -> Option<&JwksCache> {
        self.caches.get(issuer.index()).map(|(_, c)| c)
    }

    pub fn get_mut(&mut self, issuer: IssuerId) -> Option<&mut JwksCache> {
        self.caches.get_mut(issuer.index()).map(|(_, c)| c)
    }

    /// The issuer whose fetch a callout answered, and what it meant.
    pub fn answer(&mut self, host: &mut dyn Host, token: u32, resp: &CalloutResponse) -> Option<(IssuerId, Answer)> {
        self.caches
            .iter_mut()
            .map(|(id, cache)| (*id, cache.on_response(host, token, resp)))
            .find(|(_, a)| *a != Answer::NotOurs)
    }

    /// The stream `id` ended; a fetch it owned went with it.
    pub fn forget_owner(&mut self, host: &mut dyn Host, id: u32) {
        for (_, cache) in &mut self.caches {
            if cache.forget_owner(host, id) {
                log::debug!("JWKS fetch owner {id} went away; the next tick fetches again");
            }
        }
    }

    /// One issuer's tick: adopt other workers' keys, give up a lost fetch,
    /// refresh on schedule, and start the fetch its `waiting` requests need.
    /// How the fetch they wait for ended, if it did.
    pub fn tick(&mut self, host: &mut dyn Host, issuer: IssuerId, waiting: bool) -> Option<LastFetch> {
        let cache = self.get_mut(issuer)?;
        let tick = cache.on_tick(host);
        if tick.adopted {
            return Some(LastFetch::Succeeded);
        }
        if tick.lost {
            return Some(LastFetch::Failed);
        }
        // Waiters whose fetch was elsewhere (another worker's lease) or went
        // away with its owner.
        let due = cache.keys().is_none() || cache.refetch_allowed(host, host.now_ms());
        if !waiting || cache.fetching() || !due {
            return None;
        }
        match cache.fetch(host) {
            Fetch::Adopted => Some(LastFetch::Succeeded),
            Fetch::Failed => Some(LastFetch::Failed),
            Fetch::Pending => None,
        }
    }
}

/// The shared-data key of an issuer's keys: `tef:<plugin>:jwks:` and 16 hex
/// of the SHA-256 of the issuer and where its keys are. It names what the
/// entry depends on, and nothing else, so config pushes that keep the
/// issuer keep its keys, and the number of keys grows only with issuers.
fn keys_name(plugin: &str, oidc: &Oidc) -> String {
    let source = match &oidc.keys {
        KeySource::Jwks(e) => e.url.as_str(),
        KeySource::Discovery(d) => d.openid.url.as_str(),
    };
    let digest = Sha256::new()
        .chain_update(oidc.issuer.as_bytes())
        .chain_update([0])
        .chain_update(source.as_bytes())
        .finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("tef:{plugin}:jwks:{hex}")
}
