//! Route selection: skipped routes, per-route scopes and exchange targets.

use super::*;

/// The exchange filter with `rules`; the default exchange asks for `backend`.
fn rules_filter(rules: serde_json::Value) -> Filter {
    let mut v = config_json();
    v["tokenExchange"] = json!({
        "tokenUrl": "http://127.0.0.1:9002/token", "clientId": "gw", "clientSecretEnv": "TE_SECRET",
        "audience": "backend", "timeoutMs": 1000
    });
    v["rules"] = rules;
    filter_with_env(&v, &[("TE_SECRET", "secret")])
}

#[test]
fn skipped_routes_pass_untouched_and_unchecked() {
    let (mut f, mut m) = (
        rules_filter(json!([{"match": {"pathPrefix": "/healthz"}, "skip": true}])),
        Mock::new(),
    );
    assert_eq!(request_at(&mut f, &mut m, 2, "h", "/healthz", None), Action::Continue);
    assert_eq!(
        request_at(&mut f, &mut m, 3, "h", "/healthz/live", Some("junk")),
        Action::Continue
    );
    assert!(m.stream(3).set_headers.is_empty() && m.sent(3).is_none());
    assert!(m.callouts.is_empty(), "no key fetch for a skipped route");
    // Anything else is checked as before.
    assert_eq!(request_at(&mut f, &mut m, 4, "h", "/mcp", None), Action::Pause);
    assert_eq!(m.sent(4).unwrap().status, 401);
    // A path that servers may read as another route is refused, not matched.
    for (id, path) in [(5, "/healthz/../mcp"), (6, "/HEALTHZ"), (7, "//healthz")] {
        request_at(&mut f, &mut m, id, "h", path, None);
        let s = m.sent(id).unwrap();
        assert_eq!(s.status, 400, "{path}");
        assert!(
            s.header("www-authenticate").unwrap().contains("ambiguous path"),
            "{path}"
        );
        assert!(s.body.contains(r#""error":"invalid_request""#));
    }
    // One every reading of which is skipped is skipped.
    assert_eq!(
        request_at(&mut f, &mut m, 8, "h", "/healthz/./live", None),
        Action::Continue
    );
    assert!(m.sent(8).is_none());
}

#[test]
fn route_scopes_apply_to_remembered_tokens_too() {
    let (mut f, mut m) = (
        rules_filter(json!([{"match": {"pathPrefix": "/admin/"}, "requiredScopes": ["admin"], "tokenExchange": null}])),
        Mock::new(),
    );
    warm(&mut f, &mut m);
    let t = good(); // scope mcp:tools:call only
                    // Verified (and remembered) on the default route first...
    request_at(&mut f, &mut m, 2, "h", "/mcp", Some(&t));
    let checks = f.signature_checks();
    // ...it still lacks the admin route's scope.
    request_at(&mut f, &mut m, 3, "h", "/admin/x", Some(&t));
    let s = m.sent(3).unwrap();
    assert_eq!(s.status, 403);
    assert!(
        s.header("www-authenticate").unwrap().contains(r#"scope="admin""#),
        "the route's scopes"
    );
    assert_eq!(f.signature_checks(), checks, "judged from memory");
    // A token with the scope passes, and the route validates only.
    let admin = token(RSA1, "k1", "admin");
    assert_eq!(
        request_at(&mut f, &mut m, 4, "h", "/admin/x", Some(&admin)),
        Action::Continue
    );
    assert_eq!(authorization(&m, 4), Some(format!("Bearer {admin}")));
    // The route's missing-token challenge names its scopes as well.
    request_at(&mut f, &mut m, 5, "h", "/admin/x", None);
    assert!(m
        .sent(5)
        .unwrap()
        .header("www-authenticate")
        .unwrap()
        .contains(r#"scope="admin""#));
    // And the default route still needs its own scope.
    request_at(&mut f, &mut m, 6, "h", "/mcp", Some(&admin));
    assert_eq!(m.sent(6).unwrap().status, 403);
}

#[test]
fn each_exchange_target_has_its_own_cache_entries() {
    let (mut f, mut m) = (
        rules_filter(
            json!([{"match": {"hosts": ["api.example.com"], "pathPrefix": "/github/"},
            "tokenExchange": {"tokenUrl": "https://gh.example.com/token", "audience": "github", "timeoutMs": 1000}}]),
        ),
        Mock::new(),
    );
    warm(&mut f, &mut m);
    let t = good();
    // The default target.
    request_at(&mut f, &mut m, 2, "api.example.com", "/mcp", Some(&t));
    assert_eq!(m.callouts.last().unwrap().cluster, "outbound|9002||127.0.0.1");
    assert!(sent_form(&m).contains("audience=backend"));
    let c = m.callouts.last().unwrap().clone();
    f.on_callout(&mut m, c.token, &exchanged(300));
    assert_eq!(authorization(&m, 2), Some(format!("Bearer {BACKEND_TOKEN}")));

    // The same user on the rule's route: the default's entry is not served.
    let n = m.callouts.len();
    request_at(&mut f, &mut m, 3, "api.example.com", "/github/repos", Some(&t));
    assert_eq!(m.callouts.len(), n + 1, "a new exchange for the other target");
    let c = m.callouts.last().unwrap().clone();
    assert_eq!(c.cluster, "outbound|443||gh.example.com");
    assert_eq!(c.header(":authority"), Some("gh.example.com"));
    assert!(sent_form(&m).contains("audience=github"));
    f.on_callout(
        &mut m,
        c.token,
        &ok(
            &json!({"access_token": "gh-token", "token_type": "Bearer", "expires_in": 300,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})
            .to_string(),
        ),
    );
    assert_eq!(authorization(&m, 3), Some("Bearer gh-token".into()));

    // Both are cached, each for its own route; another host is the default.
    let n = m.callouts.len();
    request_at(&mut f, &mut m, 4, "api.example.com", "/github/x", Some(&t));
    request_at(&mut f, &mut m, 5, "api.example.com", "/mcp", Some(&t));
    request_at(&mut f, &mut m, 6, "other.example.com", "/github/x", Some(&t));
    assert_eq!(m.callouts.len(), n);
    assert_eq!(authorization(&m, 4), Some("Bearer gh-token".into()));
    assert_eq!(authorization(&m, 5), Some(format!("Bearer {BACKEND_TOKEN}")));
    assert_eq!(authorization(&m, 6), Some(format!("Bearer {BACKEND_TOKEN}")));
    // Another worker finds each in shared data under its own key.
    let (mut f2, mut m2) = (
        rules_filter(
            json!([{"match": {"hosts": ["api.example.com"], "pathPrefix": "/github/"},
            "tokenExchange": {"tokenUrl": "https://gh.example.com/token", "audience": "github", "timeoutMs": 1000}}]),
        ),
        Mock::with_shared(m.shared.clone()),
    );
    request_at(&mut f2, &mut m2, 2, "api.example.com", "/github/x", Some(&t));
    assert_eq!(authorization(&m2, 2), Some("Bearer gh-token".into()));
}

#[test]
fn concurrent_misses_for_two_targets_make_two_flights() {
    let (mut f, mut m) = (
        rules_filter(json!([{"match": {"pathPrefix": "/github/"},
            "tokenExchange": {"tokenUrl": "https://gh.example.com/token", "audience": "github"}}])),
        Mock::new(),
    );
    warm(&mut f, &mut m);
    let t = good();
    let n = m.callouts.len();
    request_at(&mut f, &mut m, 2, "h", "/mcp", Some(&t));
    request_at(&mut f, &mut m, 3, "h", "/github/a", Some(&t));
    request_at(&mut f, &mut m, 4, "h", "/github/b", Some(&t));
    assert_eq!(m.callouts.len(), n + 2, "one per target, shared within a target");
    let gh = m.callouts.last().unwrap().clone();
    f.on_callout(
        &mut m,
        gh.token,
        &ok(&json!({"access_token": "gh-token", "token_type": "Bearer",
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})
        .to_string()),
    );
    assert_eq!(authorization(&m, 3), Some("Bearer gh-token".into()));
    assert_eq!(authorization(&m, 4), Some("Bearer gh-token".into()));
    assert!(!m.stream(2).resumed, "the default target's flight is still out");
}
