//! The actor token (RFC 8693 §2.1 `actor_token`, with `actor_token_type`).
//! A token from the environment is fixed at configure time; the filter's
//! own token comes from a client credentials grant (RFC 6749 §4.4) at the
//! same token endpoint, with the same client authentication. The request
//! flow fetches it (`Exchanger::actor_request`, `Exchanger::actor_answer`),
//! keeps it until it expires and hands it to every exchange.

use super::answer::{token_response, Exchanged, Failure};
use plugin_config::Actor;
use url::form_urlencoded::Serializer;

/// Where an exchange's actor token comes from.
pub enum Source {
    None,
    /// From the environment: the same token in every exchange.
    Fixed(String),
    /// The filter's own: `form` is its client credentials grant, without
    /// client authentication.
    Fetched {
        form: String,
    },
}

impl Source {
    pub fn new(actor: Option<&Actor>) -> Source {
        match actor {
            None => Source::None,
            Some(Actor::Env { token, .. }) => Source::Fixed(token.expose().to_string()),
            Some(Actor::ClientCredentials { scopes }) => {
                let mut form = Serializer::new(String::new());
                form.append_pair("grant_type", "client_credentials");
                if !scopes.is_empty() {
                    form.append_pair("scope", &scopes.join(" "));
                }
                Source::Fetched { form: form.finish() }
            }
        }
    }

    /// What the actor adds to the exchange's cache key: who acts, never
    /// the token itself for a fetched one (it changes, the actor does not).
    pub fn digest_part(&self) -> String {
        match self {
            Source::None => String::new(),
            Source::Fixed(token) => format!("actor=fixed:{token}"),
            Source::Fetched { form } => format!("actor=own:{form}"),
        }
    }
}

/// `actor_token` and `actor_token_type`, encoded.
pub fn params(token: &str, token_type: &str) -> String {
    Serializer::new(String::new())
        .append_pair("actor_token", token)
        .append_pair("actor_token_type", token_type)
        .finish()
}

/// The client credentials grant's answer. Every refusal concerns our own
/// client, never the caller, so each is a 502.
pub fn answer(status: u16, body: &[u8]) -> Result<Exchanged, Failure> {
    token_response(status, body, "", |code, _| {
        Some(Failure::BadGateway(format!("HTTP {status} {code}")))
    })
}
