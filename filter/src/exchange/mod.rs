//! Token exchange: the requests we send to the IdP and the answers we accept
//! back, for every provider dialect.
//!
//! `rfc8693` is the request RFC 8693 defines (Okta, Keycloak, Google STS
//! and id-jag's first step speak it); `entra_obo` is Microsoft's
//! on-behalf-of grant; `google_sts` adds Google's optional second step,
//! service-account impersonation; `id_jag` the second step of Cross App
//! Access, the ID-JAG presented at the resource authorization server. Each
//! owns its form, its answer parsing and its error mapping; this module
//! holds what they share: client authentication (`client`, with
//! `assertion` for private_key_jwt), the actor token (`actor`), the failure
//! table, and the checks every answer passes.
//!
//! Everything that does not depend on the caller's token is encoded once at
//! configure time; a request only appends the subject token (and the
//! fetched actor token, a fresh client assertion).

mod actor;
pub mod actor_tokens;
mod answer;
mod assertion;
mod client;
mod entra_obo;
mod google_sts;
mod id_jag;
mod rfc8693;
pub mod singleflight;
pub mod token_cache;

pub use answer::{Exchanged, Failure};
pub use client::{ClientAuth, Stamp};

use crate::host::CalloutResponse;
use actor::Source;
use answer::received;
use id_jag::Grant;
use plugin_config::{ConfigError, Endpoint, Provider, TokenExchange};
use sha2::{Digest, Sha256};
use url::form_urlencoded;

/// RFC 7523's grant: Entra's on-behalf-of and id-jag's second step.
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Which callout of an exchange an answer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The filter's own actor token, before the exchange (`actor.source:
    /// clientCredentials`).
    Actor,
    /// The token endpoint (id-jag: the IdP's, for the ID-JAG).
    Token,
    /// google-sts only: IAM Credentials' generateAccessToken.
    Impersonate,
    /// id-jag only: the ID-JAG presented at the resource authorization server.
    Assertion,
}

impl Step {
    /// For the log line of an exchange that failed.
    pub fn name(self) -> &'static str {
        match self {
            Step::Actor => "actor",
            Step::Token => "token",
            Step::Impersonate => "impersonate",
            Step::Assertion => "assertion",
        }
    }
}

/// One callout to make.
pub struct Call<'a> {
    pub step: Step,
    pub endpoint: &'a Endpoint,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Call<'_> {
    /// The headers as the host wants them.
    pub fn header_pairs(&self) -> Vec<(&str, &str)> {
        self.headers.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

/// A POST's headers: the pseudo-headers every callout sets, the body's
/// type, and that a JSON answer is wanted.
fn post_headers(e: &Endpoint, content_type: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "POST".to_string()),
        (":path", e.path.clone()),
        (":authority", e.authority.clone()),
        (":scheme", e.scheme.clone()),
        ("content-type", content_type.to_string()),
        ("accept", "application/json".to_string()),
    ]
}

/// What an answer leads to.
pub enum Next<'a> {
    Done(Exchanged),
    /// Another callout, in the same pause.
    Then(Call<'a>),
}

pub struct Exchanger {
    config: TokenExchange,
    client: ClientAuth,
    /// The grant's form without the subject token, actor token and client
    /// authentication, encoded.
    form: String,
    actor: Source,
    /// `actor_token_type`, when there is an actor.
    actor_type: String,
    /// id-jag's second step.
    grant: Option<Grant>,
    /// SHA-256 over everything that shapes the result but the subject token.
    params_digest: [u8; 32],
}

impl Exchanger {
    /// Fails only on a client assertion key that does not fit its algorithm.
    pub fn new(config: &TokenExchange) -> Result<Exchanger, ConfigError> {
        let client = ClientAuth::new(&config.client, &config.at)?;
        let grant = config.assertion_grant.as_ref().map(Grant::new).transpose()?;
        let mut form = form_urlencoded::Serializer::new(String::new());
        match config.provider {
            Provider::EntraObo => entra_obo::form(config, &mut form),
            _ => rfc8693::form(config, &mut form),
        }
        let form = form.finish();
        let actor = Source::new(config.actor.as_ref());
        let mut h = Sha256::new();
        let grant_part = grant.as_ref().map(Grant::digest_part).unwrap_or_default();
        let impersonation = config
            .impersonation
            .as_ref()
            .map(|i| format!("{}{}", google_sts::impersonation_body(i), i.endpoint.url))
            .unwrap_or_default();
        for part in [
            config.provider.name(),
            &config.token.url,
            &form,
            &client.key_part(),
            &actor.digest_part(),
            &config.actor.as_ref().map(|a| a.token_type()).unwrap_or_default(),
            &grant_part,
            &impersonation,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        Ok(Exchanger {
            actor_type: config.actor.as_ref().map(|a| a.token_type()).unwrap_or_default(),
            config: config.clone(),
            client,
            form,
            actor,
            grant,
            params_digest: h.finalize().into(),
        })
    }

    pub fn config(&self) -> &TokenExchange {
        &self.config
    }

    /// Whether requests carry a signed client assertion (and so need a `jti`).
    pub fn signs(&self) -> bool {
        self.client.signs() || self.grant.as_ref().is_some_and(Grant::signs)
    }

    /// Whether each exchange needs the filter's own actor token, fetched
    /// with `actor_request`.
    pub fn needs_actor(&self) -> bool {
        matches!(self.actor, Source::Fetched { .. })
    }

    /// Where `Bearer <exchanged token>` goes: in place of the caller's token
    /// in Authorization, or in the configured header.
    pub fn forward_header(&self) -> &str {
        self.config.external_token_header.as_deref().unwrap_or("authorization")
    }

    /// What the exchange is for, for logs and the audit line: the
    /// audiences, else the resources, else the scopes (Entra names its
    /// target by scope).
    pub fn target_name(&self) -> String {
        let c = &self.config;
        [&c.audiences, &c.resources, &c.scopes]
            .into_iter()
            .find(|l| !l.is_empty())
            .map_or_else(|| "-".to_string(), |l| l.join(","))
    }

    /// SHA-256 over everything but the subject token that shapes the
    /// result: with the subject's SHA-256, the exchange cache's key.
    pub fn params_digest(&self) -> [u8; 32] {
        self.params_digest
    }

    /// The first callout of an exchange for `subject_token`; `actor` is the
    /// filter's own actor token when `needs_actor`.
    pub fn request(&self, subject_token: &str, actor: Option<&str>, stamp: &Stamp) -> Result<Call<'_>, Failure> {
        let mut subject = form_urlencoded::Serializer::new(String::new());
        let subject_param = match self.config.provider {
            Provider::EntraObo => "assertion",
            _ => "subject_token",
        };
        subject.append_pair(subject_param, subject_token);
        let actor = match (&self.actor, actor) {
            (Source::Fixed(token), _) => actor::params(token, &self.actor_type),
            (Source::Fetched { .. }, Some(token)) => actor::params(token, &self.actor_type),
            _ => String::new(),
        };
        self.client.post(
            Step::Token,
            &self.config.token,
            &[&self.form, &subject.finish(), &actor],
            stamp,
        )
    }

    /// The client credentials grant for the filter's own actor token.
    pub fn actor_request(&self, stamp: &Stamp) -> Result<Call<'_>, Failure> {
        let Source::Fetched { form } = &self.actor else {
            return Err(Failure::BadGateway("no actor token is configured".into()));
        };
        self.client
            .post(Step::Actor, &self.config.token, &[form], stamp)
            .map_err(|f| f.at(Step::Actor))
    }

    /// Checks the actor token's answer.
    pub fn actor_answer(&self, resp: &CalloutResponse, elapsed_ms: u64) -> Result<Exchanged, Failure> {
        received(resp, elapsed_ms, self.config.timeout_ms)
            .and_then(|body| actor::answer(resp.status().unwrap_or_default(), body))
            .map_err(|f| f.at(Step::Actor))
    }

    /// Checks an answer to one of an exchange's callouts. `elapsed_ms`
    /// tells a timeout from other failures: proxies report both as no
    /// answer (or as their own 504). `stamp` signs a second step's client
    /// assertion. The actor token's answers go to `actor_answer`: one that
    /// reaches here (a flight still waiting for it when it gave up) fails.
    pub fn answer(
        &self,
        step: Step,
        resp: &CalloutResponse,
        elapsed_ms: u64,
        subject_token: &str,
        stamp: &Stamp,
    ) -> Result<Next<'_>, Failure> {
        let body = received(resp, elapsed_ms, self.config.timeout_ms).map_err(|f| f.at(step))?;
        let status = resp.status().unwrap_or_default();
        match step {
            Step::Actor => Err(Failure::Unavailable("actor token: not fetched".into())),
            Step::Impersonate => google_sts::impersonated(status, body).map(Next::Done),
            Step::Assertion => id_jag::answer(status, body, subject_token).map(Next::Done),
            Step::Token => {
                let exchanged = match self.config.provider {
                    Provider::EntraObo => entra_obo::answer(status, body, subject_token),
                    _ => rfc8693::answer(&self.config, status, body, subject_token),
                }?;
                Ok(match (&self.config.impersonation, &self.grant) {
                    (Some(i), _) => Next::Then(google_sts::impersonate(i, &exchanged.access_token)),
                    (None, Some(g)) => Next::Then(
                        g.call(&exchanged.access_token, stamp)
                            .map_err(|f| f.at(Step::Assertion))?,
                    ),
                    (None, None) => Next::Done(exchanged),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
