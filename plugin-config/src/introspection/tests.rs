//! `oidc.introspection`, top-level and in rules.

use crate::{parse_with_env, ClientAuthMethod, Config, ConfigError, RuleAction};
use serde_json::{json, Value};

const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----";

fn env(name: &str) -> Option<String> {
    match name {
        "INTRO_SECRET" => Some("intro-secret".into()),
        "OTHER_SECRET" => Some("other-secret".into()),
        "INTRO_KEY" => Some(KEY_PEM.into()),
        _ => None,
    }
}

fn intro() -> Value {
    json!({"url": "https://idp.example.com/token/introspection", "clientId": "gw",
        "clientSecretEnv": "INTRO_SECRET"})
}

fn config(introspection: Value) -> Value {
    json!({"oidc": {"issuer": "https://idp.example.com", "audience": "mcp",
        "jwksUrl": "https://idp.example.com/keys", "introspection": introspection}})
}

fn parse(v: Value) -> Result<Config, ConfigError> {
    parse_with_env(v.to_string().as_bytes(), &env)
}

fn err(introspection: Value) -> ConfigError {
    parse(config(introspection)).unwrap_err()
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

#[test]
fn defaults_and_the_endpoint() {
    let c = parse(config(intro())).unwrap();
    let i = c.oidc.unwrap().introspection.unwrap();
    assert_eq!(i.at, "oidc.introspection");
    assert_eq!(i.endpoint.cluster, "outbound|443||idp.example.com");
    assert_eq!(i.endpoint.path, "/token/introspection");
    assert_eq!(i.endpoint.authority, "idp.example.com");
    assert_eq!(i.cache_seconds, 60);
    assert!(!i.require_audience);
    assert_eq!(i.client.method, ClientAuthMethod::ClientSecretBasic);
    assert_eq!(i.client.id.as_deref(), Some("gw"));
    assert_eq!(i.client.secret.as_ref().map(|s| s.expose()), Some("intro-secret"));
}

#[test]
fn every_key_is_read() {
    let v = json!({"url": "https://idp.example.com/i", "cluster": "idp", "clientId": "gw",
        "clientSecretEnv": "INTRO_SECRET", "clientAuthMethod": "client_secret_post",
        "cacheSeconds": 300.0, "requireAudience": true});
    let i = parse(config(v)).unwrap().oidc.unwrap().introspection.unwrap();
    assert_eq!(i.endpoint.cluster, "idp");
    assert_eq!(i.client.method, ClientAuthMethod::ClientSecretPost);
    assert_eq!(i.cache_seconds, 300);
    assert!(i.require_audience);
}

#[test]
fn private_key_jwt_reuses_the_client_keys() {
    let v = json!({"url": "https://idp.example.com/i", "clientId": "gw", "clientAssertionKeyEnv": "INTRO_KEY",
        "clientAssertionKid": "k1"});
    let i = parse(config(v)).unwrap().oidc.unwrap().introspection.unwrap();
    assert_eq!(i.client.method, ClientAuthMethod::PrivateKeyJwt);
    let a = i.client.assertion.unwrap();
    assert_eq!(
        a.audience, "https://idp.example.com/i",
        "the endpoint is the assertion's audience"
    );
    assert_eq!(a.kid.as_deref(), Some("k1"));
}

#[test]
fn errors_name_the_field_and_the_fix() {
    let cases = [
        (
            json!({"clientId": "gw", "clientSecretEnv": "INTRO_SECRET"}),
            "oidc.introspection.url",
            "required",
        ),
        (
            with(intro(), "url", "introspection".into()),
            "oidc.introspection.url",
            "absolute",
        ),
        (
            with(intro(), "url", "http://idp.internal/i".into()),
            "oidc.introspection.url",
            "insecureAllowHttp",
        ),
        (
            with(intro(), "cacheSeconds", 301.into()),
            "oidc.introspection.cacheSeconds",
            "between 1 and 300",
        ),
        (
            with(intro(), "cacheSeconds", 0.into()),
            "oidc.introspection.cacheSeconds",
            "between 1 and 300",
        ),
        (
            with(intro(), "cacheSeconds", 1.5.into()),
            "oidc.introspection.cacheSeconds",
            "whole number",
        ),
        (
            with(intro(), "clientSecretEnv", "NOPE".into()),
            "oidc.introspection.clientSecretEnv",
            "NOPE",
        ),
        (
            json!({"url": "https://idp.example.com/i"}),
            "oidc.introspection.clientId",
            "RFC 7662",
        ),
        (
            with(intro(), "clientAuthMethod", "tls".into()),
            "oidc.introspection.clientAuthMethod",
            "not supported",
        ),
        (
            with(intro(), "clientAssertionKid", "k".into()),
            "oidc.introspection.clientAssertionKid",
            "private_key_jwt",
        ),
        (
            with(intro(), "cluster", "".into()),
            "oidc.introspection.cluster",
            "empty",
        ),
        (
            with(intro(), "timeoutMs", 5.into()),
            "oidc.introspection.timeoutMs",
            "unknown field",
        ),
        (
            with(intro(), "requireAudience", "yes".into()),
            "oidc.introspection.requireAudience",
            "boolean",
        ),
    ];
    for (v, path, says) in cases {
        let e = err(v);
        assert_eq!(e.path, path, "{e}");
        assert!(e.message.contains(says), "{e}");
    }
}

#[test]
fn each_rule_has_its_own_endpoint_and_inherits_the_top_level_one() {
    let mut v = config(intro());
    v["rules"] = json!([
        {"match": {"pathPrefix": "/a"}, "oidc": {"audience": "a",
            "introspection": {"url": "https://other.example.com/i", "clientId": "gw-a",
                "clientSecretEnv": "OTHER_SECRET", "cacheSeconds": 10}}},
        {"match": {"pathPrefix": "/b"}, "oidc": {"audience": "b"}},
        {"match": {"pathPrefix": "/c"}, "oidc": {"audience": "c", "introspection": {"url": "https://x/i"}}},
    ]);
    let e = parse(v.clone()).unwrap_err();
    assert_eq!(e.path, "rules[2].oidc.introspection.clientId", "{e}");
    v["rules"].as_array_mut().unwrap().pop();
    let c = parse(v).unwrap();
    let own = |i: usize| match &c.rules[i].action {
        RuleAction::Apply { oidc, .. } => oidc.introspection.clone().unwrap(),
        RuleAction::Skip => unreachable!(),
    };
    assert_eq!(own(0).endpoint.url, "https://other.example.com/i");
    assert_eq!(own(0).at, "rules[0].oidc.introspection");
    assert_eq!(own(0).cache_seconds, 10);
    assert_eq!(own(0).client.id.as_deref(), Some("gw-a"));
    assert_eq!(own(1).endpoint.url, "https://idp.example.com/token/introspection");
    assert_eq!(own(1).at, "rules[1].oidc.introspection");
}

#[test]
fn without_it_nothing_is_introspected() {
    let mut v = config(intro());
    v["oidc"].as_object_mut().unwrap().remove("introspection");
    assert!(parse(v).unwrap().oidc.unwrap().introspection.is_none());
}
