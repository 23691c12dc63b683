use super::*;

fn base() -> serde_json::Value {
    serde_json::json!({
        "oidc": {
            "issuer": "https://idp.example.com/oauth2/mcp",
            "audience": "mcpserver",
            "jwksUrl": "https://idp.example.com/oauth2/mcp/v1/keys",
            "requiredScopes": ["mcp:tools:call"],
            "resourceUrl": "https://mcp.example.com/mcp"
        }
    })
}

fn parse_value(v: &serde_json::Value) -> Result<Config, ConfigError> {
    parse(v.to_string().as_bytes())
}

fn err_with(path: &str, value: serde_json::Value) -> ConfigError {
    let mut v = base();
    let mut cur = &mut v;
    let parts: Vec<&str> = path.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        cur = &mut cur[*p];
    }
    cur[parts[parts.len() - 1]] = value;
    parse_value(&v).unwrap_err()
}

#[test]
fn full_example_parses_with_defaults() {
    let c = parse_value(&base()).unwrap();
    assert_eq!(c.oidc.as_ref().unwrap().audiences, vec!["mcpserver"]);
    assert_eq!(c.oidc.as_ref().unwrap().clock_skew_seconds, 60);
    assert_eq!(c.oidc.as_ref().unwrap().jwks_refresh_seconds, 600);
    match &c.oidc.as_ref().unwrap().keys {
        KeySource::Jwks(e) => assert_eq!(e.cluster, "outbound|443||idp.example.com"),
        other => panic!("{other:?}"),
    }
    let r = c.oidc.unwrap().resource.unwrap();
    assert_eq!(r.metadata_path, "/.well-known/oauth-protected-resource/mcp");
    assert_eq!(
        r.metadata_url,
        "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
    );
    assert_eq!(r.url, "https://mcp.example.com/mcp");
    assert_eq!(r.scopes_supported, vec!["mcp:tools:call"]);
}

#[test]
fn audience_list_accepted() {
    let mut v = base();
    v["oidc"]["audience"] = serde_json::json!(["a", "b"]);
    assert_eq!(
        parse_value(&v).unwrap().oidc.as_ref().unwrap().audiences,
        vec!["a", "b"]
    );
}

#[test]
fn metadata_url_for_bare_origin_and_port() {
    let mut v = base();
    v["oidc"]["resourceUrl"] = "https://mcp.example.com".into();
    let r = parse_value(&v).unwrap().oidc.unwrap().resource.unwrap();
    assert_eq!(r.metadata_path, "/.well-known/oauth-protected-resource");
    assert_eq!(
        r.metadata_url,
        "https://mcp.example.com/.well-known/oauth-protected-resource"
    );
    assert_eq!(r.url, "https://mcp.example.com");
    v["oidc"]["resourceUrl"] = "http://127.0.0.1:8080/a/b/".into();
    let r = parse_value(&v).unwrap().oidc.unwrap().resource.unwrap();
    assert_eq!(
        r.metadata_url,
        "http://127.0.0.1:8080/.well-known/oauth-protected-resource/a/b"
    );
}

#[test]
fn unknown_key_is_named_with_its_path() {
    let mut v = base();
    v["oidc"]["jwksUri"] = "x".into();
    let e = parse_value(&v).unwrap_err();
    assert_eq!(e.path, "oidc.jwksUri");
    assert!(e.message.contains("unknown field `jwksUri`"), "{e}");
    assert!(e.message.contains("remove it or fix its spelling"), "{e}");
    let mut v = base();
    v["cachee"] = serde_json::json!({});
    let e = parse_value(&v).unwrap_err();
    assert_eq!(e.path, "cachee");
    assert!(e.message.contains("unknown field `cachee`"), "{e}");
}

#[test]
fn missing_required_field_named() {
    let mut v = base();
    v["oidc"].as_object_mut().unwrap().remove("issuer");
    let e = parse_value(&v).unwrap_err();
    assert_eq!(e.path, "oidc.issuer");
    assert!(e.message.contains("is required"), "{e}");
    v.as_object_mut().unwrap().remove("oidc");
    let e = parse_value(&v).unwrap_err();
    assert_eq!(e.path, "oidc");
    assert!(
        e.message
            .contains("is required, unless the last rule matches every request"),
        "{e}"
    );
}

#[test]
fn wrong_types_named_with_path() {
    let e = err_with("oidc.clockSkewSeconds", "60".into());
    assert_eq!(e.path, "oidc.clockSkewSeconds");
    let e = err_with("oidc.audience", serde_json::json!(5));
    assert_eq!(e.path, "oidc.audience");
    assert_eq!(e.message, "must be a string or a list of strings");
    let e = err_with("oidc.requiredScopes", serde_json::json!(["a", 1]));
    assert_eq!(e.path, "oidc.requiredScopes[1]");
}

#[test]
fn jwks_url_error_matches_contract() {
    let e = err_with("oidc.jwksUrl", "keys".into());
    assert_eq!(
        e.to_string(),
        r#"oidc.jwksUrl: must be an absolute http(s) URL, got "keys""#
    );
}

#[test]
fn without_jwks_url_keys_are_discovered_from_the_issuer() {
    let mut v = base();
    v["oidc"].as_object_mut().unwrap().remove("jwksUrl");
    let c = parse_value(&v).unwrap();
    let KeySource::Discovery(d) = &c.oidc.as_ref().unwrap().keys else {
        panic!("{:?}", c.oidc.as_ref().unwrap().keys)
    };
    assert_eq!(
        d.openid.url,
        "https://idp.example.com/oauth2/mcp/.well-known/openid-configuration"
    );
    assert_eq!(
        d.oauth.url,
        "https://idp.example.com/.well-known/oauth-authorization-server/oauth2/mcp"
    );
    assert_eq!(d.openid.cluster, "outbound|443||idp.example.com");
    assert_eq!(d.jwks_cluster, None);
    assert!(!d.allow_http);
    // null means the same as left out.
    v["oidc"]["jwksUrl"] = serde_json::Value::Null;
    assert_eq!(
        parse_value(&v).unwrap().oidc.as_ref().unwrap().keys,
        c.oidc.as_ref().unwrap().keys
    );
}

#[test]
fn jwks_cluster_without_jwks_url_serves_discovery_and_keys() {
    let mut v = base();
    v["oidc"].as_object_mut().unwrap().remove("jwksUrl");
    v["oidc"]["jwksCluster"] = "idp".into();
    v["oidc"]["insecureAllowHttp"] = true.into();
    let KeySource::Discovery(d) = parse_value(&v).unwrap().oidc.unwrap().keys else {
        panic!("discovery expected")
    };
    assert_eq!((d.openid.cluster.as_str(), d.oauth.cluster.as_str()), ("idp", "idp"));
    assert_eq!(d.jwks_cluster.as_deref(), Some("idp"));
    assert!(d.allow_http);
    assert_eq!(d.jwks("http://keys.internal/k").unwrap().cluster, "idp");
    // The cluster is still checked when it only serves discovery.
    v["oidc"]["jwksCluster"] = " ".into();
    assert_eq!(parse_value(&v).unwrap_err().path, "oidc.jwksCluster");
}

#[test]
fn discovery_needs_an_issuer_without_query() {
    let mut v = base();
    v["oidc"].as_object_mut().unwrap().remove("jwksUrl");
    v["oidc"]["issuer"] = "https://idp.example.com/?tenant=1".into();
    let e = parse_value(&v).unwrap_err();
    assert_eq!(e.path, "oidc.issuer");
    assert!(e.message.contains("set oidc.jwksUrl"), "{e}");
    // With a jwksUrl, nothing is discovered and the issuer is only compared.
    v["oidc"]["jwksUrl"] = "https://idp.example.com/keys".into();
    assert!(parse_value(&v).is_ok());
    // An http issuer off loopback is refused before anything is discovered.
    v["oidc"].as_object_mut().unwrap().remove("jwksUrl");
    v["oidc"]["issuer"] = "http://idp.example.com".into();
    assert!(parse_value(&v).unwrap_err().message.contains("insecureAllowHttp"));
}

#[test]
fn empty_strings_rejected() {
    assert_eq!(err_with("oidc.issuer", "".into()).path, "oidc.issuer");
    assert_eq!(err_with("oidc.audience", serde_json::json!([])).path, "oidc.audience");
    assert_eq!(
        err_with("oidc.audience", serde_json::json!(["a", " "])).path,
        "oidc.audience[1]"
    );
    assert_eq!(err_with("oidc.jwksCluster", "".into()).path, "oidc.jwksCluster");
    assert_eq!(
        err_with("oidc.requiredScopes", serde_json::json!([""])).path,
        "oidc.requiredScopes[0]"
    );
}

#[test]
fn bad_scopes_rejected() {
    let e = err_with("oidc.requiredScopes", serde_json::json!(["a b"]));
    assert_eq!(e.path, "oidc.requiredScopes[0]");
    let e = err_with("oidc.scopesSupported", serde_json::json!(["x\"y"]));
    assert_eq!(e.path, "oidc.scopesSupported[0]");
}

#[test]
fn skew_bounds() {
    assert!(parse_value(&{
        let mut v = base();
        v["oidc"]["clockSkewSeconds"] = 300.into();
        v
    })
    .is_ok());
    let e = err_with("oidc.clockSkewSeconds", 301.into());
    assert_eq!(
        e.to_string(),
        "oidc.clockSkewSeconds: must be between 0 and 300, got 301"
    );
    assert_eq!(
        err_with("oidc.clockSkewSeconds", (-1).into()).path,
        "oidc.clockSkewSeconds"
    );
}

#[test]
fn refresh_bounds() {
    assert_eq!(
        err_with("oidc.jwksRefreshSeconds", 5.into()).path,
        "oidc.jwksRefreshSeconds"
    );
}

#[test]
fn http_rules() {
    let e = err_with("oidc.jwksUrl", "http://idp.example.com/keys".into());
    assert!(e.message.contains("insecureAllowHttp"), "{e}");
    let mut v = base();
    v["oidc"]["jwksUrl"] = "http://idp.example.com/keys".into();
    v["oidc"]["insecureAllowHttp"] = true.into();
    assert!(parse_value(&v).is_ok());
}

#[test]
fn resource_query_rejected_and_scopes_supported_needs_resource() {
    assert_eq!(
        err_with("oidc.resourceUrl", "https://m/x?y=1".into()).path,
        "oidc.resourceUrl"
    );
    let mut v = base();
    v["oidc"].as_object_mut().unwrap().remove("resourceUrl");
    v["oidc"]["scopesSupported"] = serde_json::json!(["a"]);
    assert_eq!(parse_value(&v).unwrap_err().path, "oidc.scopesSupported");
}

#[test]
fn not_json_or_not_object() {
    assert!(parse(b"{").unwrap_err().message.contains("not valid JSON"));
    assert!(parse(b"[]").unwrap_err().message.contains("JSON object"));
    assert!(parse(b"").is_err());
}

fn with_exchange(te: serde_json::Value) -> serde_json::Value {
    let mut v = base();
    v["tokenExchange"] = te;
    v
}

fn env_has_secret(name: &str) -> Option<String> {
    (name == "TE_SECRET").then(|| "s3cr=t&x".to_string())
}

fn parse_env(v: &serde_json::Value) -> Result<Config, ConfigError> {
    parse_with_env(v.to_string().as_bytes(), &env_has_secret)
}

#[test]
fn token_exchange_full_example() {
    let v = with_exchange(serde_json::json!({
        "tokenUrl": "https://idp.example.com/oauth2/backend/v1/token",
        "tokenCluster": "outbound|443||idp.example.com",
        "clientId": "0oa123",
        "clientSecretEnv": "TE_SECRET",
        "clientAuthMethod": "client_secret_post",
        "audience": "backend",
        "scopes": ["backend-api:read"],
        "subjectTokenType": "access_token",
        "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token",
        "resource": "https://api.example.com/",
        "externalTokenHeaderName": "",
        "timeoutMs": 5000
    }));
    let mut v = v;
    v["cache"] = serde_json::json!({"maxEntries": 10000, "expirySkewSeconds": 30});
    let c = parse_env(&v).unwrap();
    let t = c.token_exchange.unwrap();
    assert_eq!(t.client.secret.as_ref().unwrap().expose(), "s3cr=t&x");
    assert!(!t.client.secret_inline);
    assert_eq!(t.client.method, ClientAuthMethod::ClientSecretPost);
    assert_eq!(t.subject_token_type, "urn:ietf:params:oauth:token-type:access_token");
    assert_eq!(
        t.requested_token_type.as_deref(),
        Some("urn:ietf:params:oauth:token-type:access_token")
    );
    assert_eq!(t.external_token_header, None);
    assert_eq!(t.token.path, "/oauth2/backend/v1/token");
    assert_eq!(
        c.cache,
        Cache {
            max_entries: 10000,
            expiry_skew_seconds: 30
        }
    );
    assert!(!format!("{t:?}").contains("s3cr=t"), "Debug never shows the secret");
}

#[test]
fn token_exchange_minimal_defaults() {
    let c = parse_env(&with_exchange(
        serde_json::json!({"tokenUrl": "https://idp.example.com/token"}),
    ))
    .unwrap();
    let t = c.token_exchange.unwrap();
    assert_eq!(t.client.method, ClientAuthMethod::None);
    assert_eq!(t.timeout_ms, 5000);
    assert_eq!(t.token.cluster, "outbound|443||idp.example.com");
    assert_eq!(c.cache, Cache::default());
    assert!(parse_env(&base()).unwrap().token_exchange.is_none());
}

#[test]
fn secret_defaults_auth_to_basic_and_inline_secret_is_flagged() {
    let c = parse_env(&with_exchange(serde_json::json!({
        "tokenUrl": "https://i/t", "clientId": "c", "clientSecret": "inline"
    })))
    .unwrap();
    let t = c.token_exchange.unwrap();
    assert_eq!(t.client.method, ClientAuthMethod::ClientSecretBasic);
    assert!(t.client.secret_inline);
}

#[test]
fn missing_secret_env_names_the_variable() {
    let e = parse_env(&with_exchange(serde_json::json!({
        "tokenUrl": "https://i/t", "clientId": "c", "clientSecretEnv": "NOPE"
    })))
    .unwrap_err();
    assert_eq!(e.path, "tokenExchange.clientSecretEnv");
    assert!(
        e.message.contains("NOPE") && e.message.contains("vm_config.environment_variables"),
        "{e}"
    );
}

#[test]
fn exchange_field_errors() {
    let cases = [
        (serde_json::json!({"tokenUrl": "token"}), "tokenExchange.tokenUrl"),
        (
            serde_json::json!({"tokenUrl": "http://idp.example.com/t"}),
            "tokenExchange.tokenUrl",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "clientSecret": "a", "clientSecretEnv": "TE_SECRET"}),
            "tokenExchange.clientSecret",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "clientAuthMethod": "private_key_jwt"}),
            "tokenExchange.clientAssertionKeyEnv",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "clientAuthMethod": "client_secret_basic", "clientId": "c"}),
            "tokenExchange.clientSecretEnv",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "clientSecret": "x"}),
            "tokenExchange.clientId",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "clientId": "c", "clientSecret": "x", "clientAuthMethod": "none"}),
            "tokenExchange.clientAuthMethod",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "subjectTokenType": "bogus"}),
            "tokenExchange.subjectTokenType",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "requestedTokenType": "urn:x"}),
            "tokenExchange.requestedTokenType",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "resource": "not a uri"}),
            "tokenExchange.resource",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "externalTokenHeaderName": "x y"}),
            "tokenExchange.externalTokenHeaderName",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "timeoutMs": 0}),
            "tokenExchange.timeoutMs",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "scopes": ["a b"]}),
            "tokenExchange.scopes[0]",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "audience": ""}),
            "tokenExchange.audience",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "clientSecretEnvv": "X"}),
            "tokenExchange.clientSecretEnvv",
        ),
        (serde_json::json!({}), "tokenExchange.tokenUrl"),
    ];
    for (te, path) in cases {
        let e = parse_env(&with_exchange(te.clone())).unwrap_err();
        assert_eq!(e.path, path, "{te} -> {e}");
    }
}

#[test]
fn short_token_types_and_header_names_normalize() {
    let c = parse_env(&with_exchange(serde_json::json!({
        "tokenUrl": "https://i/t", "subjectTokenType": "jwt", "requestedTokenType": "id_token",
        "externalTokenHeaderName": "X-Backend-Token"
    })))
    .unwrap();
    let t = c.token_exchange.unwrap();
    assert_eq!(t.subject_token_type, "urn:ietf:params:oauth:token-type:jwt");
    assert_eq!(
        t.requested_token_type.as_deref(),
        Some("urn:ietf:params:oauth:token-type:id_token")
    );
    assert_eq!(t.external_token_header.as_deref(), Some("x-backend-token"));
    let c = parse_env(&with_exchange(serde_json::json!({
        "tokenUrl": "https://i/t", "externalTokenHeaderName": "Authorization"
    })))
    .unwrap();
    assert_eq!(c.token_exchange.unwrap().external_token_header, None);
}

#[test]
fn cache_bounds() {
    let mut v = base();
    v["cache"] = serde_json::json!({"maxEntries": 0});
    assert_eq!(parse_env(&v).unwrap_err().path, "cache.maxEntries");
    v["cache"] = serde_json::json!({"expirySkewSeconds": 4000});
    assert_eq!(parse_env(&v).unwrap_err().path, "cache.expirySkewSeconds");
    v["cache"] = serde_json::json!({"maxEntrie": 1});
    assert_eq!(parse_env(&v).unwrap_err().path, "cache.maxEntrie");
}

#[test]
fn whole_numbers_written_as_doubles_are_accepted() {
    // Istio's pluginConfig is a protobuf Struct: every number arrives as a
    // double, and Go renders large ones in exponent form.
    let text = r#"{"oidc":{"issuer":"https://i","audience":"a","jwksUrl":"https://i/k",
        "clockSkewSeconds":30.0,"jwksRefreshSeconds":6e2},
        "tokenExchange":{"tokenUrl":"https://i/t","timeoutMs":5000.0},
        "cache":{"maxEntries":1e+06,"expirySkewSeconds":0.0}}"#;
    let c = parse_with_env(text.as_bytes(), &env_has_secret).unwrap();
    assert_eq!(c.oidc.as_ref().unwrap().clock_skew_seconds, 30);
    assert_eq!(c.oidc.as_ref().unwrap().jwks_refresh_seconds, 600);
    assert_eq!(c.token_exchange.unwrap().timeout_ms, 5000);
    assert_eq!(c.cache.max_entries, 1_000_000);
    assert_eq!(c.cache.expiry_skew_seconds, 0);
}

#[test]
fn fractional_negative_or_non_numbers_are_named() {
    for (value, shown) in [
        (serde_json::json!(1.5), "1.5"),
        (serde_json::json!(-1), "-1"),
        (serde_json::json!(-2.0), "-2"),
        (serde_json::json!("60"), "\"60\""),
        (serde_json::json!(true), "true"),
    ] {
        let e = err_with("oidc.clockSkewSeconds", value);
        assert_eq!(e.path, "oidc.clockSkewSeconds");
        assert!(e.message.contains("expected a whole number"), "{e}");
        assert!(e.message.contains(shown), "{e}");
    }
    // Still range-checked after conversion.
    assert!(err_with("oidc.clockSkewSeconds", serde_json::json!(301.0))
        .message
        .contains("between 0 and 300"));
}

fn with_rules(rules: serde_json::Value) -> serde_json::Value {
    let mut v = with_exchange(serde_json::json!({"tokenUrl": "https://idp.example.com/token", "audience": "a"}));
    v["rules"] = rules;
    v
}

#[test]
fn rules_parse_in_order_with_their_actions() {
    let c = parse_env(&with_rules(serde_json::json!([
        {"match": {"hosts": ["API.example.com", "*.example.org:8443"], "pathPrefix": "/github/"},
         "tokenExchange": {"tokenUrl": "https://gh.example.com/token", "audience": "github"}},
        {"match": {"pathPrefix": "/healthz"}, "skip": true},
        {"match": {"pathPrefix": "/admin/"}, "requiredScopes": ["admin"]},
        {"match": {"pathPrefix": "/plain/"}, "tokenExchange": null},
    ])))
    .unwrap();
    assert_eq!(c.rules.len(), 4);
    assert_eq!(c.rules[0].matcher.hosts, vec!["api.example.com", "*.example.org:8443"]);
    assert_eq!(c.rules[0].matcher.path_prefix.as_deref(), Some("/github/"));
    match &c.rules[0].action {
        RuleAction::Apply {
            oidc,
            exchange: RuleExchange::Replace(t),
        } => {
            assert_eq!(
                oidc.required_scopes,
                c.oidc.as_ref().unwrap().required_scopes,
                "inherited"
            );
            assert_eq!(t.audiences, vec!["github"]);
            assert_eq!(t.token.cluster, "outbound|443||gh.example.com");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(c.rules[1].action, RuleAction::Skip));
    assert!(c.rules[1].matcher.hosts.is_empty());
    match &c.rules[2].action {
        RuleAction::Apply {
            oidc,
            exchange: RuleExchange::Default,
        } => assert_eq!(oidc.required_scopes, vec!["admin".to_string()]),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.rules[3].action,
        RuleAction::Apply {
            exchange: RuleExchange::None,
            ..
        }
    ));
}

#[test]
fn rule_errors_name_their_path() {
    let cases = [
        (
            serde_json::json!([{"match": {"hosts": []}, "skip": true}]),
            "rules[0].match.hosts",
            "matches nothing",
        ),
        (
            serde_json::json!([{"match": {"hosts": ["a b"]}, "skip": true}]),
            "rules[0].match.hosts[0]",
            "host pattern",
        ),
        (
            serde_json::json!([{"match": {"hosts": ["a.*"]}, "skip": true}]),
            "rules[0].match.hosts[0]",
            "host pattern",
        ),
        (
            serde_json::json!([{"match": {"pathPrefix": "healthz"}, "skip": true}]),
            "rules[0].match.pathPrefix",
            "starting with '/'",
        ),
        (
            serde_json::json!([{"match": {}, "skip": true, "requiredScopes": ["x"]}]),
            "rules[0].skip",
            "remove requiredScopes",
        ),
        (
            serde_json::json!([{"match": {}, "skip": true}, {"match": {}}]),
            "rules[1]",
            "changes nothing",
        ),
        (
            serde_json::json!([{"match": {}, "requiredScopes": ["a b"]}]),
            "rules[0].requiredScopes[0]",
            "not a valid scope",
        ),
        (
            serde_json::json!([{"match": {}, "tokenExchange": {"tokenUrl": "nope"}}]),
            "rules[0].tokenExchange.tokenUrl",
            "absolute",
        ),
        (
            serde_json::json!([{"match": {}, "tokenExchange": {"tokenUrl": "https://i/t", "clientId": "c", "clientSecretEnv": "NOPE"}}]),
            "rules[0].tokenExchange.clientSecretEnv",
            "NOPE",
        ),
        (
            serde_json::json!([{"match": {"path": "/x"}, "skip": true}]),
            "rules[0].match.path",
            "unknown field",
        ),
        (serde_json::json!([{"skip": true}]), "rules[0]", "missing field `match`"),
    ];
    for (rules, path, words) in cases {
        let e = parse_env(&with_rules(rules)).unwrap_err();
        assert_eq!(e.path, path, "{e}");
        assert!(e.message.contains(words), "{e}");
    }
}

// ---------------------------------------------------------------------------
// Providers and client authentication (issue 9).

const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
/// A self-signed certificate's PEM (the bytes need only be DER-shaped here).
const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";
const WIP: &str = "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/pool/providers/okta";

fn provider_env(name: &str) -> Option<String> {
    match name {
        "TE_SECRET" => Some("s3cr=t&x".into()),
        "TE_KEY" => Some(KEY_PEM.into()),
        "TE_CERT" => Some(CERT_PEM.into()),
        "NOT_PEM" => Some("hello".into()),
        _ => None,
    }
}

fn exchange(te: serde_json::Value) -> Result<TokenExchange, ConfigError> {
    let v = with_exchange(te);
    parse_with_env(v.to_string().as_bytes(), &provider_env).map(|c| c.token_exchange.unwrap())
}

fn exchange_err(te: serde_json::Value) -> ConfigError {
    exchange(te).unwrap_err()
}

#[test]
fn requested_token_type_defaults_to_access_token_and_lists_are_accepted() {
    let t = exchange(serde_json::json!({"tokenUrl": "https://i/t",
        "audience": ["a", "b"], "resource": ["https://r1/", "https://r2/"]}))
    .unwrap();
    assert_eq!(t.provider, Provider::Rfc8693);
    assert_eq!(
        t.requested_token_type.as_deref(),
        Some("urn:ietf:params:oauth:token-type:access_token")
    );
    assert_eq!(t.audiences, vec!["a", "b"]);
    assert_eq!(t.resources, vec!["https://r1/", "https://r2/"]);
    let e = exchange_err(serde_json::json!({"tokenUrl": "https://i/t", "audience": ["a", ""]}));
    assert_eq!(e.path, "tokenExchange.audience[1]");
    let e = exchange_err(serde_json::json!({"tokenUrl": "https://i/t", "resource": ["https://r/", "nope"]}));
    assert_eq!(e.path, "tokenExchange.resource[1]");
}

#[test]
fn private_key_jwt_reads_the_key_and_certificate_from_the_environment() {
    let t = exchange(serde_json::json!({"tokenUrl": "https://idp/t", "clientId": "gw",
        "clientAssertionKeyEnv": "TE_KEY", "clientAssertionKid": "k1", "clientAssertionAlg": "ES256",
        "clientAssertionCertEnv": "TE_CERT"}))
    .unwrap();
    assert_eq!(t.client.method, ClientAuthMethod::PrivateKeyJwt, "implied by the key");
    let a = t.client.assertion.as_ref().unwrap();
    assert_eq!(
        (a.alg, a.kid.as_deref(), a.audience.as_str()),
        (AssertionAlg::ES256, Some("k1"), "https://idp/t")
    );
    // base64url(SHA-1(30 03 02 01 00)).
    assert_eq!(a.x5t.as_deref(), Some("jEEBpEwaL5kOHqKf7OPF-Gb-Vhs"));
    assert!(!format!("{t:?}").contains("MC4CAQAw"), "Debug never shows the key");

    for (te, path, words) in [
        (
            serde_json::json!({"tokenUrl": "https://i/t", "clientId": "c", "clientAssertionKeyEnv": "NOPE"}),
            "tokenExchange.clientAssertionKeyEnv",
            "NOPE is not set",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "clientId": "c", "clientAssertionKeyEnv": "NOT_PEM"}),
            "tokenExchange.clientAssertionKeyEnv",
            "PEM private key",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "clientId": "c", "clientAssertionKeyEnv": "TE_KEY",
          "clientAssertionAlg": "HS256"}),
            "tokenExchange.clientAssertionAlg",
            "RS256, PS256 or ES256",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "clientId": "c", "clientAssertionKeyEnv": "TE_KEY",
          "clientAssertionCertEnv": "NOT_PEM"}),
            "tokenExchange.clientAssertionCertEnv",
            "PEM certificate",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "clientAssertionKeyEnv": "TE_KEY"}),
            "tokenExchange.clientId",
            "required",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "clientId": "c", "clientSecretEnv": "TE_SECRET",
          "clientAssertionKid": "k"}),
            "tokenExchange.clientAssertionKid",
            "only used with clientAuthMethod private_key_jwt",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "clientId": "c", "clientSecretEnv": "TE_SECRET",
          "clientAuthMethod": "private_key_jwt", "clientAssertionKeyEnv": "TE_KEY"}),
            "tokenExchange.clientAuthMethod",
            "remove clientSecretEnv",
        ),
    ] {
        let e = exchange_err(te.clone());
        assert_eq!(e.path, path, "{te} -> {e}");
        assert!(e.message.contains(words), "{e}");
    }
}

#[test]
fn okta_requires_client_auth_audience_and_scopes() {
    let ok = serde_json::json!({"provider": "okta", "tokenUrl": "https://o/oauth2/aus1/v1/token", "clientId": "c",
        "clientSecretEnv": "TE_SECRET", "audience": "api://backend", "scopes": ["api:read"]});
    let t = exchange(ok.clone()).unwrap();
    assert_eq!(
        (t.provider, t.client.method),
        (Provider::Okta, ClientAuthMethod::ClientSecretBasic)
    );
    let without = |k: &str| {
        let mut v = ok.clone();
        v.as_object_mut().unwrap().remove(k);
        if k == "clientSecretEnv" {
            v.as_object_mut().unwrap().remove("clientId");
        }
        exchange_err(v)
    };
    let e = without("clientSecretEnv");
    assert_eq!(
        e.to_string(),
        "tokenExchange.clientId: okta requires client authentication: set clientId and \
        clientSecretEnv (client_secret_basic), or private_key_jwt"
    );
    assert_eq!(without("audience").path, "tokenExchange.audience");
    assert!(without("audience").message.starts_with("okta requires"));
    assert_eq!(without("scopes").path, "tokenExchange.scopes");
    let mut v = ok.clone();
    v["subjectTokenType"] = "id_token".into();
    assert_eq!(exchange_err(v).path, "tokenExchange.subjectTokenType");
}

#[test]
fn google_sts_fills_its_defaults_and_checks_the_provider_audience() {
    let t = exchange(serde_json::json!({"provider": "google-sts", "audience": WIP,
        "subjectTokenType": "id_token", "options": "{\"userProject\": \"p1\"}"}))
    .unwrap();
    assert_eq!(t.token.url, "https://sts.googleapis.com/v1/token");
    assert_eq!(t.token.cluster, "outbound|443||sts.googleapis.com");
    assert_eq!(t.client.method, ClientAuthMethod::None);
    assert_eq!(t.scopes, vec!["https://www.googleapis.com/auth/cloud-platform"]);
    assert_eq!(t.subject_token_type, "urn:ietf:params:oauth:token-type:id_token");
    assert_eq!(t.options.as_deref(), Some(r#"{"userProject":"p1"}"#));
    let t = exchange(serde_json::json!({"provider": "google-sts",
        "audience": "//iam.googleapis.com/locations/global/workforcePools/wf/providers/okta",
        "options": {"userProject": "p2"},
        "serviceAccountImpersonation": {"url":
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/bq@p.iam.gserviceaccount.com:generateAccessToken",
            "scopes": ["https://www.googleapis.com/auth/bigquery"], "lifetimeSeconds": 1800.0}}))
    .unwrap();
    assert_eq!(
        t.subject_token_type, "urn:ietf:params:oauth:token-type:jwt",
        "the default"
    );
    let i = t.impersonation.unwrap();
    assert_eq!(
        (i.endpoint.cluster.as_str(), i.lifetime_seconds),
        ("outbound|443||iamcredentials.googleapis.com", 1800)
    );
    assert_eq!(
        i.endpoint.path,
        "/v1/projects/-/serviceAccounts/bq@p.iam.gserviceaccount.com:generateAccessToken"
    );

    let e = exchange_err(serde_json::json!({"provider": "google-sts", "audience": "bigquery"}));
    assert_eq!(
        e.to_string(),
        "tokenExchange.audience: google-sts requires the workload identity provider, \
        //iam.googleapis.com/projects/<number>/locations/global/workloadIdentityPools/<pool>/providers/<provider>"
    );
    for (te, path) in [
        (
            serde_json::json!({"provider": "google-sts", "audience": WIP, "clientId": "c", "clientSecretEnv": "TE_SECRET"}),
            "tokenExchange.clientId",
        ),
        (
            serde_json::json!({"provider": "google-sts", "audience": WIP, "subjectTokenType": "access_token"}),
            "tokenExchange.subjectTokenType",
        ),
        (
            serde_json::json!({"provider": "google-sts", "audience": WIP, "requestedTokenType": "id_token"}),
            "tokenExchange.requestedTokenType",
        ),
        (
            serde_json::json!({"provider": "google-sts", "audience": [WIP, WIP]}),
            "tokenExchange.audience",
        ),
        (
            serde_json::json!({"provider": "google-sts", "audience": WIP, "options": "[1]"}),
            "tokenExchange.options",
        ),
        (
            serde_json::json!({"provider": "google-sts", "audience": WIP, "resource": "https://r/"}),
            "tokenExchange.resource",
        ),
        (
            serde_json::json!({"provider": "google-sts", "audience": WIP, "serviceAccountImpersonation": {
            "url": "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/x"}}),
            "tokenExchange.serviceAccountImpersonation.url",
        ),
        (
            serde_json::json!({"provider": "google-sts", "audience": WIP, "serviceAccountImpersonation": {
            "url": "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/x:generateAccessToken",
            "lifetimeSeconds": 0}}),
            "tokenExchange.serviceAccountImpersonation.lifetimeSeconds",
        ),
        (
            serde_json::json!({"tokenUrl": "https://i/t", "options": {"a": 1}}),
            "tokenExchange.options",
        ),
    ] {
        let e = exchange_err(te.clone());
        assert_eq!(e.path, path, "{te} -> {e}");
    }
}

#[test]
fn entra_obo_builds_its_url_and_refuses_rfc8693_parameters() {
    let t = exchange(
        serde_json::json!({"provider": "entra-obo", "tenantId": "contoso.onmicrosoft.com",
        "clientId": "c", "clientSecretEnv": "TE_SECRET", "scopes": ["api://backend/.default"]}),
    )
    .unwrap();
    assert_eq!(
        t.token.url,
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(
        t.client.method,
        ClientAuthMethod::ClientSecretPost,
        "Entra takes the secret in the body"
    );
    assert_eq!(t.requested_token_type, None);
    let base = serde_json::json!({"provider": "entra-obo", "tenantId": "t1", "clientId": "c",
        "clientSecretEnv": "TE_SECRET", "scopes": ["api://backend/.default"]});
    for (k, v, path, words) in [
        (
            "audience",
            serde_json::json!("x"),
            "tokenExchange.audience",
            "entra-obo does not take audience",
        ),
        (
            "resource",
            serde_json::json!("https://r/"),
            "tokenExchange.resource",
            "does not take resource",
        ),
        (
            "subjectTokenType",
            serde_json::json!("jwt"),
            "tokenExchange.subjectTokenType",
            "does not take",
        ),
        (
            "requestedTokenType",
            serde_json::json!("access_token"),
            "tokenExchange.requestedTokenType",
            "does not take",
        ),
        (
            "tokenUrl",
            serde_json::json!("https://login.microsoftonline.com/t/oauth2/v2.0/token"),
            "tokenExchange.tenantId",
            "not both",
        ),
        (
            "tenantId",
            serde_json::json!("a/b"),
            "tokenExchange.tenantId",
            "tenant id",
        ),
        (
            "clientAuthMethod",
            serde_json::json!("client_secret_basic"),
            "tokenExchange.clientAuthMethod",
            "client_secret_post",
        ),
        (
            "scopes",
            serde_json::json!([]),
            "tokenExchange.scopes",
            "api://backend/.default",
        ),
    ] {
        let mut te = base.clone();
        te[k] = v;
        let e = exchange_err(te.clone());
        assert_eq!(e.path, path, "{te} -> {e}");
        assert!(e.message.contains(words), "{e}");
    }
    let mut te = base.clone();
    te.as_object_mut().unwrap().remove("tenantId");
    assert!(exchange_err(te).message.contains("requires tenantId"));
    // A certificate credential needs its x5t.
    let cert = |with_cert: bool| {
        let mut te = serde_json::json!({"provider": "entra-obo", "tenantId": "t1", "clientId": "c",
            "clientAssertionKeyEnv": "TE_KEY", "scopes": ["api://backend/.default"]});
        if with_cert {
            te["clientAssertionCertEnv"] = "TE_CERT".into();
        }
        exchange(te)
    };
    assert_eq!(cert(false).unwrap_err().path, "tokenExchange.clientAssertionCertEnv");
    assert!(cert(true).unwrap().client.assertion.unwrap().x5t.is_some());
}

#[test]
fn keycloak_requires_a_confidential_client_and_no_resource() {
    let ok = serde_json::json!({"provider": "keycloak", "tokenUrl": "https://kc/realms/r/protocol/openid-connect/token",
        "clientId": "gw", "clientSecretEnv": "TE_SECRET", "audience": ["backend", "reports"]});
    let t = exchange(ok.clone()).unwrap();
    assert_eq!(t.audiences, vec!["backend", "reports"]);
    for (k, v, path) in [
        ("clientSecretEnv", serde_json::Value::Null, "tokenExchange.clientId"),
        ("resource", serde_json::json!("https://r/"), "tokenExchange.resource"),
        (
            "subjectTokenType",
            serde_json::json!("id_token"),
            "tokenExchange.subjectTokenType",
        ),
        (
            "requestedTokenType",
            serde_json::json!("jwt"),
            "tokenExchange.requestedTokenType",
        ),
    ] {
        let mut te = ok.clone();
        if v.is_null() {
            te.as_object_mut().unwrap().remove(k);
            te.as_object_mut().unwrap().remove("clientId");
        } else {
            te[k] = v;
        }
        let e = exchange_err(te.clone());
        assert_eq!(e.path, path, "{te} -> {e}");
        assert!(e.message.starts_with("keycloak "), "{e}");
    }
    let mut te = ok;
    te["requestedTokenType"] = "refresh_token".into();
    assert!(exchange(te).is_ok());
}

#[test]
fn provider_names_and_provider_only_keys() {
    let e = exchange_err(serde_json::json!({"provider": "auth0", "tokenUrl": "https://i/t"}));
    assert_eq!(e.path, "tokenExchange.provider");
    assert!(e
        .message
        .contains("rfc8693, okta, google-sts, entra-obo, keycloak or id-jag"));
    assert_eq!(
        exchange_err(serde_json::json!({"tokenUrl": "https://i/t", "tenantId": "t"})).path,
        "tokenExchange.tenantId"
    );
    assert_eq!(
        exchange_err(serde_json::json!({"provider": "okta"})).path,
        "tokenExchange.tokenUrl"
    );
}

// ---------------------------------------------------------------------------
// Edge features (issue 10): cors, audit, claimToHeaders, mcp.

#[test]
fn edge_sections_parse_with_defaults() {
    let c = parse_value(&base()).unwrap();
    assert!(c.cors.is_none() && c.mcp.is_none() && c.claim_to_headers.is_empty());
    assert!(c.audit, "audit is on unless turned off");
    let mut v = base();
    v["cors"] = serde_json::json!({"allowedOrigins": ["https://app.example", "http://localhost:6274"]});
    v["audit"] = false.into();
    v["claimToHeaders"] = serde_json::json!([{"claim": "sub", "header": "X-User-Sub"},
        {"claim": "realm_access.roles", "header": "x-user-roles"}]);
    v["mcp"] = serde_json::json!({"toolScopes": {"delete_repo": ["repo:admin"]}});
    let c = parse_value(&v).unwrap();
    let cors = c.cors.unwrap();
    assert!(cors.allows("https://app.example") && !cors.allows("https://evil.example"));
    assert!(!c.audit);
    assert_eq!(c.claim_to_headers[0].header, "x-user-sub");
    assert_eq!(c.claim_to_headers[1].claim, vec!["realm_access", "roles"]);
    let mcp = c.mcp.unwrap();
    assert_eq!(mcp.path, "/mcp", "the resource's path");
    assert_eq!(
        mcp.tool_scopes,
        vec![("delete_repo".to_string(), vec!["repo:admin".to_string()])]
    );
    assert_eq!(mcp.max_body_bytes, 1 << 20);
}

#[test]
fn edge_errors_name_their_path() {
    for (key, value, path) in [
        ("cors", serde_json::json!({"allowedOrigins": []}), "cors.allowedOrigins"),
        (
            "cors",
            serde_json::json!({"allowedOrigins": ["https://a.example/"]}),
            "cors.allowedOrigins[0]",
        ),
        (
            "cors",
            serde_json::json!({"allowedOrigins": ["app.example"]}),
            "cors.allowedOrigins[0]",
        ),
        (
            "claimToHeaders",
            serde_json::json!([{"claim": "", "header": "x"}]),
            "claimToHeaders[0].claim",
        ),
        (
            "claimToHeaders",
            serde_json::json!([{"claim": "a..b", "header": "x"}]),
            "claimToHeaders[0].claim",
        ),
        (
            "claimToHeaders",
            serde_json::json!([{"claim": "sub", "header": "x y"}]),
            "claimToHeaders[0].header",
        ),
        (
            "claimToHeaders",
            serde_json::json!([{"claim": "sub", "header": "Authorization"}]),
            "claimToHeaders[0].header",
        ),
        (
            "claimToHeaders",
            serde_json::json!([{"claim": "sub", "header": "x"}, {"claim": "email", "header": "X"}]),
            "claimToHeaders[1].header",
        ),
        ("mcp", serde_json::json!({"toolScopes": {"t": []}}), "mcp.toolScopes.t"),
        (
            "mcp",
            serde_json::json!({"toolScopes": {"t": ["a b"]}}),
            "mcp.toolScopes.t[0]",
        ),
        ("mcp", serde_json::json!({"path": "mcp"}), "mcp.path"),
        ("mcp", serde_json::json!({"maxBodyBytes": 0}), "mcp.maxBodyBytes"),
        ("audit", serde_json::json!("no"), "audit"),
    ] {
        let mut v = base();
        v[key] = value.clone();
        let e = parse_value(&v).unwrap_err();
        assert_eq!(e.path, path, "{key}: {value} -> {e}");
    }
    let mut v = base();
    v["oidc"].as_object_mut().unwrap().remove("resourceUrl");
    v["mcp"] = serde_json::json!({"toolScopes": {"t": ["a"]}});
    assert_eq!(parse_value(&v).unwrap_err().path, "mcp.path");
}

#[test]
fn matched_paths_must_be_plain() {
    for bad in [
        "/admin/../x",
        "/a//b",
        "/%61dmin/",
        "/admin;x/",
        "/a\\b",
        "/admin/.",
        "/a?b",
        "admin",
    ] {
        let mut v = base();
        v["rules"] = serde_json::json!([{"match": {"pathPrefix": bad}, "skip": true}]);
        let e = parse_value(&v).unwrap_err();
        assert_eq!(e.path, "rules[0].match.pathPrefix", "{bad}");
        assert!(e.to_string().contains("plain path"), "{e}");
        let mut v = base();
        v["mcp"] = serde_json::json!({"path": bad, "toolScopes": {"t": ["a"]}});
        assert_eq!(parse_value(&v).unwrap_err().path, "mcp.path", "{bad}");
    }
}

// ---------------------------------------------------------------------------
// Many protected resources on one filter (issue 16).

/// Two MCP servers on one host, each with its own authorization server,
/// and a catch-all that leaves every other request alone.
fn two_servers() -> serde_json::Value {
    serde_json::json!({
        "oidc": {"requiredScopes": ["mcp:tools:call"], "insecureAllowHttp": true},
        "rules": [
            {"match": {"hosts": ["mcp.example.com"], "pathPrefix": "/github/"},
             "oidc": {"issuer": "https://gh-as.example.com", "audience": "https://mcp.example.com/github/mcp",
                      "resourceUrl": "https://mcp.example.com/github/mcp", "requiredScopes": ["repo:read"]}},
            {"match": {"hosts": ["mcp.example.com"], "pathPrefix": "/jira/"},
             "oidc": {"issuer": "https://login.example.org/tenant/v2.0", "audience": "api://jira-mcp",
                      "resourceUrl": "https://mcp.example.com/jira/mcp"}},
            {"match": {}, "skip": true}
        ]
    })
}

fn rule_oidc(c: &Config, i: usize) -> &Oidc {
    match &c.rules[i].action {
        RuleAction::Apply { oidc, .. } => oidc,
        RuleAction::Skip => panic!("rule {i} is a skip"),
    }
}

#[test]
fn rules_merge_their_oidc_over_the_top_level_key_by_key() {
    let c = parse_value(&two_servers()).unwrap();
    assert!(c.oidc.is_none(), "partial, and never reached behind the catch-all");
    let (gh, jira) = (rule_oidc(&c, 0), rule_oidc(&c, 1));
    assert_eq!(gh.issuer, "https://gh-as.example.com");
    assert_eq!(gh.required_scopes, vec!["repo:read"]);
    assert_eq!(jira.required_scopes, vec!["mcp:tools:call"], "inherited");
    assert!(jira.allow_http, "inherited");
    assert_eq!(jira.audiences, vec!["api://jira-mcp"]);
    let docs: Vec<(&str, &str, &str)> = c
        .metadata
        .iter()
        .map(|m| (m.host.as_str(), m.path.as_str(), m.issuer.as_str()))
        .collect();
    assert_eq!(
        docs,
        vec![
            (
                "mcp.example.com",
                "/.well-known/oauth-protected-resource/github/mcp",
                "https://gh-as.example.com"
            ),
            (
                "mcp.example.com",
                "/.well-known/oauth-protected-resource/jira/mcp",
                "https://login.example.org/tenant/v2.0"
            ),
        ]
    );
}

#[test]
fn the_top_level_oidc_is_required_unless_a_catch_all_ends_the_rules() {
    let mut v = two_servers();
    v["rules"].as_array_mut().unwrap().pop();
    let e = parse_value(&v).unwrap_err();
    assert_eq!(
        e.path, "oidc.issuer",
        "requests no rule matches would get the top-level policy"
    );
    // A catch-all that is not skipped must be complete itself.
    let mut v = two_servers();
    v["rules"][2] = serde_json::json!({"match": {}, "requiredScopes": ["x"]});
    let e = parse_value(&v).unwrap_err();
    assert_eq!(e.path, "rules[2].oidc.issuer");
    // Every rule that is not skipped needs a complete merged oidc.
    let mut v = two_servers();
    v["rules"][1]["oidc"].as_object_mut().unwrap().remove("audience");
    let e = parse_value(&v).unwrap_err();
    assert_eq!(e.path, "rules[1].oidc.audience");
    assert!(e.message.contains("at least one audience"), "{e}");
}

#[test]
fn rule_oidc_errors_name_the_rule() {
    for (key, value, path) in [
        ("audience", serde_json::json!([]), "rules[1].oidc.audience"),
        ("jwksUrl", serde_json::json!("keys"), "rules[1].oidc.jwksUrl"),
        (
            "clockSkewSeconds",
            serde_json::json!(9000),
            "rules[1].oidc.clockSkewSeconds",
        ),
        (
            "resourceUrl",
            serde_json::json!("https://h/mcp?x=1"),
            "rules[1].oidc.resourceUrl",
        ),
        ("issuerr", serde_json::json!("x"), "rules[1].oidc.issuerr"),
    ] {
        let mut v = two_servers();
        v["rules"][1]["oidc"][key] = value;
        assert_eq!(parse_value(&v).unwrap_err().path, path, "{key}");
    }
    let mut v = two_servers();
    v["rules"][0]["requiredScopes"] = serde_json::json!(["a"]);
    let e = parse_value(&v).unwrap_err();
    assert_eq!(e.path, "rules[0].requiredScopes");
    assert!(e.message.contains("alias of oidc.requiredScopes"), "{e}");
    let mut v = two_servers();
    v["rules"][2]["oidc"] = serde_json::json!({"audience": "x"});
    assert_eq!(parse_value(&v).unwrap_err().path, "rules[2].skip");
}

#[test]
fn one_resource_one_issuer_and_one_place_per_document() {
    let mut v = two_servers();
    v["rules"][1]["oidc"]["resourceUrl"] = "https://mcp.example.com/github/mcp".into();
    let e = parse_value(&v).unwrap_err();
    assert_eq!(e.path, "rules[1].oidc.resourceUrl");
    assert!(e.message.contains("is also the resource of rules[0].oidc"), "{e}");
    // Two spellings of one place.
    let mut v = two_servers();
    v["rules"][1]["oidc"]["resourceUrl"] = "https://MCP.example.com/github/mcp/".into();
    let e = parse_value(&v).unwrap_err();
    assert_eq!(e.path, "rules[1].oidc.resourceUrl");
    assert!(e.message.contains("would be described at"), "{e}");
    // Two hosts that each serve /mcp are two places.
    let mut v = two_servers();
    v["rules"][0]["oidc"]["resourceUrl"] = "https://a.example.com/mcp".into();
    v["rules"][1]["oidc"]["resourceUrl"] = "https://b.example.com/mcp".into();
    assert_eq!(parse_value(&v).unwrap().metadata.len(), 2);
    // Routes of one resource share its document, with all their scopes.
    let mut v = two_servers();
    v["rules"][1]["oidc"] = serde_json::json!({"issuer": "https://gh-as.example.com",
        "audience": "x", "resourceUrl": "https://mcp.example.com/github/mcp", "requiredScopes": ["repo:write"]});
    let c = parse_value(&v).unwrap();
    assert_eq!(c.metadata.len(), 1);
    assert_eq!(c.metadata[0].scopes_supported, vec!["repo:read", "repo:write"]);
}
