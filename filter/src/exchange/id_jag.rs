//! Cross App Access, step 2 (draft-ietf-oauth-identity-assertion-authz-grant,
//! "Access Token Request"): the ID-JAG the IdP issued in step 1 (RFC 8693, `rfc8693`) is
//! presented at the resource authorization server as an RFC 7523 JWT bearer
//! grant (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`,
//! `assertion`), with that server's own client authentication, and `scope`
//! and `resource` when configured. The answer is an ordinary token answer;
//! its access token is what is forwarded and cached. The ID-JAG is used
//! once and never cached: the next exchange asks the IdP again, so its
//! policy decides every time.

use super::answer::{token_response, Exchanged, Failure};
use super::client::{ClientAuth, Stamp};
use super::{Call, Step, JWT_BEARER};
use plugin_config::{AssertionGrant, ConfigError};
use url::form_urlencoded::Serializer;

pub struct Grant {
    config: AssertionGrant,
    client: ClientAuth,
    /// `grant_type`, `scope` and `resource`, encoded.
    form: String,
}

impl Grant {
    pub fn new(g: &AssertionGrant) -> Result<Grant, ConfigError> {
        let mut form = Serializer::new(String::new());
        form.append_pair("grant_type", JWT_BEARER);
        if !g.scopes.is_empty() {
            form.append_pair("scope", &g.scopes.join(" "));
        }
        for r in &g.resources {
            form.append_pair("resource", r);
        }
        Ok(Grant {
            client: ClientAuth::new(&g.client, &g.at)?,
            config: g.clone(),
            form: form.finish(),
        })
    }

    pub fn signs(&self) -> bool {
        self.client.signs()
    }

    /// What shapes the result, for the exchange's cache key.
    pub fn digest_part(&self) -> String {
        format!(
            "grant={}|{}|{}",
            self.config.token.url,
            self.form,
            self.client.key_part()
        )
    }

    /// The assertion grant for `id_jag`.
    pub fn call(&self, id_jag: &str, stamp: &Stamp) -> Result<Call<'_>, Failure> {
        let assertion = Serializer::new(String::new()).append_pair("assertion", id_jag).finish();
        self.client
            .post(Step::Assertion, &self.config.token, &[&self.form, &assertion], stamp)
    }
}

/// The resource authorization server's answer (RFC 6749 §5.1). Its
/// refusals map as the exchange's do: `invalid_grant` (this user may not
/// have this access) is a 401, `invalid_scope` a 403, the rest 502.
pub fn answer(status: u16, body: &[u8], subject_token: &str) -> Result<Exchanged, Failure> {
    token_response(status, body, subject_token, |_, _| None).map_err(|f| f.at(Step::Assertion))
}
