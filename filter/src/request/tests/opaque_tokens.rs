//! Opaque bearers checked by RFC 7662 introspection: the callout, the
//! answer's checks, the shared cache and its negative entries, one callout
//! per token per worker, endpoint faults, and the exchange after it.

use super::{authorization, config_json, filter_with_env, good, ok, ok_status, request, request_at, warm, ISS};
use crate::host::mock::{Mock, ROOT};
use crate::host::{Action, CalloutResponse, Plugin};
use crate::request::introspection::cache::NEGATIVE_MS;
use crate::request::introspection::call::TIMEOUT_MS;
use crate::request::Filter;
use crate::testkeys::RSA1;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use url::form_urlencoded;

const OPAQUE: &str = "x7Hq2kQmVbNc9RtYwZ3aLp0sDf4GhJkE5uIoPzXcV1B";
const URL: &str = "http://127.0.0.1:9000/mcp/token/introspection";

/// The environment the configs' `*Env` keys read.
const SECRETS: &[(&str, &str)] = &[("INTRO_SECRET", "s3cret"), ("IDP_SECRET", "idp"), ("INTRO_KEY", RSA1)];

fn intro() -> Value {
    json!({"url": URL, "clientId": "gw", "clientSecretEnv": "INTRO_SECRET"})
}

fn config_with(introspection: Value, extra: &[(&str, Value)]) -> Filter {
    let mut v = config_json();
    v["oidc"]["introspection"] = introspection;
    v["claimToHeaders"] = json!([{"claim": "sub", "header": "x-sub"}, {"claim": "email", "header": "x-email"}]);
    v["cache"] = json!({"maxEntries": 10});
    for (k, x) in extra {
        v[*k] = x.clone();
    }
    filter_with_env(&v, SECRETS)
}

fn filter() -> Filter {
    config_with(intro(), &[])
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn answer(m: &Mock, extra: Value) -> CalloutResponse {
    let mut a = json!({"active": true, "sub": "alice", "client_id": "vscode", "iss": ISS,
        "aud": "mcpserver", "scope": "mcp:tools:call", "exp": m.now_ms / 1000 + 3600,
        "email": "alice@example.com"});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        a[&k] = v;
    }
    ok(&a.to_string())
}

/// Sends request `id` with `token`, answers its introspection with `resp`.
fn introspected(f: &mut Filter, m: &mut Mock, id: u32, token: &str, resp: &CalloutResponse) {
    assert_eq!(request(f, m, id, Some(token)), Action::Pause);
    let c = m.callouts.last().unwrap().clone();
    m.enter(id);
    f.on_callout(m, c.token, resp);
}

fn header(m: &Mock, id: u32, name: &str) -> Option<String> {
    let set = &m.stream(id).set_headers;
    set.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

#[test]
fn the_callout_is_a_form_post_with_basic_client_authentication() {
    let (mut f, mut m) = (filter(), Mock::new());
    assert_eq!(request(&mut f, &mut m, 2, Some(OPAQUE)), Action::Pause);
    assert_eq!(m.callouts.len(), 1);
    let c = &m.callouts[0];
    assert_eq!(c.cluster, "outbound|9000||127.0.0.1");
    assert_eq!(c.header(":method"), Some("POST"));
    assert_eq!(c.header(":path"), Some("/mcp/token/introspection"));
    assert_eq!(c.header(":authority"), Some("127.0.0.1:9000"));
    assert_eq!(c.header(":scheme"), Some("http"));
    assert_eq!(c.header("content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(c.header("accept"), Some("application/json"));
    let basic = format!("Basic {}", STANDARD.encode("gw:s3cret"));
    assert_eq!(c.header("authorization"), Some(basic.as_str()));
    assert_eq!(c.timeout_ms, TIMEOUT_MS);
    assert_eq!(
        form(&c.body),
        vec![
            ("token".to_string(), OPAQUE.to_string()),
            ("token_type_hint".to_string(), "access_token".to_string())
        ]
    );
}

#[test]
fn client_secret_post_and_private_key_jwt() {
    let mut post = intro();
    post["clientAuthMethod"] = "client_secret_post".into();
    let (mut f, mut m) = (config_with(post, &[]), Mock::new());
    request(&mut f, &mut m, 2, Some(OPAQUE));
    let c = &m.callouts[0];
    assert_eq!(c.header("authorization"), None);
    let fields = form(&c.body);
    assert!(fields.contains(&("client_id".into(), "gw".into())));
    assert!(fields.contains(&("client_secret".into(), "s3cret".into())));

    let jwt = json!({"url": URL, "clientId": "gw", "clientAssertionKeyEnv": "INTRO_KEY"});
    let (mut f, mut m) = (config_with(jwt, &[]), Mock::new());
    request(&mut f, &mut m, 2, Some(OPAQUE));
    let c = &m.callouts[0];
    assert_eq!(c.header("authorization"), None);
    let fields = form(&c.body);
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("client_id").as_deref(), Some("gw"));
    assert_eq!(
        get("client_assertion_type").as_deref(),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    let assertion = get("client_assertion").unwrap();
    let payload = assertion.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], URL);
    assert_eq!(claims["iss"], "gw");
}

#[test]
fn an_active_token_passes_with_claim_headers_and_is_then_served_from_the_cache() {
    let (mut f, mut m) = (filter(), Mock::new());
    let a = answer(&m, json!({}));
    introspected(&mut f, &mut m, 2, OPAQUE, &a);
    assert!(m.stream(2).resumed);
    assert_eq!(header(&m, 2, "x-sub").as_deref(), Some("alice"));
    assert_eq!(header(&m, 2, "x-email").as_deref(), Some("alice@example.com"));
    assert_eq!(
        authorization(&m, 2).as_deref(),
        Some(format!("Bearer {OPAQUE}").as_str())
    );
    for id in 3..10 {
        assert_eq!(request(&mut f, &mut m, id, Some(OPAQUE)), Action::Continue);
    }
    assert_eq!(m.callouts.len(), 1, "N requests, one introspection");
    // Another worker reads the answer from shared data.
    let mut other = Mock::with_shared(m.shared.clone());
    let mut g = filter();
    assert_eq!(request(&mut g, &mut other, 2, Some(OPAQUE)), Action::Continue);
    assert!(other.callouts.is_empty());
    assert_eq!(header(&other, 2, "x-sub").as_deref(), Some("alice"));
    assert!(m.shared.borrow().keys().all(|k| k.starts_with("tef:tef:i")));
    m.enter(ROOT);
    f.on_tick(&mut m);
    assert_eq!(m.metric("token_exchange_filter.introspections.ok"), 1);
    assert_eq!(m.metric("token_exchange_filter.introspection_cache.hit"), 7);
    assert_eq!(m.metric("token_exchange_filter.introspections.failed"), 0);
}

#[test]
fn a_client_acting_for_itself_is_its_client_id() {
    let (mut f, mut m) = (filter(), Mock::new());
    let mut a: Value = serde_json::from_slice(&answer(&m, json!({})).body).unwrap();
    a.as_object_mut().unwrap().remove("sub");
    introspected(&mut f, &mut m, 2, OPAQUE, &ok(&a.to_string()));
    assert!(m.stream(2).resumed);
    assert_eq!(header(&m, 2, "x-sub"), None, "claim headers read the answer as it is");
    a.as_object_mut().unwrap().remove("client_id");
    let (mut f, mut m) = (filter(), Mock::new());
    introspected(&mut f, &mut m, 2, OPAQUE, &ok(&a.to_string()));
    assert_eq!(m.sent(2).unwrap().status, 401);
}

#[test]
fn refusals_are_cached_briefly_so_bad_tokens_cannot_hammer_the_endpoint() {
    let cases = [
        (ok(r#"{"active": false}"#), "token not active"),
        (
            answer(&Mock::new(), json!({"aud": "someone-else"})),
            "audience not accepted",
        ),
        (
            answer(&Mock::new(), json!({"iss": "https://evil.example"})),
            "issuer not accepted",
        ),
        (answer(&Mock::new(), json!({"exp": 1_000_000})), "token expired"),
    ];
    for (resp, why) in cases {
        let (mut f, mut m) = (filter(), Mock::new());
        introspected(&mut f, &mut m, 2, OPAQUE, &resp);
        let s = m.sent(2).unwrap();
        assert_eq!(s.status, 401, "{why}");
        assert!(s.header("www-authenticate").unwrap().contains(why), "{why}: {s:?}");
        request(&mut f, &mut m, 3, Some(OPAQUE));
        assert_eq!(m.sent(3).unwrap().status, 401);
        let mut other = Mock::with_shared(m.shared.clone());
        request(&mut filter(), &mut other, 3, Some(OPAQUE));
        assert_eq!(other.sent(3).unwrap().status, 401, "{why}: negative entry shared");
        assert!(other.callouts.is_empty());
        assert_eq!(m.callouts.len(), 1, "{why}: the refusal is cached");
        m.now_ms += NEGATIVE_MS;
        assert_eq!(request(&mut f, &mut m, 4, Some(OPAQUE)), Action::Pause);
        assert_eq!(m.callouts.len(), 2, "{why}: asked again after the negative lifetime");
    }
}

#[test]
fn scopes_come_from_the_answer() {
    let (mut f, mut m) = (filter(), Mock::new());
    let a = answer(&m, json!({"scope": "openid profile"}));
    introspected(&mut f, &mut m, 2, OPAQUE, &a);
    assert_eq!(m.sent(2).unwrap().status, 403);
}

#[test]
fn require_audience_refuses_an_answer_without_aud() {
    let mut i = intro();
    i["requireAudience"] = true.into();
    let (mut f, mut m) = (config_with(i, &[]), Mock::new());
    let mut a: Value = serde_json::from_slice(&answer(&m, json!({})).body).unwrap();
    a.as_object_mut().unwrap().remove("aud");
    introspected(&mut f, &mut m, 2, OPAQUE, &ok(&a.to_string()));
    assert_eq!(m.sent(2).unwrap().status, 401);
    let (mut f, mut m) = (filter(), Mock::new());
    introspected(&mut f, &mut m, 2, OPAQUE, &ok(&a.to_string()));
    assert!(m.stream(2).resumed, "without requireAudience, aud may be absent");
}

#[test]
fn cached_until_the_sooner_of_exp_and_cache_seconds() {
    let mut i = intro();
    i["cacheSeconds"] = 30.into();
    let (mut f, mut m) = (config_with(i, &[]), Mock::new());
    let a = answer(&m, json!({}));
    introspected(&mut f, &mut m, 2, OPAQUE, &a);
    m.now_ms += 29_000;
    assert_eq!(request(&mut f, &mut m, 3, Some(OPAQUE)), Action::Continue);
    m.now_ms += 1_000;
    assert_eq!(
        request(&mut f, &mut m, 4, Some(OPAQUE)),
        Action::Pause,
        "cacheSeconds passed"
    );

    let (mut f, mut m) = (filter(), Mock::new());
    let a = answer(&m, json!({"exp": m.now_ms / 1000 + 5}));
    introspected(&mut f, &mut m, 2, OPAQUE, &a);
    m.now_ms += 4_000;
    assert_eq!(request(&mut f, &mut m, 3, Some(OPAQUE)), Action::Continue);
    m.now_ms += 1_000;
    assert_eq!(request(&mut f, &mut m, 4, Some(OPAQUE)), Action::Pause, "exp passed");
}

#[test]
fn a_changed_config_finds_nothing_an_old_one_cached() {
    let (mut f, mut m) = (filter(), Mock::new());
    let a = answer(&m, json!({}));
    introspected(&mut f, &mut m, 2, OPAQUE, &a);
    let changed = [
        ("cacheSeconds", json!(30)),
        ("requireAudience", json!(true)),
        ("clientAuthMethod", json!("client_secret_post")),
        ("url", json!("http://127.0.0.1:9001/introspect")),
    ];
    for (key, value) in changed {
        let mut i = intro();
        i[key] = value;
        let mut other = Mock::with_shared(m.shared.clone());
        assert_eq!(
            request(&mut config_with(i, &[]), &mut other, 2, Some(OPAQUE)),
            Action::Pause,
            "{key}"
        );
    }
    let mut same = Mock::with_shared(m.shared.clone());
    assert_eq!(request(&mut filter(), &mut same, 2, Some(OPAQUE)), Action::Continue);
}

#[test]
fn junk_tokens_cannot_grow_shared_data() {
    let (mut f, mut m) = (filter(), Mock::new());
    for i in 0..200 {
        let t = format!("junk{i}");
        introspected(&mut f, &mut m, 2 + i, &t, &ok(r#"{"active": false}"#));
    }
    assert_eq!(m.callouts.len(), 200);
    let keys = m.shared.borrow().len();
    assert!(keys <= 10, "cache.maxEntries bounds the slots: {keys}");
}

#[test]
fn concurrent_requests_with_one_token_make_one_callout() {
    let (mut f, mut m) = (filter(), Mock::new());
    for id in 2..22 {
        assert_eq!(request(&mut f, &mut m, id, Some(OPAQUE)), Action::Pause);
    }
    assert_eq!(m.callouts.len(), 1);
    let c = m.callouts[0].clone();
    let a = answer(&m, json!({}));
    m.enter(2);
    f.on_callout(&mut m, c.token, &a);
    for id in 2..22 {
        assert!(m.stream(id).resumed, "{id}");
        assert_eq!(header(&m, id, "x-sub").as_deref(), Some("alice"));
    }
}

#[test]
fn endpoint_faults_give_503_and_are_not_cached() {
    let faults = [
        ok_status(500, "oops"),
        ok_status(401, r#"{"error":"invalid_client"}"#),
        CalloutResponse::default(),
        ok("<html>"),
        ok(r#"{"active": "yes"}"#),
        ok(r#"{"sub": "alice"}"#),
    ];
    for resp in faults {
        let (mut f, mut m) = (filter(), Mock::new());
        introspected(&mut f, &mut m, 2, OPAQUE, &resp);
        let s = m.sent(2).unwrap();
        assert_eq!(s.status, 503, "{resp:?}");
        assert!(s.body.contains("token introspection unavailable"));
        request(&mut f, &mut m, 3, Some(OPAQUE));
        assert_eq!(m.callouts.len(), 2, "a fault is not cached");
        m.enter(ROOT);
        f.on_tick(&mut m);
        assert_eq!(m.metric("token_exchange_filter.introspections.failed"), 1);
    }
    let (mut f, mut m) = (filter(), Mock::new());
    m.refuse_dispatch = true;
    assert_eq!(request(&mut f, &mut m, 2, Some(OPAQUE)), Action::Pause);
    assert_eq!(m.sent(2).unwrap().status, 503);
}

#[test]
fn a_callback_that_never_comes_gives_503_after_the_timeout() {
    let (mut f, mut m) = (filter(), Mock::new());
    request(&mut f, &mut m, 2, Some(OPAQUE));
    request(&mut f, &mut m, 3, Some(OPAQUE));
    m.enter(ROOT);
    m.now_ms += TIMEOUT_MS;
    f.on_tick(&mut m);
    assert!(m.sent(2).is_none(), "still within the callout's time");
    m.now_ms += 3_000;
    f.on_tick(&mut m);
    assert_eq!(m.sent(2).unwrap().status, 503);
    assert_eq!(m.sent(3).unwrap().status, 503);
}

#[test]
fn a_flight_whose_owner_left_is_restarted_for_the_others() {
    let (mut f, mut m) = (filter(), Mock::new());
    request(&mut f, &mut m, 2, Some(OPAQUE));
    request(&mut f, &mut m, 3, Some(OPAQUE));
    m.enter(2);
    f.on_done(&mut m, 2);
    m.streams.remove(&2);
    m.enter(ROOT);
    f.on_tick(&mut m);
    let asked: Vec<_> = m
        .callouts
        .iter()
        .filter(|c| c.header(":method") == Some("POST"))
        .cloned()
        .collect();
    assert_eq!(asked.len(), 2, "asked again from the root context");
    let c = asked[1].clone();
    assert_eq!(c.owner, ROOT);
    let a = answer(&m, json!({}));
    f.on_callout(&mut m, c.token, &a);
    assert!(m.stream(3).resumed);
}

#[test]
fn a_jwt_still_goes_through_the_keys_on_the_same_route() {
    let (mut f, mut m) = (filter(), Mock::new());
    warm(&mut f, &mut m);
    let before = m.callouts.len();
    assert_eq!(request(&mut f, &mut m, 2, Some(&good())), Action::Continue);
    assert_eq!(m.callouts.len(), before, "no introspection for a JWT");
    assert_eq!(request(&mut f, &mut m, 3, Some(OPAQUE)), Action::Pause);
    assert_eq!(
        m.callouts.last().unwrap().header(":path"),
        Some("/mcp/token/introspection")
    );
}

#[test]
fn without_introspection_an_opaque_token_is_refused_as_before() {
    let (mut f, mut m) = (Filter::new(&super::config(), "tef").unwrap(), Mock::new());
    warm(&mut f, &mut m);
    let before = m.callouts.len();
    request(&mut f, &mut m, 2, Some(OPAQUE));
    assert_eq!(m.sent(2).unwrap().status, 401);
    assert_eq!(m.callouts.len(), before);
}

#[test]
fn the_exchange_takes_the_opaque_token_as_its_subject() {
    let te = json!({"tokenUrl": "http://127.0.0.1:9002/token", "clientId": "gw", "clientSecretEnv": "IDP_SECRET",
        "audience": "backend"});
    let (mut f, mut m) = (config_with(intro(), &[("tokenExchange", te)]), Mock::new());
    let a = answer(&m, json!({}));
    introspected(&mut f, &mut m, 2, OPAQUE, &a);
    let c = m.callouts.last().unwrap().clone();
    assert_eq!(c.header(":path"), Some("/token"));
    let fields = form(&c.body);
    assert!(fields.contains(&("subject_token".into(), OPAQUE.into())));
    assert!(fields.contains(&(
        "subject_token_type".into(),
        "urn:ietf:params:oauth:token-type:access_token".into()
    )));
    m.enter(2);
    let exchanged = ok(
        r#"{"access_token": "backend-token", "token_type": "Bearer", "expires_in": 300,
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}"#,
    );
    f.on_callout(&mut m, c.token, &exchanged);
    assert!(m.stream(2).resumed);
    assert_eq!(authorization(&m, 2).as_deref(), Some("Bearer backend-token"));
}

#[test]
fn each_resource_has_its_own_answers() {
    let mut v = config_json();
    v["oidc"]["introspection"] = intro();
    v["rules"] = json!([{"match": {"pathPrefix": "/other"}, "oidc": {"audience": "other"}}]);
    let (mut f, mut m) = (filter_with_env(&v, SECRETS), Mock::new());
    let a = answer(&m, json!({"aud": ["mcpserver", "other"]}));
    introspected(&mut f, &mut m, 2, OPAQUE, &a);
    assert!(m.stream(2).resumed);
    assert_eq!(
        request_at(&mut f, &mut m, 3, "h", "/other", Some(OPAQUE)),
        Action::Pause,
        "another audience: asked again"
    );
    assert_eq!(m.callouts.len(), 2);
}
