//! How the filter authenticates at a token endpoint (RFC 6749 §2.3): a
//! client secret from the environment, sent by HTTP Basic or in the form,
//! a `private_key_jwt` assertion (RFC 7523 §2.2), or nothing for a public
//! client. Each combination that could never work is refused here. The
//! same keys, and this validation, serve `tokenExchange`, id-jag's
//! `assertionGrant` and `oidc.introspection`.

use super::model::{AssertionAlg, Client, ClientAssertion, ClientAuthMethod, Secret};
use crate::error::ConfigError;
use crate::field::non_empty;
use crate::raw::RawClient;

type Field<'a> = &'a dyn Fn(&str) -> String;
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A section's validated client authentication; a secret is sent with
/// `secret_method` unless `clientAuthMethod` says otherwise.
pub fn client_auth(
    raw: &RawClient,
    secret_method: ClientAuthMethod,
    field: Field,
    token_url: &str,
    env: Env,
) -> Result<Client, ConfigError> {
    if let Some(id) = &raw.client_id {
        non_empty(&field("clientId"), id)?;
    }
    let (secret, secret_inline) = secret(raw, field, env)?;
    let method = method(raw, secret_method, secret.is_some(), field)?;
    let assertion = match method {
        ClientAuthMethod::PrivateKeyJwt => Some(client_assertion(raw, field, token_url, env)?),
        _ => None,
    };
    Ok(Client {
        id: raw.client_id.clone(),
        secret,
        secret_inline,
        method,
        assertion,
    })
}

/// The client secret, and whether it was written inline.
fn secret(raw: &RawClient, field: Field, env: Env) -> Result<(Option<Secret>, bool), ConfigError> {
    Ok(match (&raw.client_secret_env, &raw.client_secret) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                field("clientSecret"),
                "set either clientSecretEnv or clientSecret, not both; prefer clientSecretEnv",
            ))
        }
        (Some(var), None) => (Some(Secret::new(from_env(&field("clientSecretEnv"), var, env)?)), false),
        (None, Some(s)) => {
            non_empty(&field("clientSecret"), s)?;
            (Some(Secret::new(s.clone())), true)
        }
        (None, None) => (None, false),
    })
}

/// The method: as configured, else implied by what is configured.
fn method(
    raw: &RawClient,
    secret_method: ClientAuthMethod,
    has_secret: bool,
    field: Field,
) -> Result<ClientAuthMethod, ConfigError> {
    let method = match raw.client_auth_method.as_deref() {
        None if raw.client_assertion_key_env.is_some() => ClientAuthMethod::PrivateKeyJwt,
        None if has_secret => secret_method,
        None | Some("none") => ClientAuthMethod::None,
        Some("client_secret_basic") => ClientAuthMethod::ClientSecretBasic,
        Some("client_secret_post") => ClientAuthMethod::ClientSecretPost,
        Some("private_key_jwt") => ClientAuthMethod::PrivateKeyJwt,
        Some(other) => {
            return Err(ConfigError::new(
                field("clientAuthMethod"),
                format!(
                    "{other:?} is not supported; use client_secret_basic, client_secret_post, private_key_jwt or none"
                ),
            ))
        }
    };
    fits(raw, method, has_secret, field)?;
    if method != ClientAuthMethod::None && raw.client_id.is_none() {
        return Err(ConfigError::new(
            field("clientId"),
            "is required to authenticate the client",
        ));
    }
    Ok(method)
}

/// Refuses what the method would never send, or needs and lacks.
fn fits(raw: &RawClient, method: ClientAuthMethod, has_secret: bool, field: Field) -> Result<(), ConfigError> {
    let assertion_keys = [
        ("clientAssertionKid", raw.client_assertion_kid.is_some()),
        ("clientAssertionAlg", raw.client_assertion_alg.is_some()),
        ("clientAssertionAudience", raw.client_assertion_audience.is_some()),
        ("clientAssertionCertEnv", raw.client_assertion_cert_env.is_some()),
    ];
    match method {
        ClientAuthMethod::None if has_secret => {
            return Err(ConfigError::new(
                field("clientAuthMethod"),
                "is none, so the client secret would never be sent; remove the secret or use client_secret_basic",
            ))
        }
        ClientAuthMethod::ClientSecretBasic | ClientAuthMethod::ClientSecretPost if !has_secret => {
            return Err(ConfigError::new(
                field("clientSecretEnv"),
                "is required by this clientAuthMethod; name the environment variable holding the secret",
            ))
        }
        ClientAuthMethod::PrivateKeyJwt if has_secret => {
            return Err(ConfigError::new(
                field("clientAuthMethod"),
                "is private_key_jwt, so the client secret would never be sent; remove clientSecretEnv",
            ))
        }
        ClientAuthMethod::PrivateKeyJwt if raw.client_assertion_key_env.is_none() => {
            return Err(ConfigError::new(
                field("clientAssertionKeyEnv"),
                "is required by private_key_jwt; name the environment variable holding the PEM private key",
            ))
        }
        ClientAuthMethod::PrivateKeyJwt => {}
        _ => {
            let mut set = assertion_keys.iter().filter(|(_, set)| *set).map(|(k, _)| *k);
            let key_env = raw.client_assertion_key_env.as_ref().map(|_| "clientAssertionKeyEnv");
            if let Some(k) = key_env.or_else(|| set.next()) {
                return Err(ConfigError::new(
                    field(k),
                    "is only used with clientAuthMethod private_key_jwt; remove it or set that method",
                ));
            }
        }
    }
    Ok(())
}

/// A secret's value from the environment, or an error naming the variable.
pub(super) fn from_env(path: &str, var: &str, env: Env) -> Result<String, ConfigError> {
    non_empty(path, var)?;
    match env(var) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ConfigError::new(
            path,
            format!(
                "environment variable {var} is not set or empty; set it in \
                 vm_config.environment_variables (Envoy) or vmConfig.env (Istio)"
            ),
        )),
    }
}

fn client_assertion(raw: &RawClient, field: Field, token_url: &str, env: Env) -> Result<ClientAssertion, ConfigError> {
    let key_env = raw.client_assertion_key_env.clone().unwrap_or_default();
    let key_pem = from_env(&field("clientAssertionKeyEnv"), &key_env, env)?;
    if !key_pem.contains("-----BEGIN") || !key_pem.contains("PRIVATE KEY-----") {
        return Err(ConfigError::new(
            field("clientAssertionKeyEnv"),
            format!("environment variable {key_env} does not hold a PEM private key (-----BEGIN ... PRIVATE KEY-----)"),
        ));
    }
    let alg = match raw.client_assertion_alg.as_deref() {
        None | Some("RS256") => AssertionAlg::RS256,
        Some("PS256") => AssertionAlg::PS256,
        Some("ES256") => AssertionAlg::ES256,
        Some(other) => {
            return Err(ConfigError::new(
                field("clientAssertionAlg"),
                format!("{other:?} is not supported; use RS256, PS256 or ES256"),
            ))
        }
    };
    if let Some(k) = &raw.client_assertion_kid {
        non_empty(&field("clientAssertionKid"), k)?;
    }
    let audience = match &raw.client_assertion_audience {
        Some(a) => {
            non_empty(&field("clientAssertionAudience"), a)?;
            a.clone()
        }
        None => token_url.to_string(),
    };
    let x5t = match &raw.client_assertion_cert_env {
        None => None,
        Some(var) => {
            let path = field("clientAssertionCertEnv");
            let pem = from_env(&path, var, env)?;
            Some(thumbprint(&pem).ok_or_else(|| {
                ConfigError::new(
                    path,
                    format!("environment variable {var} does not hold a PEM certificate (-----BEGIN CERTIFICATE-----)"),
                )
            })?)
        }
    };
    Ok(ClientAssertion {
        key_pem: Secret::new(key_pem),
        key_env,
        alg,
        kid: raw.client_assertion_kid.clone(),
        audience,
        x5t,
    })
}

/// `x5t`: base64url (no padding) of the SHA-1 of the first certificate's DER.
fn thumbprint(pem: &str) -> Option<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine;
    use sha1::{Digest, Sha1};
    let body = pem.split("-----BEGIN CERTIFICATE-----").nth(1)?;
    let body = body.split("-----END CERTIFICATE-----").next()?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = STANDARD.decode(b64).ok()?;
    // A DER certificate is a SEQUENCE.
    if der.first() != Some(&0x30) {
        return None;
    }
    Some(URL_SAFE_NO_PAD.encode(Sha1::digest(&der)))
}
