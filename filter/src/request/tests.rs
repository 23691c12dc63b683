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

#[test]
fn fetch_owner_leaving_does_not_strand_other_waiters() {
    let (mut f, mut m) = (filter(), Mock::new());
    request(&mut f, &mut m, 2, Some(&good()));
    request(&mut f, &mut m, 3, Some(&good()));
    assert_eq!(m.callouts[0].owner, 2);
    // Client 2 leaves: Envoy cancels its callout.
    m.streams.remove(&2);
    m.enter(ROOT);
    f.on_done(&mut m, 2);
    f.on_tick(&mut m);
    assert_eq!(m.callouts.len(), 2, "the root context fetches again");
    assert_eq!(m.callouts[1].owner, ROOT);
    let c = m.callouts[1].clone();
    f.on_callout(&mut m, c.token, &ok(&keys_k1()));
    assert!(m.stream(3).resumed);
}

#[test]
fn waiter_that_left_is_skipped() {
    let (mut f, mut m) = (filter(), Mock::new());
    request(&mut f, &mut m, 2, Some(&good()));
    request(&mut f, &mut m, 3, Some(&good()));
    m.streams.remove(&3);
    m.enter(2);
    let c = m.callouts[0].clone();
    f.on_callout(&mut m, c.token, &ok(&keys_k1()));
    assert!(m.stream(2).resumed);
}

#[test]
fn waiters_time_out_with_503_if_no_answer_ever_comes() {
    let (mut f, mut m) = (filter(), Mock::new());
    request(&mut f, &mut m, 2, Some(&good()));
    m.now_ms += MAX_WAIT_MS + 1;
    m.enter(ROOT);
    f.on_tick(&mut m);
    assert_eq!(m.sent(2).unwrap().status, 503);
}

#[test]
fn a_fetch_publishes_its_keys_before_it_frees_the_lease() {
    // Another worker that takes the lease the moment it is free syncs first:
    // it must find the keys there, not fetch them again (on real Envoy,
    // first requests on both workers made two JWKS GETs now and then).
    let shared = Shared::default();
    let (mut f1, mut m1) = (filter(), Mock::with_shared(shared.clone()));
    request(&mut f1, &mut m1, 2, Some(&good()));
    let c = m1.callouts[0].clone();
    m1.writes.clear();
    f1.on_callout(&mut m1, c.token, &ok(&keys_k1()));
    // The keys are `tef:tef:jwks:<hex>`, their lease `….lease`.
    let last = |f: &dyn Fn(&String) -> bool| m1.writes.iter().rposition(f).unwrap();
    let published = last(&|k| k.contains(":jwks:") && !k.contains('.'));
    let freed = last(&|k| k.ends_with(".lease"));
    assert!(published < freed, "{:?}", m1.writes);
    let (mut f2, mut m2) = (filter(), Mock::with_shared(shared));
    assert_eq!(request(&mut f2, &mut m2, 2, Some(&good())), Action::Continue);
    assert!(m2.callouts.is_empty());
}

#[test]
fn keys_a_later_request_adopted_release_the_earlier_waiters_on_the_tick() {
    let shared = Shared::default();
    let (mut f1, mut m1) = (filter(), Mock::with_shared(shared.clone()));
    let (mut f2, mut m2) = (filter(), Mock::with_shared(shared));
    request(&mut f1, &mut m1, 2, Some(&good()));
    // Worker 2's first request waits for worker 1's fetch.
    assert_eq!(request(&mut f2, &mut m2, 2, Some(&good())), Action::Pause);
    let c = m1.callouts[0].clone();
    f1.on_callout(&mut m1, c.token, &ok(&keys_k1()));
    // Its next request finds the keys published and passes at once.
    assert_eq!(request(&mut f2, &mut m2, 3, Some(&good())), Action::Continue);
    // The first is released on the next tick, not at the next refetch.
    m2.now_ms += 500;
    m2.enter(ROOT);
    f2.on_tick(&mut m2);
    assert!(m2.stream(2).resumed);
    assert!(
        m2.callouts.is_empty() && m1.callouts.len() == 1,
        "one fetch for the proxy"
    );
}

#[test]
fn workers_share_one_fetch_through_shared_data() {
    let shared = Shared::default();
    let (mut f1, mut m1) = (filter(), Mock::with_shared(shared.clone()));
    let (mut f2, mut m2) = (filter(), Mock::with_shared(shared));
    request(&mut f1, &mut m1, 2, Some(&good()));
    // Worker 2 sees worker 1's lease and waits instead of fetching.
    assert_eq!(request(&mut f2, &mut m2, 2, Some(&good())), Action::Pause);
    assert!(m2.callouts.is_empty());
    let c = m1.callouts[0].clone();
    f1.on_callout(&mut m1, c.token, &ok(&keys_k1()));
    assert!(m1.stream(2).resumed);
    // Worker 2 picks the published keys up on its next tick.
    m2.enter(ROOT);
    f2.on_tick(&mut m2);
    assert!(m2.stream(2).resumed);
    assert!(m2.callouts.is_empty());
}

#[test]
fn a_push_keeps_the_keys_of_an_issuer_it_keeps() {
    // The same issuer and JWKS, another audience: the published keys serve.
    let shared = Shared::default();
    let (mut f1, mut m1) = (filter(), Mock::with_shared(shared.clone()));
    warm(&mut f1, &mut m1);
    let mut v = config_json();
    v["oidc"]["audience"] = "other".into();
    let b = plugin_config::parse(v.to_string().as_bytes()).unwrap();
    m1.enter(ROOT);
    f1.on_tick(&mut m1);
    assert_eq!(
        m1.metric("token_exchange_filter.shared_data.keys_created"),
        3,
        "the keys, their lease and the last attempt"
    );
    let (mut f2, mut m2) = (Filter::new(&b, "tef").unwrap(), Mock::with_shared(shared.clone()));
    m2.enter(ROOT);
    f2.on_tick(&mut m2);
    assert!(m2.callouts.is_empty(), "no fetch: the issuer's keys are in shared data");
    f2.on_tick(&mut m2);
    assert_eq!(m2.metric("token_exchange_filter.shared_data.keys_created"), 0);
    // Another JWKS URL, or another plugin: keys of their own.
    v["oidc"]["jwksUrl"] = "http://127.0.0.1:9000/other-keys".into();
    let c = plugin_config::parse(v.to_string().as_bytes()).unwrap();
    for (config, plugin) in [(&c, "tef"), (&b, "other-plugin")] {
        let (mut f3, mut m3) = (Filter::new(config, plugin).unwrap(), Mock::with_shared(shared.clone()));
        m3.enter(ROOT);
        f3.on_tick(&mut m3);
        assert_eq!(m3.callouts.len(), 1, "{plugin}: fetches keys of its own");
    }
    let mut bases: Vec<String> = shared
        .borrow()
        .keys()
        .map(|k| k.trim_end_matches(".lease").trim_end_matches(".attempt").to_string())
        .collect();
    bases.sort();
    bases.dedup();
    assert_eq!(bases.len(), 3, "one set per issuer and plugin: {bases:?}");
    assert_eq!(
        bases.iter().filter(|k| k.starts_with("tef:other-plugin:jwks:")).count(),
        1
    );
}

#[test]
fn metadata_endpoint_is_served_without_auth() {
    let (mut f, mut m) = (filter(), Mock::new());
    m.open(
        2,
        &[
            (":method", "GET"),
            (":authority", "127.0.0.1:8080"),
            (":path", "/.well-known/oauth-protected-resource/mcp?x=1"),
        ],
    );
    assert_eq!(f.on_request_headers(&mut m, false), Action::Pause);
    let s = m.sent(2).unwrap();
    assert_eq!(s.status, 200);
    assert_eq!(s.header("access-control-allow-origin"), Some("*"));
    let doc: serde_json::Value = serde_json::from_str(&s.body).unwrap();
    assert_eq!(doc["resource"], "http://127.0.0.1:8080/mcp");
    assert_eq!(doc["authorization_servers"], json!([ISS]));
    m.open(
        3,
        &[
            (":method", "OPTIONS"),
            (":authority", "127.0.0.1:8080"),
            (":path", "/.well-known/oauth-protected-resource/mcp"),
        ],
    );
    f.on_request_headers(&mut m, false);
    assert_eq!(m.sent(3).unwrap().status, 204);
    m.open(
        4,
        &[
            (":method", "POST"),
            (":authority", "127.0.0.1:8080"),
            (":path", "/.well-known/oauth-protected-resource/mcp"),
        ],
    );
    f.on_request_headers(&mut m, false);
    assert_eq!(m.sent(4).unwrap().status, 405);
    // Other well-known paths are not ours.
    m.open(
        5,
        &[
            (":method", "GET"),
            (":path", "/.well-known/oauth-protected-resource/other"),
        ],
    );
    f.on_request_headers(&mut m, false);
    assert_eq!(m.sent(5).unwrap().status, 401);
}

// ---- token exchange ----

const BACKEND_TOKEN: &str = "backend.eyJzdWIiOiJhbGljZSJ9.sig";

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
    let env = |n: &str| (n == "TE_SECRET").then(|| "secret".to_string());
    Filter::new(
        &plugin_config::parse_with_env(v.to_string().as_bytes(), &env).unwrap(),
        "tef",
    )
    .unwrap()
}

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
    m.streams.remove(&2);
    m.enter(ROOT);
    f.on_done(&mut m, 2);
    f.on_tick(&mut m);
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
    m.streams.remove(&2);
    m.enter(ROOT);
    f.on_done(&mut m, 2);
    f.on_tick(&mut m);
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

/// The exchange filter with `rules`; the default exchange asks for `backend`.
fn rules_filter(rules: serde_json::Value) -> Filter {
    let mut v = config_json();
    v["tokenExchange"] = json!({
        "tokenUrl": "http://127.0.0.1:9002/token", "clientId": "gw", "clientSecretEnv": "TE_SECRET",
        "audience": "backend", "timeoutMs": 1000
    });
    v["rules"] = rules;
    let env = |n: &str| (n == "TE_SECRET").then(|| "secret".to_string());
    Filter::new(
        &plugin_config::parse_with_env(v.to_string().as_bytes(), &env).unwrap(),
        "tef",
    )
    .unwrap()
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

/// A filter exchanging at Google STS, then impersonating a service account.
fn google_filter() -> Filter {
    let mut v = config_json();
    v["tokenExchange"] = json!({
        "provider": "google-sts", "timeoutMs": 1000,
        "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/okta",
        "serviceAccountImpersonation": {"url":
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/bq@p.iam.gserviceaccount.com:generateAccessToken"}
    });
    Filter::new(&plugin_config::parse(v.to_string().as_bytes()).unwrap(), "tef").unwrap()
}

fn sts_ok() -> CalloutResponse {
    ok(
        &json!({"access_token": "ya29.federated", "token_type": "Bearer", "expires_in": 3599,
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})
        .to_string(),
    )
}

#[test]
fn google_two_steps_in_one_pause_and_only_the_final_token_is_cached() {
    let (mut f, mut m) = (google_filter(), Mock::new());
    warm(&mut f, &mut m);
    let t = good();
    request(&mut f, &mut m, 2, Some(&t));
    request(&mut f, &mut m, 3, Some(&t));
    let sts = m.callouts.last().unwrap().clone();
    assert_eq!(sts.cluster, "outbound|443||sts.googleapis.com");
    m.enter(2);
    f.on_callout(&mut m, sts.token, &sts_ok());
    assert!(
        !m.stream(2).resumed && !m.stream(3).resumed,
        "still paused for the second step"
    );
    let iam = m.callouts.last().unwrap().clone();
    assert_eq!(iam.cluster, "outbound|443||iamcredentials.googleapis.com");
    assert_eq!(iam.header("authorization"), Some("Bearer ya29.federated"));
    assert_eq!(iam.owner, 2);
    // 40 minutes from now, in Google's format.
    let expire_time = crate::edge::audit::rfc3339((m.now_ms / 1000 + 2400) * 1000 + 123);
    f.on_callout(
        &mut m,
        iam.token,
        &ok(&json!({"accessToken": "ya29.sa", "expireTime": expire_time}).to_string()),
    );
    for id in [2, 3] {
        assert!(m.stream(id).resumed);
        assert_eq!(authorization(&m, id), Some("Bearer ya29.sa".into()));
    }
    // Cached: the next request costs no callout.
    let n = m.callouts.len();
    request(&mut f, &mut m, 4, Some(&t));
    assert_eq!(
        (m.callouts.len(), authorization(&m, 4)),
        (n, Some("Bearer ya29.sa".into()))
    );
    assert!(
        !m.shared
            .borrow()
            .values()
            .any(|(v, _)| String::from_utf8_lossy(v).contains("federated")),
        "the federated token is never cached"
    );
}

#[test]
fn google_second_step_failures_map_and_release_every_waiter() {
    for (answer, status) in [
        (
            ok_status(
                403,
                r#"{"error":{"code":403,"status":"PERMISSION_DENIED","message":"denied"}}"#,
            ),
            403,
        ),
        (ok_status(404, r#"{"error":{"code":404,"status":"NOT_FOUND"}}"#), 502),
        (CalloutResponse::default(), 503),
    ] {
        let (mut f, mut m) = (google_filter(), Mock::new());
        warm(&mut f, &mut m);
        request(&mut f, &mut m, 2, Some(&good()));
        let sts = m.callouts.last().unwrap().clone();
        m.enter(2);
        f.on_callout(&mut m, sts.token, &sts_ok());
        let iam = m.callouts.last().unwrap().clone();
        f.on_callout(&mut m, iam.token, &answer);
        assert_eq!(m.sent(2).unwrap().status, status);
    }
    second_step_times_out(google_filter(), &sts_ok());
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

fn ok_status(status: u16, body: &str) -> CalloutResponse {
    CalloutResponse {
        headers: vec![(":status".into(), status.to_string())],
        body: body.as_bytes().to_vec(),
        truncated: false,
    }
}

#[test]
fn entra_claims_challenge_reaches_the_client() {
    let mut v = config_json();
    v["tokenExchange"] = json!({"provider": "entra-obo", "tenantId": "contoso", "clientId": "app",
        "clientSecretEnv": "TE_SECRET", "scopes": ["api://backend/.default"]});
    let env = |n: &str| (n == "TE_SECRET").then(|| "secret".to_string());
    let mut f = Filter::new(
        &plugin_config::parse_with_env(v.to_string().as_bytes(), &env).unwrap(),
        "tef",
    )
    .unwrap();
    let mut m = Mock::new();
    warm(&mut f, &mut m);
    request(&mut f, &mut m, 2, Some(&good()));
    let c = m.callouts.last().unwrap().clone();
    let claims = r#"{"access_token":{"polids":{"essential":true,"values":["p1"]}}}"#;
    let body = json!({"error": "interaction_required", "error_description": "AADSTS50079", "claims": claims});
    m.enter(2);
    f.on_callout(&mut m, c.token, &ok_status(400, &body.to_string()));
    let s = m.sent(2).unwrap();
    assert_eq!(s.status, 401);
    let challenge = s.header("www-authenticate").unwrap();
    assert!(
        challenge.starts_with(r#"Bearer error="insufficient_claims""#),
        "{challenge}"
    );
    let encoded = format!(
        r#"claims="{}""#,
        base64::engine::general_purpose::STANDARD.encode(claims)
    );
    assert!(challenge.contains(&encoded), "{challenge}");
    assert!(challenge.contains("resource_metadata="), "{challenge}");
}

// ---------------------------------------------------------------------------
// The edge (issue 10): CORS, claim headers, metrics, per-tool scopes.

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

#[test]
fn refusals_carry_cors_headers_for_allowed_origins_only() {
    let (mut f, mut m) = (
        edge_filter(json!({"cors": {"allowedOrigins": ["https://app.example"]}}), false),
        Mock::new(),
    );
    open_with(
        &mut f,
        &mut m,
        2,
        &[
            (":method", "POST"),
            (":path", "/mcp"),
            ("origin", "https://app.example"),
        ],
        false,
    );
    let s = m.sent(2).unwrap();
    assert_eq!(s.status, 401);
    assert_eq!(s.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(s.header("access-control-expose-headers"), Some("WWW-Authenticate"));
    assert_eq!(s.header("vary"), Some("Origin"));
    open_with(
        &mut f,
        &mut m,
        3,
        &[
            (":method", "POST"),
            (":path", "/mcp"),
            ("origin", "https://evil.example"),
        ],
        false,
    );
    assert_eq!(m.sent(3).unwrap().header("access-control-allow-origin"), None);
    // Without cors, nothing is added.
    let (mut f, mut m) = (edge_filter(json!({}), false), Mock::new());
    open_with(
        &mut f,
        &mut m,
        2,
        &[
            (":method", "POST"),
            (":path", "/mcp"),
            ("origin", "https://app.example"),
        ],
        false,
    );
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

fn tools_filter(exchange: bool) -> Filter {
    edge_filter(
        json!({"mcp": {"toolScopes": {"delete_repo": ["repo:admin"]}, "maxBodyBytes": 200}}),
        exchange,
    )
}

fn tool_call(name: &str) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name}})
        .to_string()
        .into_bytes()
}

/// Opens a POST to /mcp with a body to come.
fn post(f: &mut Filter, m: &mut Mock, id: u32, token: &str, body: Vec<u8>) -> Action {
    let auth = format!("Bearer {token}");
    let a = open_with(
        f,
        m,
        id,
        &[(":method", "POST"), (":path", "/mcp"), ("authorization", &auth)],
        true,
    );
    m.streams.get_mut(&id).unwrap().body = body;
    a
}

#[test]
fn a_tool_needs_its_scopes_once_the_body_is_read() {
    let (mut f, mut m) = (tools_filter(false), Mock::new());
    warm(&mut f, &mut m);
    let admin = token(RSA1, "k1", "mcp:tools:call repo:admin");
    // Granted: the headers go on, the body is held until read, then on.
    assert_eq!(
        post(&mut f, &mut m, 2, &admin, tool_call("delete_repo")),
        Action::Continue
    );
    assert_eq!(f.on_request_body(&mut m, 10, false), Action::Pause, "buffering");
    let n = m.stream(2).body.len();
    assert_eq!(f.on_request_body(&mut m, n, true), Action::Continue);
    // Not granted: 403 naming the route's and the tool's scopes.
    let plain = good();
    post(&mut f, &mut m, 3, &plain, tool_call("delete_repo"));
    let n = m.stream(3).body.len();
    assert_eq!(f.on_request_body(&mut m, n, true), Action::Pause);
    let s = m.sent(3).unwrap();
    assert_eq!(s.status, 403);
    assert!(s
        .header("www-authenticate")
        .unwrap()
        .contains(r#"scope="mcp:tools:call repo:admin""#));
    // Other tools need nothing more.
    post(&mut f, &mut m, 4, &plain, tool_call("echo"));
    let n = m.stream(4).body.len();
    assert_eq!(f.on_request_body(&mut m, n, true), Action::Continue);
    // Too large, or not JSON.
    post(&mut f, &mut m, 5, &admin, vec![b' '; 300]);
    assert_eq!(f.on_request_body(&mut m, 300, false), Action::Pause);
    assert_eq!(m.sent(5).unwrap().status, 413);
    post(&mut f, &mut m, 6, &admin, b"{nope".to_vec());
    f.on_request_body(&mut m, 5, true);
    assert_eq!(m.sent(6).unwrap().status, 400);
    // A GET, or a POST without a body, is never held.
    let auth = format!("Bearer {plain}");
    assert_eq!(
        open_with(
            &mut f,
            &mut m,
            7,
            &[(":method", "GET"), (":path", "/mcp"), ("authorization", &auth)],
            true
        ),
        Action::Continue
    );
    assert_eq!(f.on_request_body(&mut m, 0, true), Action::Continue);
    assert_eq!(
        open_with(
            &mut f,
            &mut m,
            8,
            &[(":method", "POST"), (":path", "/mcp"), ("authorization", &auth)],
            false
        ),
        Action::Continue
    );
}

#[test]
fn the_body_is_judged_after_a_paused_request_goes_on() {
    let (mut f, mut m) = (tools_filter(true), Mock::new());
    warm(&mut f, &mut m);
    // Paused for its exchange: Envoy delivers the body once it resumes.
    let plain = good();
    assert_eq!(post(&mut f, &mut m, 2, &plain, tool_call("delete_repo")), Action::Pause);
    let c = m.callouts.last().unwrap().clone();
    f.on_callout(&mut m, c.token, &exchanged(300));
    assert!(m.stream(2).resumed);
    assert_eq!(authorization(&m, 2), Some(format!("Bearer {BACKEND_TOKEN}")));
    m.enter(2);
    let n = m.stream(2).body.len();
    assert_eq!(f.on_request_body(&mut m, n, true), Action::Pause);
    assert_eq!(m.sent(2).unwrap().status, 403);
    // Paused for keys: the same.
    let (mut f, mut m) = (tools_filter(false), Mock::new());
    let admin = token(RSA1, "k1", "mcp:tools:call repo:admin");
    post(&mut f, &mut m, 2, &admin, tool_call("delete_repo"));
    let jwks = m.callouts[0].clone();
    f.on_callout(&mut m, jwks.token, &ok(&keys_k1()));
    assert!(m.stream(2).resumed);
    m.enter(2);
    let n = m.stream(2).body.len();
    assert_eq!(f.on_request_body(&mut m, n, true), Action::Continue);
    // A client that leaves leaves nothing behind.
    post(&mut f, &mut m, 3, &admin, tool_call("delete_repo"));
    f.on_done(&mut m, 3);
    assert!(f.gate.is_empty());
}

#[test]
fn older_keys_from_another_worker_do_not_decide_a_waiting_unseen_kid() {
    let shared = Shared::default();
    let (mut f1, mut m1) = (filter(), Mock::with_shared(shared.clone()));
    let (mut f2, mut m2) = (filter(), Mock::with_shared(shared));
    m2.now_ms = m1.now_ms;
    warm(&mut f1, &mut m1);
    // Worker 2 has no keys yet; worker 1 refreshed just now.
    m2.now_ms += 100;
    let rotated = token(RSA2, "k2", "mcp:tools:call");
    // Worker 2 loads worker 1's copy and holds the request (no refetch yet).
    assert_eq!(request(&mut f2, &mut m2, 2, Some(&rotated)), Action::Pause);
    m2.enter(ROOT);
    f2.on_tick(&mut m2);
    assert!(m2.sent(2).is_none(), "not refused by keys older than the request");
    // The next allowed refetch brings k2.
    m2.now_ms += KID_REFETCH_INTERVAL_MS;
    m2.enter(ROOT);
    f2.on_tick(&mut m2);
    let c = m2.callouts.last().unwrap().clone();
    f2.on_callout(&mut m2, c.token, &ok(&keys_k2()));
    assert!(m2.stream(2).resumed);
}

#[test]
fn a_gated_request_is_decided_once_at_its_body_or_its_end() {
    let (mut f, mut m) = (tools_filter(false), Mock::new());
    warm(&mut f, &mut m);
    let counts = |f: &mut Filter, m: &mut Mock| {
        m.enter(ROOT);
        f.on_tick(m);
        (
            m.metric("token_exchange_filter.requests.allowed"),
            m.metric("token_exchange_filter.requests.insufficient_scope"),
        )
    };
    // Refused at the body: one denial, and no allow at the headers.
    post(&mut f, &mut m, 2, &good(), tool_call("delete_repo"));
    assert_eq!(counts(&mut f, &mut m), (0, 0), "not decided while the body is to come");
    m.enter(2);
    let n = m.stream(2).body.len();
    assert_eq!(f.on_request_body(&mut m, n, true), Action::Pause);
    assert_eq!(counts(&mut f, &mut m), (0, 1));
    // Allowed at the body: one allow.
    let admin = token(RSA1, "k1", "mcp:tools:call repo:admin");
    post(&mut f, &mut m, 3, &admin, tool_call("delete_repo"));
    m.enter(3);
    let n = m.stream(3).body.len();
    assert_eq!(f.on_request_body(&mut m, n, true), Action::Continue);
    assert_eq!(counts(&mut f, &mut m), (1, 1));
    f.on_done(&mut m, 3);
    // No body ever judged (the client left): its headers went on, so it
    // counts as allowed when it ends, once.
    post(&mut f, &mut m, 4, &admin, tool_call("delete_repo"));
    assert_eq!(counts(&mut f, &mut m), (1, 1));
    f.on_done(&mut m, 4);
    f.on_done(&mut m, 4);
    assert_eq!(counts(&mut f, &mut m), (2, 1));
    assert!(f.gate.is_empty());
}

#[test]
fn posts_to_a_variant_of_the_endpoint_are_refused_before_anything_goes_on() {
    let (mut f, mut m) = (tools_filter(false), Mock::new());
    warm(&mut f, &mut m);
    let plain = good();
    let auth = format!("Bearer {plain}");
    for (id, path) in [(2, "/MCP"), (3, "/mcp;x"), (4, "//mcp"), (5, "/%6Dcp")] {
        let headers = [(":method", "POST"), (":path", path), ("authorization", auth.as_str())];
        assert_eq!(open_with(&mut f, &mut m, id, &headers, true), Action::Pause, "{path}");
        let s = m.sent(id).unwrap();
        assert_eq!(s.status, 400, "{path}");
        assert!(s.header("www-authenticate").unwrap().contains("ambiguous path"));
    }
    // With a trailing slash it is the endpoint: judged, and refused for the tool.
    let headers = [
        (":method", "POST"),
        (":path", "/mcp/"),
        ("authorization", auth.as_str()),
    ];
    assert_eq!(open_with(&mut f, &mut m, 6, &headers, true), Action::Continue);
    m.streams.get_mut(&6).unwrap().body = tool_call("delete_repo");
    let n = m.stream(6).body.len();
    assert_eq!(f.on_request_body(&mut m, n, true), Action::Pause);
    assert_eq!(m.sent(6).unwrap().status, 403);
    // A GET, or a POST without a body, has no tool call: its path is not read.
    let get = [(":method", "GET"), (":path", "/MCP"), ("authorization", auth.as_str())];
    assert_eq!(open_with(&mut f, &mut m, 7, &get, false), Action::Continue);
    let bodiless = [(":method", "POST"), (":path", "/MCP"), ("authorization", auth.as_str())];
    assert_eq!(open_with(&mut f, &mut m, 8, &bodiless, false), Action::Continue);
}

// ---------------------------------------------------------------------------
// One filter, many protected resources (issue 16).

const GH_ISS: &str = "http://127.0.0.1:9001/gh";
const JIRA_ISS: &str = "http://127.0.0.1:9002/jira";

/// Two MCP servers on one host, each with its own issuer (k1 signs for
/// GitHub's, k2 for Jira's), and a catch-all skip.
fn two_resources() -> Filter {
    let v = json!({
        "oidc": {"requiredScopes": ["mcp:tools:call"], "insecureAllowHttp": true},
        "rules": [
            {"match": {"hosts": ["mcp.example.com"], "pathPrefix": "/github/"},
             "oidc": {"issuer": GH_ISS, "audience": "gh", "jwksUrl": "http://127.0.0.1:9001/gh/jwks",
                      "resourceUrl": "http://mcp.example.com/github/mcp", "requiredScopes": ["repo:read"]}},
            {"match": {"hosts": ["mcp.example.com"], "pathPrefix": "/jira/"},
             "oidc": {"issuer": JIRA_ISS, "audience": "jira", "jwksUrl": "http://127.0.0.1:9002/jira/jwks",
                      "resourceUrl": "http://mcp.example.com/jira/mcp"}},
            {"match": {}, "skip": true}
        ]
    });
    Filter::new(&plugin_config::parse(v.to_string().as_bytes()).unwrap(), "tef").unwrap()
}

fn at(f: &mut Filter, m: &mut Mock, id: u32, path: &str, token: &str) -> Action {
    let auth = format!("Bearer {token}");
    m.open(
        id,
        &[
            (":method", "GET"),
            (":authority", "mcp.example.com"),
            (":path", path),
            ("authorization", &auth),
        ],
    );
    f.on_request_headers(m, false)
}

#[test]
fn each_resource_checks_tokens_with_its_own_issuer_keys_and_audience() {
    let (mut f, mut m) = (two_resources(), Mock::new());
    let gh = rsa(RSA1, "k1").sign(claims(GH_ISS, "gh", "repo:read")).unwrap();
    let jira = rsa(RSA2, "k2")
        .sign(claims(JIRA_ISS, "jira", "mcp:tools:call"))
        .unwrap();
    assert_eq!(at(&mut f, &mut m, 2, "/github/mcp", &gh), Action::Pause);
    assert_eq!(m.callouts.len(), 1);
    assert_eq!(
        m.callouts[0].header(":path"),
        Some("/gh/jwks"),
        "GitHub's issuer's keys"
    );
    let c = m.callouts[0].clone();
    m.enter(2);
    f.on_callout(&mut m, c.token, &ok(&keys_k1()));
    assert!(m.stream(2).resumed);
    // The GitHub token on Jira's route: Jira's keys are fetched on their own,
    // and the token, for another resource, is refused with Jira's challenge.
    assert_eq!(at(&mut f, &mut m, 3, "/jira/mcp", &gh), Action::Pause);
    assert_eq!(m.callouts.len(), 2);
    assert_eq!(m.callouts[1].header(":path"), Some("/jira/jwks"));
    let c = m.callouts[1].clone();
    m.enter(3);
    f.on_callout(&mut m, c.token, &ok(&keys_k2()));
    let sent = m.stream(3).sent.clone().unwrap();
    assert_eq!(sent.status, 401);
    let challenge = sent.header("www-authenticate").unwrap();
    assert!(
        challenge
            .contains(r#"resource_metadata="http://mcp.example.com/.well-known/oauth-protected-resource/jira/mcp""#),
        "{challenge}"
    );
    // Jira's own token passes there; the GitHub token still passes on GitHub,
    // from the verified cache, and Jira's token does not pass on GitHub.
    assert_eq!(at(&mut f, &mut m, 4, "/jira/mcp", &jira), Action::Continue);
    let checks = f.signature_checks();
    assert_eq!(at(&mut f, &mut m, 5, "/github/mcp", &gh), Action::Continue);
    assert_eq!(f.signature_checks(), checks, "remembered for GitHub's route");
    // Jira's token names another issuer than GitHub's: refused at once with
    // GitHub's challenge, without waiting for (or asking) GitHub's IdP for
    // a key it cannot have, however long after the last fetch it comes.
    m.now_ms += KID_REFETCH_INTERVAL_MS;
    assert_eq!(at(&mut f, &mut m, 6, "/github/mcp", &jira), Action::Pause);
    let sent = m.stream(6).sent.clone().unwrap();
    assert_eq!(sent.status, 401);
    assert!(sent.header("www-authenticate").unwrap().contains("/github/mcp"));
    assert_eq!(m.callouts.len(), 2);
    // A token that claims GitHub's issuer with a key GitHub's set lacks
    // still waits for GitHub's refetch (a rotation), and only GitHub's.
    let rotated = rsa(RSA2, "k2").sign(claims(GH_ISS, "gh", "repo:read")).unwrap();
    assert_eq!(at(&mut f, &mut m, 8, "/github/mcp", &rotated), Action::Pause);
    assert!(m.stream(8).sent.is_none());
    assert_eq!(m.callouts.len(), 3);
    assert_eq!(m.callouts[2].header(":path"), Some("/gh/jwks"));
    let c = m.callouts[2].clone();
    f.on_callout(&mut m, c.token, &ok(&keys_k1()));
    assert_eq!(m.stream(8).sent.as_ref().unwrap().status, 401);
    // Another host is skipped: untouched, no keys asked for.
    m.open(
        7,
        &[
            (":method", "GET"),
            (":authority", "app.example.com"),
            (":path", "/github/mcp"),
        ],
    );
    assert_eq!(f.on_request_headers(&mut m, false), Action::Continue);
    assert_eq!(m.callouts.len(), 3);
}

#[test]
fn another_hosts_well_known_path_is_that_hosts_own() {
    let (mut f, mut m) = (two_resources(), Mock::new());
    m.open(
        2,
        &[
            (":method", "GET"),
            (":authority", "app.example.com"),
            (":path", "/.well-known/oauth-protected-resource/github/mcp"),
        ],
    );
    assert_eq!(
        f.on_request_headers(&mut m, false),
        Action::Continue,
        "skipped like the rest of that host"
    );
    assert!(m.sent(2).is_none());
}

#[test]
fn each_resource_serves_its_own_metadata_before_any_rule() {
    let (mut f, mut m) = (two_resources(), Mock::new());
    for (id, resource, iss) in [(2, "github", GH_ISS), (3, "jira", JIRA_ISS)] {
        let path = format!("/.well-known/oauth-protected-resource/{resource}/mcp");
        m.open(
            id,
            &[(":method", "GET"), (":authority", "mcp.example.com"), (":path", &path)],
        );
        assert_eq!(f.on_request_headers(&mut m, false), Action::Pause);
        let sent = m.stream(id).sent.clone().unwrap();
        assert_eq!(sent.status, 200);
        let doc: serde_json::Value = serde_json::from_str(&sent.body).unwrap();
        assert_eq!(doc["resource"], format!("http://mcp.example.com/{resource}/mcp"));
        assert_eq!(doc["authorization_servers"], json!([iss]));
    }
    assert!(m.callouts.is_empty());
}

mod exchange_steps;
