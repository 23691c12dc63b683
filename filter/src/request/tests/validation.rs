//! Validation at the headers: the challenge, the first key fetch and its
//! waiters, the unknown-kid refetch limit, scope and claim refusals.

use super::*;

#[test]
fn missing_token_gets_a_401_challenge() {
    let (mut f, mut m) = (filter(), Mock::new());
    assert_eq!(request(&mut f, &mut m, 2, None), Action::Pause);
    let s = m.sent(2).unwrap();
    assert_eq!(s.status, 401);
    assert_eq!(
        s.header("www-authenticate").unwrap(),
        r#"Bearer scope="mcp:tools:call", resource_metadata="http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp""#
    );
    assert_eq!(s.header("content-type"), Some("application/json"));
    assert!(m.callouts.is_empty(), "no key fetch for a request without a token");
}

#[test]
fn two_authorization_headers_get_a_400() {
    let (mut f, mut m) = (filter(), Mock::new());
    m.open(
        2,
        &[
            (":path", "/"),
            ("authorization", "Bearer a"),
            ("authorization", "Bearer b"),
        ],
    );
    f.on_request_headers(&mut m, false);
    assert_eq!(m.sent(2).unwrap().status, 400);
}

#[test]
fn requests_before_keys_wait_for_one_fetch_then_proceed() {
    let (mut f, mut m) = (filter(), Mock::new());
    let t = good();
    assert_eq!(request(&mut f, &mut m, 2, Some(&t)), Action::Pause);
    assert_eq!(request(&mut f, &mut m, 3, Some("a.b.c")), Action::Pause);
    assert_eq!(request(&mut f, &mut m, 4, Some(&t)), Action::Pause);
    assert_eq!(m.callouts.len(), 1, "one fetch for every waiter");
    let c = m.callouts[0].clone();
    assert_eq!(c.owner, 2);
    assert_eq!(c.cluster, "outbound|9000||127.0.0.1");
    assert_eq!(c.header(":method"), Some("GET"));
    assert_eq!(c.header(":path"), Some("/mcp/jwks"));
    assert_eq!(c.header(":authority"), Some("127.0.0.1:9000"));
    assert_eq!(c.header(":scheme"), Some("http"));
    assert!(c.timeout_ms > 0);
    assert!(m.stream(2).sent.is_none() && !m.stream(2).resumed);

    m.enter(2);
    f.on_callout(&mut m, c.token, &ok(&keys_k1()));
    assert!(m.stream(2).resumed);
    assert!(m.stream(4).resumed);
    assert_eq!(m.sent(3).unwrap().status, 401);
    assert_eq!(m.current, 2, "the delivering context is current again");
    // The same token verified once, then served from the cache.
    assert_eq!(f.signature_checks(), 1);
}

#[test]
fn repeat_requests_skip_the_signature_check() {
    let (mut f, mut m) = (filter(), Mock::new());
    warm(&mut f, &mut m);
    let t = good();
    for id in 2..12 {
        assert_eq!(request(&mut f, &mut m, id, Some(&t)), Action::Continue);
    }
    assert_eq!(f.signature_checks(), 1);
}

#[test]
fn failed_fetch_answers_waiters_with_503() {
    for resp in [
        CalloutResponse::default(),
        CalloutResponse {
            headers: vec![(":status".into(), "500".into())],
            ..Default::default()
        },
        ok("not json"),
        CalloutResponse {
            truncated: true,
            ..ok(&keys_k1())
        },
    ] {
        let (mut f, mut m) = (filter(), Mock::new());
        request(&mut f, &mut m, 2, Some(&good()));
        let c = m.callouts[0].clone();
        f.on_callout(&mut m, c.token, &resp);
        let s = m.sent(2).unwrap();
        assert_eq!(s.status, 503, "{resp:?}");
        assert_eq!(s.header("retry-after"), Some("5"));
        // Backing off: the next request is answered at once, without a new fetch.
        request(&mut f, &mut m, 3, Some(&good()));
        assert_eq!(m.sent(3).unwrap().status, 503);
        assert_eq!(m.callouts.len(), 1);
        // After the back-off, a tick fetches again, and a good answer recovers.
        m.now_ms += 1_500;
        m.enter(ROOT);
        f.on_tick(&mut m);
        assert_eq!(m.callouts.len(), 2);
        let c = m.callouts[1].clone();
        f.on_callout(&mut m, c.token, &ok(&keys_k1()));
        assert_eq!(request(&mut f, &mut m, 4, Some(&good())), Action::Continue);
    }
}

#[test]
fn refused_dispatch_is_a_503_not_a_hang() {
    let (mut f, mut m) = (filter(), Mock::new());
    m.refuse_dispatch = true;
    request(&mut f, &mut m, 2, Some(&good()));
    assert_eq!(m.sent(2).unwrap().status, 503);
}

#[test]
fn an_unseen_kid_waits_for_the_next_allowed_refetch() {
    let (mut f, mut m) = (filter(), Mock::new());
    warm(&mut f, &mut m);
    let rotated = token(RSA2, "k2", "mcp:tools:call");
    // Keys just fetched: no refetch yet, but no refusal either: the request
    // waits, so a key rotated in without pre-publication does not cause 401s.
    assert_eq!(request(&mut f, &mut m, 2, Some(&rotated)), Action::Pause);
    assert_eq!(request(&mut f, &mut m, 3, Some(&rotated)), Action::Pause);
    m.enter(ROOT);
    f.on_tick(&mut m);
    assert_eq!(m.callouts.len(), 1, "not before the interval");
    m.now_ms += KID_REFETCH_INTERVAL_MS;
    f.on_tick(&mut m);
    assert_eq!(m.callouts.len(), 2, "one refetch for both");
    let c = m.callouts[1].clone();
    f.on_callout(&mut m, c.token, &ok(&keys_k2()));
    assert!(m.stream(2).resumed && m.stream(3).resumed);
}

/// An unsigned payload claiming our issuer: what a token with an unknown
/// kid must say to be worth a refetch.
fn ours() -> String {
    URL_SAFE_NO_PAD.encode(json!({ "iss": ISS }).to_string())
}

#[test]
fn unknown_kids_cost_at_most_one_fetch_per_interval() {
    let (mut f, mut m) = (filter(), Mock::new());
    warm(&mut f, &mut m);
    let mut id = 2;
    let mut unknown = |f: &mut Filter, m: &mut Mock| {
        id += 1;
        // The kid is looked up before the signature: no need to sign.
        let head = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"RS256","kid":"kid-{id}"}}"#));
        request(f, m, id, Some(&format!("{head}.{}.c2ln", ours())));
    };
    // 200 random kids in a burst, through ticks, over 12 s.
    for round in 0..24 {
        for _ in 0..10 {
            unknown(&mut f, &mut m);
        }
        m.enter(ROOT);
        f.on_tick(&mut m);
        if let Some(c) = m.callouts.last().cloned() {
            if c.token != m.callouts[0].token && round % 2 == 1 {
                // The IdP is failing.
                f.on_callout(&mut m, c.token, &CalloutResponse::default());
            }
        }
        m.now_ms += 500;
    }
    let fetches = m.callouts.len() - 1;
    assert!((1..=3).contains(&fetches), "{fetches} fetches in 12 s");
    // Every request got an answer in the end, none a pass.
    m.now_ms += MAX_WAIT_MS + 1;
    m.enter(ROOT);
    f.on_tick(&mut m);
    for s in m.streams.values() {
        assert!(!s.resumed);
    }
}

#[test]
fn a_failing_jwks_endpoint_is_not_hammered_by_unknown_kids() {
    let (mut f, mut m) = (filter(), Mock::new());
    warm(&mut f, &mut m);
    m.now_ms += KID_REFETCH_INTERVAL_MS;
    let rotated = token(RSA2, "k9", "mcp:tools:call");
    request(&mut f, &mut m, 2, Some(&rotated));
    assert_eq!(m.callouts.len(), 2);
    let c = m.callouts[1].clone();
    f.on_callout(&mut m, c.token, &ok_status(500, "oops"));
    assert_eq!(m.sent(2).unwrap().status, 503, "keys could not be refreshed");
    // 20 more unknown kids right after: no further GET until the interval.
    for id in 3..23 {
        let head = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"RS256","kid":"x{id}"}}"#));
        request(&mut f, &mut m, id, Some(&format!("{head}.{}.c2ln", ours())));
    }
    assert_eq!(m.callouts.len(), 2);
}

#[test]
fn dropped_key_stops_cached_tokens() {
    let (mut f, mut m) = (filter(), Mock::new());
    warm(&mut f, &mut m);
    let t = good();
    assert_eq!(request(&mut f, &mut m, 2, Some(&t)), Action::Continue);
    // The refresh publishes k2 only.
    m.now_ms += 601_000;
    m.enter(ROOT);
    f.on_tick(&mut m);
    let c = m.callouts.last().unwrap().clone();
    f.on_callout(&mut m, c.token, &ok(&keys_k2()));
    // Not served from memory: its key is gone; it waits for the next
    // allowed refetch, which does not bring k1 back.
    assert_eq!(request(&mut f, &mut m, 3, Some(&t)), Action::Pause);
    m.now_ms += KID_REFETCH_INTERVAL_MS;
    m.enter(ROOT);
    f.on_tick(&mut m);
    let c = m.callouts.last().unwrap().clone();
    f.on_callout(&mut m, c.token, &ok(&keys_k2()));
    assert_eq!(m.sent(3).unwrap().status, 401);
}

#[test]
fn scope_and_claim_failures_are_403_and_401() {
    let (mut f, mut m) = (filter(), Mock::new());
    warm(&mut f, &mut m);
    request(&mut f, &mut m, 2, Some(&token(RSA1, "k1", "openid")));
    let s = m.sent(2).unwrap();
    assert_eq!(s.status, 403);
    assert!(s
        .header("www-authenticate")
        .unwrap()
        .contains(r#"error="insufficient_scope""#));
    let wrong_aud = rsa(RSA1, "k1").sign(claims(ISS, "backend", "mcp:tools:call")).unwrap();
    request(&mut f, &mut m, 3, Some(&wrong_aud));
    let s = m.sent(3).unwrap();
    assert_eq!(s.status, 401);
    assert!(s
        .header("www-authenticate")
        .unwrap()
        .starts_with(r#"Bearer error="invalid_token", error_description="audience not accepted", resource_metadata="#));
    assert!(!s.body.contains(&wrong_aud[..20]), "the token is never echoed");
}
