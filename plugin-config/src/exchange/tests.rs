//! `tokenExchange.actor`, `provider: id-jag` and its `assertionGrant`.

use crate::{parse_with_env, Actor, ClientAuthMethod, ConfigError, Provider, TokenExchange, ID_JAG};
use serde_json::{json, Value};

fn env(name: &str) -> Option<String> {
    match name {
        "IDP_SECRET" => Some("idp-secret".into()),
        "AS_SECRET" => Some("as-secret".into()),
        "ACTOR_JWT" => Some("eyJhbGciOiJSUzI1NiJ9.e30.c2ln".into()),
        _ => None,
    }
}

fn parse(te: Value) -> Result<TokenExchange, ConfigError> {
    let cfg = json!({
        "oidc": {"issuer": "https://idp.example.com", "audience": "mcp", "jwksUrl": "https://idp.example.com/keys"},
        "tokenExchange": te
    });
    parse_with_env(cfg.to_string().as_bytes(), &env).map(|c| c.token_exchange.unwrap())
}

fn err(te: Value) -> ConfigError {
    parse(te).unwrap_err()
}

fn rfc8693() -> Value {
    json!({"tokenUrl": "https://idp.example.com/token", "clientId": "gw", "clientSecretEnv": "IDP_SECRET",
        "audience": "backend"})
}

fn id_jag() -> Value {
    json!({
        "provider": "id-jag",
        "tokenUrl": "https://idp.example.com/oauth2/v1/token",
        "clientId": "gw", "clientSecretEnv": "IDP_SECRET",
        "audience": "https://as.example.com/",
        "resource": "https://api.example.com/mcp",
        "scopes": ["todos.read"],
        "assertionGrant": {
            "tokenUrl": "https://as.example.com/token",
            "clientId": "gw-at-as", "clientSecretEnv": "AS_SECRET",
            "scopes": ["todos.read"], "resource": "https://api.example.com/mcp"
        }
    })
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

#[test]
fn actor_from_client_credentials() {
    let t = parse(with(
        rfc8693(),
        "actor",
        json!({"source": "clientCredentials", "scopes": ["agent"]}),
    ))
    .unwrap();
    match t.actor.as_ref().unwrap() {
        Actor::ClientCredentials { scopes } => assert_eq!(scopes, &["agent"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        t.actor.unwrap().token_type(),
        "urn:ietf:params:oauth:token-type:access_token"
    );
    // Without scopes: whatever the client is granted by default.
    assert!(parse(with(rfc8693(), "actor", json!({"source": "clientCredentials"}))).is_ok());
}

#[test]
fn actor_from_the_environment() {
    let t = parse(with(rfc8693(), "actor", json!({"source": "env", "env": "ACTOR_JWT"}))).unwrap();
    let a = t.actor.unwrap();
    assert_eq!(a.token_type(), "urn:ietf:params:oauth:token-type:jwt", "jwt by default");
    match &a {
        Actor::Env { token, env, .. } => {
            assert_eq!(
                (token.expose(), env.as_str()),
                ("eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "ACTOR_JWT")
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(!format!("{a:?}").contains("e30"), "Debug never shows the token");
    let t = parse(with(
        rfc8693(),
        "actor",
        json!({"source": "env", "env": "ACTOR_JWT", "tokenType": "access_token"}),
    ))
    .unwrap();
    assert_eq!(
        t.actor.unwrap().token_type(),
        "urn:ietf:params:oauth:token-type:access_token"
    );
}

#[test]
fn actor_errors_name_the_field_and_the_fix() {
    let public = json!({"tokenUrl": "https://idp.example.com/token", "clientId": "pub"});
    for (te, path, words) in [
        (
            with(rfc8693(), "actor", json!({"source": "self"})),
            "tokenExchange.actor.source",
            "clientCredentials",
        ),
        (
            with(public, "actor", json!({"source": "clientCredentials"})),
            "tokenExchange.actor.source",
            "client authentication",
        ),
        (
            with(
                rfc8693(),
                "actor",
                json!({"source": "clientCredentials", "scopes": ["a b"]}),
            ),
            "tokenExchange.actor.scopes[0]",
            "not a valid scope",
        ),
        (
            with(
                rfc8693(),
                "actor",
                json!({"source": "clientCredentials", "env": "ACTOR_JWT"}),
            ),
            "tokenExchange.actor.env",
            "only used with source env",
        ),
        (
            with(
                rfc8693(),
                "actor",
                json!({"source": "clientCredentials", "tokenType": "jwt"}),
            ),
            "tokenExchange.actor.tokenType",
            "only used with source env",
        ),
        (
            with(rfc8693(), "actor", json!({"source": "env"})),
            "tokenExchange.actor.env",
            "is required",
        ),
        (
            with(rfc8693(), "actor", json!({"source": "env", "env": "NOPE"})),
            "tokenExchange.actor.env",
            "NOPE is not set",
        ),
        (
            with(
                rfc8693(),
                "actor",
                json!({"source": "env", "env": "ACTOR_JWT", "scopes": ["a"]}),
            ),
            "tokenExchange.actor.scopes",
            "only used with source clientCredentials",
        ),
        (
            with(
                rfc8693(),
                "actor",
                json!({"source": "env", "env": "ACTOR_JWT", "tokenType": "bogus"}),
            ),
            "tokenExchange.actor.tokenType",
            "is not a token type",
        ),
        (
            with(rfc8693(), "actor", json!({"source": "env", "envv": "X"})),
            "tokenExchange.actor",
            "envv",
        ),
    ] {
        let e = err(te.clone());
        assert!(e.path.starts_with(path), "{te} -> {e}");
        assert!(e.to_string().contains(words), "{te} -> {e}");
    }
}

#[test]
fn providers_without_an_actor_parameter_refuse_it() {
    let google = json!({"provider": "google-sts",
        "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/o",
        "actor": {"source": "env", "env": "ACTOR_JWT"}});
    let entra = json!({"provider": "entra-obo", "tenantId": "t", "clientId": "c", "clientSecretEnv": "IDP_SECRET",
        "scopes": ["api://b/.default"], "actor": {"source": "clientCredentials"}});
    for (te, provider) in [(google, "google-sts"), (entra, "entra-obo")] {
        let e = err(te);
        assert_eq!(e.path, "tokenExchange.actor");
        assert!(e.message.starts_with(provider), "{e}");
    }
    // okta, keycloak and plain RFC 8693 take one.
    let okta = json!({"provider": "okta", "tokenUrl": "https://o/oauth2/aus1/v1/token", "clientId": "c",
        "clientSecretEnv": "IDP_SECRET", "audience": "api://b", "scopes": ["s"],
        "actor": {"source": "clientCredentials"}});
    assert!(parse(okta).unwrap().actor.is_some());
}

#[test]
fn id_jag_full_example() {
    let t = parse(id_jag()).unwrap();
    assert_eq!(t.provider, Provider::IdJag);
    assert_eq!(t.requested_token_type.as_deref(), Some(ID_JAG));
    assert_eq!(t.subject_token_type, "urn:ietf:params:oauth:token-type:access_token");
    assert_eq!(t.audiences, ["https://as.example.com/"]);
    assert_eq!(t.client.method, ClientAuthMethod::ClientSecretBasic);
    let g = t.assertion_grant.unwrap();
    assert_eq!(g.at, "tokenExchange.assertionGrant");
    assert_eq!(
        (g.token.path.as_str(), g.token.cluster.as_str()),
        ("/token", "outbound|443||as.example.com")
    );
    assert_eq!(g.client.id.as_deref(), Some("gw-at-as"));
    assert_eq!(g.client.secret.as_ref().unwrap().expose(), "as-secret");
    assert_eq!(g.client.method, ClientAuthMethod::ClientSecretBasic);
    assert_eq!(g.scopes, ["todos.read"]);
    assert_eq!(g.resources, ["https://api.example.com/mcp"]);
    // id_token and the explicit URN are accepted; so is a cluster and private_key_jwt at the AS.
    let mut v = id_jag();
    v["subjectTokenType"] = "id_token".into();
    v["requestedTokenType"] = ID_JAG.into();
    v["assertionGrant"]["tokenCluster"] = "as-cluster".into();
    v["assertionGrant"]["clientAuthMethod"] = "client_secret_post".into();
    let t = parse(v).unwrap();
    assert_eq!(t.subject_token_type, "urn:ietf:params:oauth:token-type:id_token");
    let g = t.assertion_grant.unwrap();
    assert_eq!(
        (g.token.cluster.as_str(), g.client.method),
        ("as-cluster", ClientAuthMethod::ClientSecretPost)
    );
}

#[test]
fn id_jag_errors_name_the_field_and_the_fix() {
    let without = |k: &str| {
        let mut v = id_jag();
        v.as_object_mut().unwrap().remove(k);
        v
    };
    let grant = |k: &str, value: Value| {
        let mut v = id_jag();
        if value.is_null() {
            v["assertionGrant"].as_object_mut().unwrap().remove(k);
        } else {
            v["assertionGrant"][k] = value;
        }
        v
    };
    let mut public = without("clientSecretEnv");
    public.as_object_mut().unwrap().remove("clientSecretEnv");
    for (te, path, words) in [
        (
            without("assertionGrant"),
            "tokenExchange.assertionGrant",
            "id-jag requires assertionGrant",
        ),
        (public, "tokenExchange.clientId", "confidential clients"),
        (
            without("audience"),
            "tokenExchange.audience",
            "resource authorization server's issuer",
        ),
        (
            with(id_jag(), "audience", json!(["a", "b"])),
            "tokenExchange.audience",
            "one audience",
        ),
        (
            with(id_jag(), "subjectTokenType", "jwt".into()),
            "tokenExchange.subjectTokenType",
            "access_token or id_token",
        ),
        (
            with(id_jag(), "requestedTokenType", "access_token".into()),
            "tokenExchange.requestedTokenType",
            "leave requestedTokenType out",
        ),
        (
            grant("clientSecretEnv", Value::Null),
            "tokenExchange.assertionGrant.clientId",
            "resource authorization server",
        ),
        (
            grant("tokenUrl", Value::Null),
            "tokenExchange.assertionGrant.tokenUrl",
            "is required",
        ),
        (
            grant("tokenUrl", "ftp://as".into()),
            "tokenExchange.assertionGrant.tokenUrl",
            "absolute http(s) URL",
        ),
        (
            grant("clientSecretEnv", "NOPE".into()),
            "tokenExchange.assertionGrant.clientSecretEnv",
            "NOPE",
        ),
        (
            grant("scopes", json!(["a\"b"])),
            "tokenExchange.assertionGrant.scopes[0]",
            "not a valid scope",
        ),
        (
            grant("resource", "not a uri".into()),
            "tokenExchange.assertionGrant.resource",
            "absolute URI",
        ),
        (
            grant("audience", "x".into()),
            "tokenExchange.assertionGrant.audience",
            "not used in assertionGrant",
        ),
        (
            grant("timeoutMs", 5.into()),
            "tokenExchange.assertionGrant.timeoutMs",
            "not used in assertionGrant",
        ),
        (
            grant("clientAssertionKid", "k".into()),
            "tokenExchange.assertionGrant.clientAssertionKid",
            "private_key_jwt",
        ),
        (grant("bogus", 1.into()), "tokenExchange.assertionGrant", "bogus"),
        (
            with(rfc8693(), "assertionGrant", json!({"tokenUrl": "https://as/t"})),
            "tokenExchange.assertionGrant",
            "it is for id-jag",
        ),
        (
            with(rfc8693(), "requestedTokenType", "id-jag".into()),
            "tokenExchange.requestedTokenType",
            "use provider id-jag",
        ),
    ] {
        let e = err(te.clone());
        assert!(e.path.starts_with(path), "{te} -> {e}");
        assert!(e.to_string().contains(words), "{te} -> {e}");
    }
}

#[test]
fn id_jag_takes_an_actor_for_its_first_step() {
    let t = parse(with(id_jag(), "actor", json!({"source": "clientCredentials"}))).unwrap();
    assert!(matches!(t.actor, Some(Actor::ClientCredentials { .. })));
}
