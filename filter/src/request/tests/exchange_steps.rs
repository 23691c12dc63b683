//! Exchanges of several callouts in one pause: id-jag's two steps, and the
//! filter's own actor token fetched once, kept, and shared by every
//! exchange that needs it.

use super::{
    authorization, client_leaves, config_json, filter_with_env, good, ok, ok_status, request, request_at,
    second_step_times_out, warm, ISS,
};
use crate::host::mock::{Mock, ROOT};
use crate::host::{CalloutResponse, Plugin};
use crate::request::Filter;
use crate::testkeys::{claims, rsa, RSA1};
use jwt_simple::prelude::*;
use serde_json::{json, Value};
use url::form_urlencoded;

const ID_JAG: &str = "eyJ0eXAiOiJvYXV0aC1pZC1qYWcrand0In0.eyJzdWIiOiJhbGljZSJ9.c2ln";
const AS_TOKEN: &str = "as.eyJzdWIiOiJhbGljZSJ9.sig";

fn filter_with(te: Value) -> Filter {
    let mut v = config_json();
    v["tokenExchange"] = te;
    v["cache"] = json!({"maxEntries": 100, "expirySkewSeconds": 30});
    filter_with_env(
        &v,
        &[("IDP_SECRET", "IDP_SECRET-value"), ("AS_SECRET", "AS_SECRET-value")],
    )
}

fn id_jag_filter() -> Filter {
    filter_with(json!({
        "provider": "id-jag", "tokenUrl": "http://127.0.0.1:9002/token",
        "clientId": "gw", "clientSecretEnv": "IDP_SECRET",
        "audience": "http://127.0.0.1:9003/", "scopes": ["todos.read"], "timeoutMs": 1000,
        "assertionGrant": {"tokenUrl": "http://127.0.0.1:9003/token", "clientId": "gw-at-as",
            "clientSecretEnv": "AS_SECRET", "scopes": ["todos.read"]}
    }))
}

fn actor_filter() -> Filter {
    filter_with(json!({
        "tokenUrl": "http://127.0.0.1:9002/token", "clientId": "gw", "clientSecretEnv": "IDP_SECRET",
        "audience": "backend", "timeoutMs": 1000,
        "actor": {"source": "clientCredentials", "scopes": ["agent"]}
    }))
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn field(body: &[u8], k: &str) -> Option<String> {
    form(body).into_iter().find(|(n, _)| n == k).map(|(_, v)| v)
}

fn id_jag_answer() -> CalloutResponse {
    ok(&json!({"access_token": ID_JAG, "token_type": "N_A", "expires_in": 300,
        "issued_token_type": "urn:ietf:params:oauth:token-type:id-jag"})
    .to_string())
}

fn token_answer(token: &str, expires_in: u64) -> CalloutResponse {
    ok(
        &json!({"access_token": token, "token_type": "Bearer", "expires_in": expires_in,
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})
        .to_string(),
    )
}

fn user(name: &str) -> String {
    rsa(RSA1, "k1")
        .sign(claims(ISS, "mcpserver", "mcp:tools:call").with_subject(name))
        .unwrap()
}

#[test]
fn id_jag_two_steps_in_one_pause_and_only_the_access_token_is_cached() {
    let (mut f, mut m) = (id_jag_filter(), Mock::new());
    warm(&mut f, &mut m);
    let t = good();
    request(&mut f, &mut m, 2, Some(&t));
    request(&mut f, &mut m, 3, Some(&t));
    let step1 = m.callouts.last().unwrap().clone();
    assert_eq!(step1.cluster, "outbound|9002||127.0.0.1");
    assert_eq!(field(&step1.body, "subject_token").as_deref(), Some(t.as_str()));
    m.enter(2);
    f.on_callout(&mut m, step1.token, &id_jag_answer());
    assert!(!m.stream(2).resumed && !m.stream(3).resumed, "paused for step 2");
    let step2 = m.callouts.last().unwrap().clone();
    assert_eq!(step2.cluster, "outbound|9003||127.0.0.1");
    assert_eq!((step2.owner, step2.timeout_ms), (2, 1000));
    assert_eq!(step2.header(":path"), Some("/token"));
    assert_eq!(field(&step2.body, "assertion").as_deref(), Some(ID_JAG));
    assert_eq!(
        field(&step2.body, "subject_token"),
        None,
        "the caller's token stays at the IdP"
    );
    f.on_callout(&mut m, step2.token, &token_answer(AS_TOKEN, 600));
    for id in [2, 3] {
        assert!(m.stream(id).resumed);
        assert_eq!(authorization(&m, id), Some(format!("Bearer {AS_TOKEN}")));
    }
    let n = m.callouts.len();
    request(&mut f, &mut m, 4, Some(&t));
    assert_eq!(
        (m.callouts.len(), authorization(&m, 4)),
        (n, Some(format!("Bearer {AS_TOKEN}")))
    );
    let shared = m.shared.borrow();
    assert!(
        !shared
            .values()
            .any(|(v, _)| String::from_utf8_lossy(v).contains("eyJ0eXAiOiJvYXV0aC1pZC1qYWcr")),
        "the ID-JAG is never cached"
    );
}

#[test]
fn id_jag_failures_in_either_step_map_and_release_every_waiter() {
    let failed = |status: u16, error: &str| ok_status(status, &json!({"error": error}).to_string());
    // (step 1 answer, step 2 answer, status)
    let cases: Vec<(CalloutResponse, Option<CalloutResponse>, u32)> = vec![
        (failed(400, "invalid_grant"), None, 401),
        (failed(401, "invalid_client"), None, 502),
        (token_answer(ID_JAG, 300), None, 502), // an access token where an ID-JAG was asked for
        (id_jag_answer(), Some(failed(400, "invalid_grant")), 401),
        (id_jag_answer(), Some(failed(400, "invalid_scope")), 403),
        (id_jag_answer(), Some(failed(401, "invalid_client")), 502),
        (id_jag_answer(), Some(ok_status(500, "{}")), 503),
        (id_jag_answer(), Some(CalloutResponse::default()), 503),
    ];
    for (one, two, status) in cases {
        let (mut f, mut m) = (id_jag_filter(), Mock::new());
        warm(&mut f, &mut m);
        let t = good();
        request(&mut f, &mut m, 2, Some(&t));
        request(&mut f, &mut m, 3, Some(&t));
        let step1 = m.callouts.last().unwrap().clone();
        m.enter(2);
        f.on_callout(&mut m, step1.token, &one);
        if let Some(two) = &two {
            let step2 = m.callouts.last().unwrap().clone();
            assert_ne!(step2.token, step1.token);
            f.on_callout(&mut m, step2.token, two);
        }
        for id in [2, 3] {
            assert_eq!(m.sent(id).map(|s| s.status), Some(status), "{one:?} {two:?}");
            assert!(!m.stream(id).resumed);
        }
    }
    second_step_times_out(id_jag_filter(), &id_jag_answer());
}

#[test]
fn one_actor_token_fetch_serves_every_exchange_and_is_kept() {
    let (mut f, mut m) = (actor_filter(), Mock::new());
    warm(&mut f, &mut m);
    let n = m.callouts.len();
    let (alice, bob) = (user("alice"), user("bob"));
    request(&mut f, &mut m, 2, Some(&alice));
    request(&mut f, &mut m, 3, Some(&bob));
    request(&mut f, &mut m, 4, Some(&alice));
    assert_eq!(m.callouts.len(), n + 1, "one actor token fetch, no exchange yet");
    let fetch = m.callouts.last().unwrap().clone();
    assert_eq!((fetch.cluster.as_str(), fetch.owner), ("outbound|9002||127.0.0.1", 2));
    assert_eq!(field(&fetch.body, "grant_type").as_deref(), Some("client_credentials"));
    assert_eq!(field(&fetch.body, "scope").as_deref(), Some("agent"));
    assert!(fetch.header("authorization").unwrap().starts_with("Basic "));
    m.enter(3);
    f.on_callout(&mut m, fetch.token, &token_answer("own-actor-token", 300));
    let exchanges: Vec<_> = m.callouts[n + 1..].to_vec();
    assert_eq!(
        exchanges.len(),
        2,
        "alice's and bob's exchanges, sent as the fetch landed"
    );
    let mut subjects = Vec::new();
    for x in &exchanges {
        assert_eq!(x.owner, 3, "sent from the context the answer came to");
        assert_eq!(field(&x.body, "actor_token").as_deref(), Some("own-actor-token"));
        assert_eq!(
            field(&x.body, "actor_token_type").as_deref(),
            Some("urn:ietf:params:oauth:token-type:access_token")
        );
        subjects.push(field(&x.body, "subject_token").unwrap());
    }
    subjects.sort();
    let mut want = vec![alice.clone(), bob.clone()];
    want.sort();
    assert_eq!(subjects, want);
    for (x, token) in exchanges.iter().zip(["for-a", "for-b"]) {
        f.on_callout(&mut m, x.token, &token_answer(token, 300));
    }
    for id in [2, 3, 4] {
        assert!(m.stream(id).resumed, "{id}");
    }
    assert_eq!(authorization(&m, 2), authorization(&m, 4));
    // A third user, later: the kept actor token goes straight into the exchange.
    let n = m.callouts.len();
    request(&mut f, &mut m, 5, Some(&user("carol")));
    assert_eq!(m.callouts.len(), n + 1);
    let x = m.callouts.last().unwrap();
    assert_eq!(
        field(&x.body, "grant_type").as_deref(),
        Some("urn:ietf:params:oauth:grant-type:token-exchange")
    );
    assert_eq!(field(&x.body, "actor_token").as_deref(), Some("own-actor-token"));
}

/// Fetches the actor token for a first exchange, of `alice`'s token, and
/// lets it all land.
fn first_exchange(f: &mut Filter, m: &mut Mock, actor_expires_in: u64, alice: &str) {
    warm(f, m);
    request(f, m, 2, Some(alice));
    let fetch = m.callouts.last().unwrap().clone();
    m.enter(2);
    f.on_callout(m, fetch.token, &token_answer("actor-1", actor_expires_in));
    let x = m.callouts.last().unwrap().clone();
    f.on_callout(m, x.token, &token_answer("for-alice", 300));
    assert!(m.stream(2).resumed);
}

#[test]
fn the_actor_token_is_fetched_again_shortly_before_it_expires() {
    let (mut f, mut m) = (actor_filter(), Mock::new());
    first_exchange(&mut f, &mut m, 100, &user("alice"));
    // Kept until expires_in less cache.expirySkewSeconds (30 s): 70 s.
    m.now_ms += 69_000;
    let n = m.callouts.len();
    request(&mut f, &mut m, 3, Some(&user("bob")));
    assert_eq!(field(&m.callouts[n].body, "actor_token").as_deref(), Some("actor-1"));
    m.now_ms += 2_000;
    request(&mut f, &mut m, 4, Some(&user("carol")));
    assert_eq!(m.callouts.len(), n + 2);
    assert_eq!(
        field(&m.callouts[n + 1].body, "grant_type").as_deref(),
        Some("client_credentials")
    );
    // One whose answer gives no lifetime serves only the exchanges parked on it.
    let (mut f, mut m) = (actor_filter(), Mock::new());
    warm(&mut f, &mut m);
    request(&mut f, &mut m, 2, Some(&user("alice")));
    let fetch = m.callouts.last().unwrap().clone();
    m.enter(2);
    f.on_callout(
        &mut m,
        fetch.token,
        &ok(r#"{"access_token": "opaque-actor", "token_type": "Bearer"}"#),
    );
    assert_fetches_actor(&mut f, &mut m, 3, "bob");
}

/// A request for `name` starts with a fetch of the actor token.
fn assert_fetches_actor(f: &mut Filter, m: &mut Mock, id: u32, name: &str) {
    let n = m.callouts.len();
    request(f, m, id, Some(&user(name)));
    assert_eq!(
        field(&m.callouts[n].body, "grant_type").as_deref(),
        Some("client_credentials")
    );
}

#[test]
fn an_actor_token_failure_fails_every_parked_exchange() {
    for (answer, status) in [
        (ok_status(401, r#"{"error": "invalid_client"}"#), 502),
        (ok_status(400, r#"{"error": "invalid_scope"}"#), 502),
        (ok_status(503, "{}"), 503),
        (CalloutResponse::default(), 503),
    ] {
        let (mut f, mut m) = (actor_filter(), Mock::new());
        warm(&mut f, &mut m);
        request(&mut f, &mut m, 2, Some(&user("alice")));
        request(&mut f, &mut m, 3, Some(&user("bob")));
        let fetch = m.callouts.last().unwrap().clone();
        let n = m.callouts.len();
        m.enter(2);
        f.on_callout(&mut m, fetch.token, &answer);
        assert_eq!(m.callouts.len(), n, "no exchange without its actor token");
        for id in [2, 3] {
            assert_eq!(m.sent(id).map(|s| s.status), Some(status), "{answer:?}");
        }
    }
    // Never answered: both time out.
    let (mut f, mut m) = (actor_filter(), Mock::new());
    warm(&mut f, &mut m);
    request(&mut f, &mut m, 2, Some(&user("alice")));
    request(&mut f, &mut m, 3, Some(&user("bob")));
    m.now_ms += 3_500;
    m.enter(ROOT);
    f.on_tick(&mut m);
    for id in [2, 3] {
        assert_eq!(m.sent(id).map(|s| s.status), Some(504));
    }
}

#[test]
fn an_actor_token_fetch_whose_owner_left_is_made_again_from_the_root() {
    let (mut f, mut m) = (actor_filter(), Mock::new());
    warm(&mut f, &mut m);
    let bob = user("bob");
    request(&mut f, &mut m, 2, Some(&user("alice")));
    request(&mut f, &mut m, 3, Some(&bob));
    let n = m.callouts.len();
    client_leaves(&mut f, &mut m, 2);
    assert_eq!(m.callouts.len(), n + 1);
    let again = m.callouts.last().unwrap().clone();
    assert_eq!(again.owner, ROOT);
    assert_eq!(field(&again.body, "grant_type").as_deref(), Some("client_credentials"));
    f.on_callout(&mut m, again.token, &token_answer("actor-2", 300));
    let x = m.callouts.last().unwrap().clone();
    assert_eq!(field(&x.body, "subject_token"), Some(bob), "alice left");
    f.on_callout(&mut m, x.token, &token_answer("for-bob", 300));
    assert!(m.stream(3).resumed);
}

#[test]
fn an_exchange_refused_with_the_actor_token_drops_it() {
    let (mut f, mut m) = (actor_filter(), Mock::new());
    first_exchange(&mut f, &mut m, 3_600, &user("alice"));
    request(&mut f, &mut m, 3, Some(&user("bob")));
    let x = m.callouts.last().unwrap().clone();
    assert_eq!(field(&x.body, "actor_token").as_deref(), Some("actor-1"));
    f.on_callout(&mut m, x.token, &ok_status(400, r#"{"error": "invalid_grant"}"#));
    assert_eq!(m.sent(3).unwrap().status, 401);
    assert_fetches_actor(&mut f, &mut m, 4, "carol");
}

#[test]
fn the_actor_is_part_of_the_cache_key() {
    // Three targets in one config (one keyspace): the default, a rule with
    // the same exchange and actor, and a rule whose actor differs.
    let te = |scope: &str| {
        json!({"tokenUrl": "http://127.0.0.1:9002/token", "clientId": "gw", "clientSecretEnv": "IDP_SECRET",
            "audience": "backend", "timeoutMs": 1000,
            "actor": {"source": "clientCredentials", "scopes": [scope]}})
    };
    let mut v = config_json();
    v["tokenExchange"] = te("agent");
    v["rules"] = json!([
        {"match": {"pathPrefix": "/same/"}, "tokenExchange": te("agent")},
        {"match": {"pathPrefix": "/other/"}, "tokenExchange": te("another-agent")}
    ]);
    let mut f = filter_with_env(&v, &[("IDP_SECRET", "secret")]);
    let mut m = Mock::new();
    let alice = user("alice");
    first_exchange(&mut f, &mut m, 3_600, &alice);
    let n = m.callouts.len();
    request_at(&mut f, &mut m, 3, "h", "/same/x", Some(&alice));
    assert_eq!(
        (m.callouts.len(), authorization(&m, 3)),
        (n, Some("Bearer for-alice".into())),
        "a hit"
    );
    request_at(&mut f, &mut m, 4, "h", "/other/x", Some(&alice));
    assert_eq!(m.callouts.len(), n + 1, "a miss: its own actor token first");
    assert_eq!(field(&m.callouts[n].body, "scope").as_deref(), Some("another-agent"));
}
