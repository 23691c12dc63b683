//! Forwarding: the exchange, its flight, the cache and its lifetimes.

use super::*;

fn exchange_filter(extra: serde_json::Value) -> Filter {
    let mut v = config_json();
    let mut te = json!({
        "tokenUrl": "http://127.0.0.1:9002/token", "clientId": "gw", "clientSecretEnv": "TE_SECRET",
        "audience": "backend", "scopes": ["backend:read"], "requestedTokenType": "access_token",
        "timeoutMs": 1000
    });
    for (k, val) in extra.as_object().unwrap() {
        te[k] = val.clone();
    }
    v["tokenExchange"] = te;
    v["cache"] = json!({"maxEntries": 100, "expirySkewSeconds": 30});
    filter_with_env(&v, &[("TE_SECRET", "secret")])
}

#[test]
fn exchange_pauses_rewrites_authorization_and_caches() {
    let (mut f, mut m) = (exchange_filter(json!({})), Mock::new());
    warm(&mut f, &mut m);
    let t = good();
    assert_eq!(request(&mut f, &mut m, 2, Some(&t)), Action::Pause);
    let c = m.callouts.last().unwrap().clone();
    assert_eq!(c.cluster, "outbound|9002||127.0.0.1");
    assert_eq!(c.owner, 2);
    assert_eq!(c.header(":method"), Some("POST"));
    assert_eq!(c.header(":path"), Some("/token"));
    assert_eq!(c.timeout_ms, 1000);
    let body = String::from_utf8(c.body.clone()).unwrap();
    assert!(body.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"));
    assert!(body.contains(&format!("subject_token={t}")));
    assert!(!m.stream(2).resumed);

    f.on_callout(&mut m, c.token, &exchanged(300));
    assert!(m.stream(2).resumed);
    assert_eq!(authorization(&m, 2), Some(format!("Bearer {BACKEND_TOKEN}")));
    assert_eq!(m.stream(2).set_headers.len(), 1);

    // The next request is served from shared data: no callout.
    let before = m.callouts.len();
    assert_eq!(request(&mut f, &mut m, 3, Some(&t)), Action::Continue);
    assert_eq!(m.callouts.len(), before);
    assert_eq!(authorization(&m, 3), Some(format!("Bearer {BACKEND_TOKEN}")));
    // Another worker (same shared data) hits it too.
    let (mut f2, mut m2) = (exchange_filter(json!({})), Mock::with_shared(m.shared.clone()));
    assert_eq!(request(&mut f2, &mut m2, 2, Some(&t)), Action::Continue);
    assert_eq!(authorization(&m2, 2), Some(format!("Bearer {BACKEND_TOKEN}")));
    assert!(m2.callouts.is_empty());
}

#[test]
fn concurrent_misses_share_one_exchange() {
    let (mut f, mut m) = (exchange_filter(json!({})), Mock::new());
    warm(&mut f, &mut m);
    let t = good();
    for id in 2..7 {
        assert_eq!(request(&mut f, &mut m, id, Some(&t)), Action::Pause);
    }
    assert_eq!(m.callouts.len(), 2, "one JWKS fetch, one exchange");
    let c = m.callouts[1].clone();
    m.enter(2);
    f.on_callout(&mut m, c.token, &exchanged(300));
    for id in 2..7 {
        assert!(m.stream(id).resumed, "{id}");
        assert_eq!(authorization(&m, id), Some(format!("Bearer {BACKEND_TOKEN}")));
    }
}

#[test]
fn exchange_failures_map_to_statuses_and_never_reach_upstream() {
    let err = |status: u16, body: serde_json::Value| CalloutResponse {
        headers: vec![(":status".into(), status.to_string())],
        body: body.to_string().into_bytes(),
        truncated: false,
    };
    let cases: Vec<(CalloutResponse, u64, u32)> = vec![
        (err(400, json!({"error": "invalid_grant"})), 0, 401),
        (err(400, json!({"error": "invalid_scope"})), 0, 403),
        (err(400, json!({"error": "invalid_target"})), 0, 403),
        (err(401, json!({"error": "invalid_client"})), 0, 502),
        (err(400, json!({"error": "unauthorized_client"})), 0, 502),
        (err(400, json!({"error": "unsupported_grant_type"})), 0, 502),
        (err(400, json!({"error": "invalid_request"})), 0, 502),
        (ok("not json"), 0, 502),
        (err(500, json!({})), 0, 503),
        (CalloutResponse::default(), 0, 503),
        (CalloutResponse::default(), 1_000, 504),
    ];
    for (resp, elapsed, status) in cases {
        let (mut f, mut m) = (exchange_filter(json!({})), Mock::new());
        warm(&mut f, &mut m);
        let t = good();
        request(&mut f, &mut m, 2, Some(&t));
        request(&mut f, &mut m, 3, Some(&t));
        assert_eq!(m.callouts.len(), 2, "one JWKS fetch, one exchange for both");
        let c = m.callouts.last().unwrap().clone();
        m.now_ms += elapsed;
        m.enter(2);
        f.on_callout(&mut m, c.token, &resp);
        for id in [2, 3] {
            let s = m
                .sent(id)
                .unwrap_or_else(|| panic!("{resp:?}: stream {id} not answered"));
            assert_eq!(s.status, status, "{resp:?}");
            assert!(!m.stream(id).resumed);
            assert!(!s.body.contains("invalid_grant") || status != 401);
        }
        if status == 503 {
            assert!(m.sent(2).unwrap().header("retry-after").is_some());
        }
        if status == 401 {
            assert!(m
                .sent(2)
                .unwrap()
                .header("www-authenticate")
                .unwrap()
                .contains(r#"error="invalid_token""#));
        }
        // A failure is not cached: the next request exchanges again.
        let before = m.callouts.len();
        request(&mut f, &mut m, 4, Some(&t));
        assert_eq!(m.callouts.len(), before + 1);
    }
}

#[test]
fn cache_lifetime_is_expires_in_minus_skew() {
    let (mut f, mut m) = (exchange_filter(json!({})), Mock::new());
    warm(&mut f, &mut m);
    let t = good();
    request(&mut f, &mut m, 2, Some(&t));
    let c = m.callouts.last().unwrap().clone();
    f.on_callout(&mut m, c.token, &exchanged(40));
    // Usable for 40 - 30 = 10 s.
    m.now_ms += 9_000;
    assert_eq!(request(&mut f, &mut m, 3, Some(&t)), Action::Continue);
    m.now_ms += 2_000;
    assert_eq!(
        request(&mut f, &mut m, 4, Some(&t)),
        Action::Pause,
        "expired: exchange again"
    );
}

#[test]
fn the_subjects_last_seconds_are_still_served_from_the_cache() {
    // The exchanged token lives an hour; the caller's 300 s. Near the end of
    // the caller's token, requests must keep hitting the cache, not the IdP.
    let (mut f, mut m) = (exchange_filter(json!({})), Mock::new());
    warm(&mut f, &mut m);
    let t = good();
    request(&mut f, &mut m, 2, Some(&t));
    let c = m.callouts.last().unwrap().clone();
    f.on_callout(&mut m, c.token, &exchanged(3_600));
    let calls = m.callouts.len();
    m.now_ms += 295_000;
    assert_eq!(request(&mut f, &mut m, 3, Some(&t)), Action::Continue);
    assert_eq!(m.callouts.len(), calls);
}

#[test]
fn cache_never_serves_past_the_subject_tokens_validity() {
    let (mut f, mut m) = (exchange_filter(json!({})), Mock::new());
    warm(&mut f, &mut m);
    let t = good(); // valid for 300 s, plus the 60 s clock skew
    request(&mut f, &mut m, 2, Some(&t));
    let c = m.callouts.last().unwrap().clone();
    f.on_callout(&mut m, c.token, &exchanged(3_600));
    m.now_ms += 362_000;
    request(&mut f, &mut m, 3, Some(&t));
    assert_eq!(
        m.sent(3).unwrap().status,
        401,
        "an expired caller token is refused, cached or not"
    );
    assert!(m.stream(3).set_headers.is_empty());
}

#[test]
fn cache_until_rules() {
    let p = Principal {
        sub: None,
        client: None,
        exp: 1_000,
        key_id: 0,
        scopes: vec![],
        claim_headers: vec![],
    };
    let ex = |expires_in, jwt_exp| Exchanged {
        expires_at: None,
        access_token: String::new(),
        expires_in,
        jwt_exp,
    };
    // expires_in less the skew, when sooner than the caller's validity.
    assert_eq!(cache_until(&ex(Some(100), None), &p, 60, 30_000, 500_000), 570_000);
    // Capped by the caller's exp plus clock skew.
    assert_eq!(cache_until(&ex(Some(3_600), None), &p, 60, 30_000, 500_000), 1_060_000);
    // Without expires_in, the exchanged JWT's exp less the skew.
    assert_eq!(cache_until(&ex(None, Some(800)), &p, 60, 30_000, 500_000), 770_000);
    // Knowing nothing of the exchanged token: the caller's validity.
    assert_eq!(cache_until(&ex(None, None), &p, 60, 30_000, 500_000), 1_060_000);
}

#[test]
fn users_never_share_a_cached_token() {
    let (mut f, mut m) = (exchange_filter(json!({})), Mock::new());
    warm(&mut f, &mut m);
    let alice = good();
    let bob = rsa(RSA1, "k1")
        .sign(claims(ISS, "mcpserver", "mcp:tools:call").with_subject("bob"))
        .unwrap();
    request(&mut f, &mut m, 2, Some(&alice));
    let c = m.callouts.last().unwrap().clone();
    f.on_callout(&mut m, c.token, &exchanged(300));
    assert_eq!(
        request(&mut f, &mut m, 3, Some(&bob)),
        Action::Pause,
        "bob gets his own exchange"
    );
}

#[test]
fn exchange_owner_leaving_is_restarted_from_the_root() {
    let (mut f, mut m) = (exchange_filter(json!({})), Mock::new());
    warm(&mut f, &mut m);
    let t = good();
    request(&mut f, &mut m, 2, Some(&t));
    request(&mut f, &mut m, 3, Some(&t));
    let n = m.callouts.len();
    client_leaves(&mut f, &mut m, 2);
    assert_eq!(m.callouts.len(), n + 1);
    let c = m.callouts.last().unwrap().clone();
    assert_eq!(c.owner, ROOT);
    f.on_callout(&mut m, c.token, &exchanged(300));
    assert!(m.stream(3).resumed);
    assert_eq!(authorization(&m, 3), Some(format!("Bearer {BACKEND_TOKEN}")));
}

#[test]
fn last_waiter_leaving_drops_the_flight() {
    let (mut f, mut m) = (exchange_filter(json!({})), Mock::new());
    warm(&mut f, &mut m);
    request(&mut f, &mut m, 2, Some(&good()));
    let n = m.callouts.len();
    client_leaves(&mut f, &mut m, 2);
    assert_eq!(m.callouts.len(), n, "nobody waits: nothing restarted");
}

#[test]
fn unanswered_exchange_times_out_with_504() {
    let (mut f, mut m) = (exchange_filter(json!({})), Mock::new());
    warm(&mut f, &mut m);
    request(&mut f, &mut m, 2, Some(&good()));
    m.now_ms += 3_500;
    m.enter(ROOT);
    f.on_tick(&mut m);
    assert_eq!(m.sent(2).unwrap().status, 504);
}

#[test]
fn requests_waiting_for_keys_go_on_to_the_exchange_as_the_origin_context() {
    let (mut f, mut m) = (exchange_filter(json!({})), Mock::new());
    let t = good();
    request(&mut f, &mut m, 2, Some(&t));
    request(&mut f, &mut m, 3, Some(&t));
    let jwks = m.callouts[0].clone();
    m.enter(2);
    f.on_callout(&mut m, jwks.token, &ok(&keys_k1()));
    // One exchange for both, made as the context that received the keys.
    assert_eq!(m.callouts.len(), 2);
    let c = m.callouts[1].clone();
    assert_eq!(c.owner, 2);
    f.on_callout(&mut m, c.token, &exchanged(300));
    assert!(m.stream(2).resumed && m.stream(3).resumed);
}

#[test]
fn external_header_leaves_authorization_alone() {
    let (mut f, mut m) = (
        exchange_filter(json!({"externalTokenHeaderName": "X-Backend-Token"})),
        Mock::new(),
    );
    warm(&mut f, &mut m);
    let t = good();
    request(&mut f, &mut m, 2, Some(&t));
    let c = m.callouts.last().unwrap().clone();
    f.on_callout(&mut m, c.token, &exchanged(300));
    assert_eq!(
        m.stream(2).set_headers,
        vec![("x-backend-token".to_string(), format!("Bearer {BACKEND_TOKEN}"))]
    );
    assert_eq!(authorization(&m, 2), Some(format!("Bearer {t}")));
}

#[test]
fn validation_only_forwards_the_callers_token_untouched() {
    let (mut f, mut m) = (filter(), Mock::new());
    warm(&mut f, &mut m);
    request(&mut f, &mut m, 2, Some(&good()));
    assert!(m.stream(2).set_headers.is_empty());
}
