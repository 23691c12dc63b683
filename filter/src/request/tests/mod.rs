//! The request flow's tests, a file per phase; the helpers they share.

use super::forward::cache_until;
use super::validation::MAX_WAIT_MS;
use super::*;
use crate::exchange::Exchanged;
use crate::host::mock::{ok, Mock, Shared, ROOT};
use crate::host::CalloutResponse;
use crate::host::Plugin;
use crate::keys::cache::KID_REFETCH_INTERVAL_MS;
use crate::testkeys::{claims, jwks, rsa, rsa_jwk, RSA1, RSA2};
use crate::token::verify::Principal;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::*;
use serde_json::json;

const ISS: &str = "http://127.0.0.1:9000/mcp";

fn config_json() -> serde_json::Value {
    json!({"oidc": {
        "issuer": ISS, "audience": "mcpserver",
        "jwksUrl": "http://127.0.0.1:9000/mcp/jwks",
        "requiredScopes": ["mcp:tools:call"],
        "resourceUrl": "http://127.0.0.1:8080/mcp"
    }})
}

fn config() -> Config {
    plugin_config::parse(config_json().to_string().as_bytes()).unwrap()
}

fn filter() -> Filter {
    Filter::new(&config(), "tef").unwrap()
}

/// Requests counted (after a tick flushes the metrics) as allowed and as
/// refused for scope: what the gate's tests count decisions by.
fn decisions(f: &mut Filter, m: &mut Mock) -> (i64, i64) {
    m.enter(ROOT);
    f.on_tick(m);
    (
        m.metric("token_exchange_filter.requests.allowed"),
        m.metric("token_exchange_filter.requests.insufficient_scope"),
    )
}

/// The filter for `v`, whose `*Env` keys name the environment variables
/// in `secrets` (name, value).
fn filter_with_env(v: &serde_json::Value, secrets: &[(&str, &str)]) -> Filter {
    let env = |n: &str| secrets.iter().find(|(k, _)| *k == n).map(|(_, s)| s.to_string());
    Filter::new(
        &plugin_config::parse_with_env(v.to_string().as_bytes(), &env).unwrap(),
        "tef",
    )
    .unwrap()
}

fn token(pem: &str, kid: &str, scope: &str) -> String {
    rsa(pem, kid).sign(claims(ISS, "mcpserver", scope)).unwrap()
}

fn good() -> String {
    token(RSA1, "k1", "mcp:tools:call")
}

fn keys_k1() -> String {
    jwks(&[rsa_jwk("k1", Some("RS256"))])
}

/// The JWKS with k2 (RSA2's public key) only.
fn keys_k2() -> String {
    let mut k2: serde_json::Value = serde_json::from_str(&rsa(RSA2, "k2").public_key().to_jwk()).unwrap();
    k2["kid"] = "k2".into();
    jwks(&[k2])
}

fn request(f: &mut Filter, m: &mut Mock, id: u32, token: Option<&str>) -> Action {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![(":method", "POST"), (":path", "/mcp")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    m.open(id, &headers);
    f.on_request_headers(m, false)
}

/// Loads k1 into the filter through its first fetch.
fn warm(f: &mut Filter, m: &mut Mock) {
    m.enter(ROOT);
    f.on_tick(m);
    let c = m.callouts.last().unwrap().clone();
    m.enter(ROOT);
    f.on_callout(m, c.token, &ok(&keys_k1()));
}

const BACKEND_TOKEN: &str = "backend.eyJzdWIiOiJhbGljZSJ9.sig";

fn exchanged(expires_in: u64) -> CalloutResponse {
    ok(&json!({
        "access_token": BACKEND_TOKEN, "token_type": "Bearer", "expires_in": expires_in,
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"
    })
    .to_string())
}

fn authorization(m: &Mock, id: u32) -> Option<String> {
    m.stream(id)
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.clone())
}

fn request_at(f: &mut Filter, m: &mut Mock, id: u32, authority: &str, path: &str, token: Option<&str>) -> Action {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![(":method", "POST"), (":authority", authority), (":path", path)];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    m.open(id, &headers);
    f.on_request_headers(m, false)
}

fn sent_form(m: &Mock) -> String {
    String::from_utf8(m.callouts.last().unwrap().body.clone()).unwrap()
}

fn ok_status(status: u16, body: &str) -> CalloutResponse {
    CalloutResponse {
        headers: vec![(":status".into(), status.to_string())],
        body: body.as_bytes().to_vec(),
        truncated: false,
    }
}

/// A second step (after `first`, the first step's answer) that never
/// answers times out like the first: 504.
fn second_step_times_out(mut f: Filter, first: &CalloutResponse) {
    let mut m = Mock::new();
    warm(&mut f, &mut m);
    request(&mut f, &mut m, 2, Some(&good()));
    let step1 = m.callouts.last().unwrap().clone();
    m.enter(2);
    f.on_callout(&mut m, step1.token, first);
    assert_eq!(m.callouts.len(), 3, "keys, first step, second step");
    m.now_ms += 3_500;
    m.enter(ROOT);
    f.on_tick(&mut m);
    assert_eq!(m.sent(2).unwrap().status, 504);
}

fn edge_filter(extra: serde_json::Value, exchange: bool) -> Filter {
    let mut v = config_json();
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    if exchange {
        v["tokenExchange"] =
            json!({"tokenUrl": "http://127.0.0.1:9002/token", "audience": "backend", "timeoutMs": 1000});
    }
    Filter::new(&plugin_config::parse(v.to_string().as_bytes()).unwrap(), "tef").unwrap()
}

fn open_with(f: &mut Filter, m: &mut Mock, id: u32, headers: &[(&str, &str)], body_follows: bool) -> Action {
    m.open(id, headers);
    f.on_request_headers(m, body_follows)
}

/// Client `id` goes away: Envoy drops its stream (and the callouts it
/// owned), the filter hears `on_done`, and the root context's next tick
/// sees what is left.
fn client_leaves(f: &mut Filter, m: &mut Mock, id: u32) {
    m.streams.remove(&id);
    m.enter(ROOT);
    f.on_done(m, id);
    f.on_tick(m);
}

mod edge;
mod exchange_steps;
mod forward;
mod gate;
mod key_waiters;
mod metadata;
mod opaque_tokens;
mod providers;
mod resources;
mod rules;
mod tool_gates;
mod validation;
