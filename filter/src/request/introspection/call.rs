//! One route's introspection endpoint: the callout that asks it about a
//! token (RFC 7662 §2.1: a form POST of `token` and `token_type_hint`,
//! with the client authentication the exchange uses), what its answer
//! must be, and what a route expects of an active token.

use crate::exchange::{ClientAuth, Stamp};
use crate::host::{CalloutResponse, Host};
use crate::token::introspection::{self, Answer, Expect};
use plugin_config::{ConfigError, Introspection, Oidc};
use sha2::{Digest, Sha256};
use url::form_urlencoded::Serializer;

/// How long an introspection callout may take: the proxy answers a slower
/// one with no response, and the request gets a 503.
pub const TIMEOUT_MS: u64 = 5_000;

/// Which step of an introspection failed, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The callout could not be made (unknown cluster, no random source,
    /// an assertion that would not sign).
    Dispatch,
    /// No answer: connection failed, reset, or timed out.
    NoAnswer,
    /// An answer that is not 200.
    Status,
    /// A 200 whose body is not an introspection answer.
    Malformed,
}

impl Fault {
    pub fn step(self) -> &'static str {
        match self {
            Fault::Dispatch => "dispatch",
            Fault::NoAnswer => "no answer",
            Fault::Status => "status",
            Fault::Malformed => "malformed answer",
        }
    }
}

pub struct Introspector {
    config: Introspection,
    client: ClientAuth,
    issuer: String,
    audiences: Vec<String>,
    skew: u64,
    /// SHA-256 over everything an answer's verdict and lifetime depend on
    /// but the token: endpoint, client, issuer, audiences, requireAudience,
    /// cacheSeconds.
    params: [u8; 32],
}

impl Introspector {
    /// Fails only on a client assertion key that does not fit its algorithm.
    pub fn new(oidc: &Oidc, config: &Introspection) -> Result<Introspector, ConfigError> {
        let client = ClientAuth::new(&config.client, &config.at)?;
        let mut h = Sha256::new();
        let require = if config.require_audience { "aud" } else { "" };
        let lifetime = config.cache_seconds.to_string();
        for part in [
            config.endpoint.url.as_str(),
            &client.key_part(),
            &oidc.issuer,
            require,
            &lifetime,
        ]
        .into_iter()
        .chain(oidc.audiences.iter().map(String::as_str))
        {
            h.update(part.as_bytes());
            h.update([0]);
        }
        Ok(Introspector {
            config: config.clone(),
            client,
            issuer: oidc.issuer.clone(),
            audiences: oidc.audiences.clone(),
            skew: oidc.clock_skew_seconds,
            params: h.finalize().into(),
        })
    }

    pub fn params(&self) -> [u8; 32] {
        self.params
    }

    /// `cacheSeconds`, in ms.
    pub fn cache_ms(&self) -> u64 {
        self.config.cache_seconds.saturating_mul(1000)
    }

    pub fn url(&self) -> &str {
        &self.config.endpoint.url
    }

    pub fn expect(&self) -> Expect<'_> {
        Expect {
            issuer: &self.issuer,
            audiences: &self.audiences,
            require_audience: self.config.require_audience,
            skew: self.skew,
        }
    }

    /// Asks the endpoint about `token`: the callout's id.
    pub fn dispatch(&self, host: &mut dyn Host, token: &str) -> Result<u32, Fault> {
        let mut jti = [0u8; 16];
        if self.client.signs() && !host.random(&mut jti) {
            return Err(Fault::Dispatch);
        }
        let stamp = Stamp {
            now_ms: host.now_ms(),
            jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
        };
        let form = Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("token_type_hint", "access_token")
            .finish();
        let (headers, body) = self
            .client
            .form_post(&self.config.endpoint, &[&form], &stamp)
            .map_err(|_| Fault::Dispatch)?;
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        host.dispatch(&self.config.endpoint, &pairs, Some(&body), TIMEOUT_MS)
            .ok_or(Fault::Dispatch)
    }
}

/// Reads the endpoint's answer: only a whole 200 with an RFC 7662 body counts.
pub fn read(resp: &CalloutResponse) -> Result<Answer, Fault> {
    match resp.status() {
        None => Err(Fault::NoAnswer),
        Some(200) if !resp.truncated => introspection::parse(&resp.body).map_err(|_| Fault::Malformed),
        Some(200) => Err(Fault::Malformed),
        Some(_) => Err(Fault::Status),
    }
}
