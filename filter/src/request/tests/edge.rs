//! The edge: CORS, claim headers, metrics.

use super::*;

#[test]
fn preflights_pass_unauthenticated_and_other_options_do_not() {
    let (mut f, mut m) = (edge_filter(json!({}), false), Mock::new());
    let preflight = [
        (":method", "OPTIONS"),
        (":path", "/mcp"),
        ("origin", "https://app.example"),
        ("access-control-request-method", "POST"),
    ];
    assert_eq!(open_with(&mut f, &mut m, 2, &preflight, false), Action::Continue);
    assert!(m.sent(2).is_none() && m.callouts.is_empty());
    let plain_options = [
        (":method", "OPTIONS"),
        (":path", "/mcp"),
        ("origin", "https://app.example"),
    ];
    open_with(&mut f, &mut m, 3, &plain_options, false);
    assert_eq!(m.sent(3).unwrap().status, 401);
}

/// A tokenless POST to the endpoint from a browser page at `origin`.
fn post_from(f: &mut Filter, m: &mut Mock, id: u32, origin: &str) {
    let headers = [(":method", "POST"), (":path", "/mcp"), ("origin", origin)];
    open_with(f, m, id, &headers, false);
}

#[test]
fn refusals_carry_cors_headers_for_allowed_origins_only() {
    let (mut f, mut m) = (
        edge_filter(json!({"cors": {"allowedOrigins": ["https://app.example"]}}), false),
        Mock::new(),
    );
    post_from(&mut f, &mut m, 2, "https://app.example");
    let s = m.sent(2).unwrap();
    assert_eq!(s.status, 401);
    assert_eq!(s.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(s.header("access-control-expose-headers"), Some("WWW-Authenticate"));
    assert_eq!(s.header("vary"), Some("Origin"));
    post_from(&mut f, &mut m, 3, "https://evil.example");
    assert_eq!(m.sent(3).unwrap().header("access-control-allow-origin"), None);
    // Without cors, nothing is added.
    let (mut f, mut m) = (edge_filter(json!({}), false), Mock::new());
    post_from(&mut f, &mut m, 2, "https://app.example");
    assert_eq!(m.sent(2).unwrap().header("access-control-allow-origin"), None);
}

#[test]
fn claim_headers_are_set_from_the_token_and_never_from_the_client() {
    let config = json!({"claimToHeaders": [{"claim": "sub", "header": "x-user-sub"},
        {"claim": "client_id", "header": "x-client"}],
        "rules": [{"match": {"pathPrefix": "/healthz"}, "skip": true}]});
    let (mut f, mut m) = (edge_filter(config, false), Mock::new());
    warm(&mut f, &mut m);
    let auth = format!("Bearer {}", good());
    let spoofed = [
        (":method", "POST"),
        (":path", "/mcp"),
        ("authorization", auth.as_str()),
        ("x-user-sub", "admin"),
        ("x-client", "spoof"),
    ];
    assert_eq!(open_with(&mut f, &mut m, 2, &spoofed, false), Action::Continue);
    let h = |m: &Mock, id: u32, k: &str| {
        m.stream(id)
            .headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(h(&m, 2, "x-user-sub").as_deref(), Some("alice"), "from the token");
    assert_eq!(
        h(&m, 2, "x-client"),
        None,
        "the token has no client_id: the client's copy is gone"
    );
    // A remembered token sets them the same way.
    open_with(&mut f, &mut m, 3, &spoofed, false);
    assert_eq!(h(&m, 3, "x-user-sub").as_deref(), Some("alice"));
    // Skipped routes still lose the client's copies.
    open_with(
        &mut f,
        &mut m,
        4,
        &[(":path", "/healthz"), ("x-user-sub", "admin")],
        false,
    );
    assert_eq!(h(&m, 4, "x-user-sub"), None);
}

#[test]
fn metrics_count_outcomes_exchanges_and_the_cache() {
    let (mut f, mut m) = (edge_filter(json!({}), true), Mock::new());
    warm(&mut f, &mut m);
    assert_eq!(
        m.metric("token_exchange_filter.jwks.fetch_ok"),
        0,
        "counts reach the proxy on a tick"
    );
    f.on_tick(&mut m);
    assert_eq!(m.metric("token_exchange_filter.jwks.fetch_ok"), 1);
    assert_eq!(m.metric("token_exchange_filter.jwks.keys"), 1);
    request(&mut f, &mut m, 2, None);
    request(&mut f, &mut m, 3, Some("a.b.c"));
    let t = good();
    request(&mut f, &mut m, 4, Some(&t));
    let c = m.callouts.last().unwrap().clone();
    m.now_ms += 40;
    f.on_callout(&mut m, c.token, &exchanged(300));
    request(&mut f, &mut m, 5, Some(&t));
    m.enter(ROOT);
    f.on_tick(&mut m);
    for (name, want) in [
        ("requests.missing_token", 1),
        ("requests.invalid_token", 1),
        ("requests.allowed", 2),
        ("cache.miss", 1),
        ("cache.hit", 1),
        ("exchanges.ok", 1),
        ("exchanges.failed", 0),
        ("exchange.latency_ms", 40),
    ] {
        assert_eq!(m.metric(&format!("token_exchange_filter.{name}")), want, "{name}");
    }
}
