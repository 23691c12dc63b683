//! Discovery as the filter meets it: requests wait through the metadata and
//! JWKS callouts, and anything short of a matching document fails closed.

use super::*;
use crate::host::mock::{ok, Callout, Mock, Shared, ROOT};
use crate::host::Plugin;
use crate::request::{Action, Filter};
use crate::support::logsafe::{excerpt, MAX_EXCERPT};
use crate::testkeys::{claims, jwks, rsa, rsa_jwk, RSA1};
use jwt_simple::prelude::*;
use serde_json::json;

const ISS: &str = "http://127.0.0.1:9000/mcp";
const OPENID: &str = "/mcp/.well-known/openid-configuration";
const OAUTH: &str = "/.well-known/oauth-authorization-server/mcp";
const CLUSTER: &str = "outbound|9000||127.0.0.1";

fn filter_with(oidc: serde_json::Value) -> Filter {
    let mut v = json!({"oidc": {"issuer": ISS, "audience": "mcpserver"}});
    for (k, val) in oidc.as_object().unwrap() {
        v["oidc"][k] = val.clone();
    }
    Filter::new(&plugin_config::parse(v.to_string().as_bytes()).unwrap(), "tef").unwrap()
}

fn filter() -> Filter {
    filter_with(json!({}))
}

fn good() -> String {
    rsa(RSA1, "k1").sign(claims(ISS, "mcpserver", "")).unwrap()
}

fn keys() -> String {
    jwks(&[rsa_jwk("k1", Some("RS256"))])
}

fn metadata(issuer: &str, jwks_uri: &str) -> CalloutResponse {
    ok(&json!({"issuer": issuer, "jwks_uri": jwks_uri, "token_endpoint": "x"}).to_string())
}

fn status(code: u16) -> CalloutResponse {
    CalloutResponse {
        headers: vec![(":status".into(), code.to_string())],
        ..Default::default()
    }
}

fn request(f: &mut Filter, m: &mut Mock, id: u32) -> Action {
    let auth = format!("Bearer {}", good());
    m.open(id, &[(":method", "GET"), (":path", "/mcp"), ("authorization", &auth)]);
    f.on_request_headers(m, false)
}

/// Answers the last callout, delivered to context `id`.
fn answer(f: &mut Filter, m: &mut Mock, id: u32, resp: &CalloutResponse) -> Callout {
    let c = m.callouts.last().unwrap().clone();
    m.enter(id);
    f.on_callout(m, c.token, resp);
    c
}

fn waiting(m: &Mock, id: u32) -> bool {
    m.stream(id).sent.is_none() && !m.stream(id).resumed
}

fn assert_get(c: &Callout, cluster: &str, authority: &str, scheme: &str, path: &str) {
    assert_eq!(c.cluster, cluster);
    assert_eq!(c.header(":method"), Some("GET"));
    assert_eq!(c.header(":path"), Some(path));
    assert_eq!(c.header(":authority"), Some(authority));
    assert_eq!(c.header(":scheme"), Some(scheme));
    assert!(c.timeout_ms > 0);
}

#[test]
fn request_waits_through_discovery_and_jwks_then_passes() {
    let (mut f, mut m) = (filter(), Mock::new());
    assert_eq!(request(&mut f, &mut m, 2), Action::Pause);
    assert_eq!(request(&mut f, &mut m, 3), Action::Pause);
    assert_eq!(m.callouts.len(), 1, "one discovery for every waiter");
    assert_get(&m.callouts[0], CLUSTER, "127.0.0.1:9000", "http", OPENID);
    assert_eq!(m.callouts[0].owner, 2);

    answer(&mut f, &mut m, 2, &metadata(ISS, "http://127.0.0.1:9000/mcp/jwks"));
    assert_eq!(m.callouts.len(), 2, "the JWKS is asked for at once");
    assert_get(&m.callouts[1], CLUSTER, "127.0.0.1:9000", "http", "/mcp/jwks");
    assert_eq!(
        m.callouts[1].header("accept"),
        Some("application/json, application/jwk-set+json")
    );
    assert_eq!(m.callouts[1].owner, 2, "made as the context the answer came to");
    assert!(waiting(&m, 2) && waiting(&m, 3), "still waiting for the keys");
    assert_eq!(m.current, 2);

    answer(&mut f, &mut m, 2, &ok(&keys()));
    assert!(m.stream(2).resumed && m.stream(3).resumed);

    // The JWKS URL is kept: the scheduled refresh goes straight to it.
    m.now_ms += 601_000;
    m.enter(ROOT);
    f.on_tick(&mut m);
    assert_eq!(m.callouts.len(), 3);
    assert_get(&m.callouts[2], CLUSTER, "127.0.0.1:9000", "http", "/mcp/jwks");
}

#[test]
fn issuer_mismatch_fails_closed_without_fetching_keys() {
    for doc in [
        metadata("http://127.0.0.1:9000/mcp/", "http://127.0.0.1:9000/mcp/jwks"),
        metadata("http://127.0.0.1:9000/other", "http://127.0.0.1:9000/mcp/jwks"),
        ok(&json!({"jwks_uri": "http://127.0.0.1:9000/mcp/jwks"}).to_string()),
        ok(&json!({"issuer": 5, "jwks_uri": "http://127.0.0.1:9000/mcp/jwks"}).to_string()),
    ] {
        let (mut f, mut m) = (filter(), Mock::new());
        request(&mut f, &mut m, 2);
        answer(&mut f, &mut m, 2, &doc);
        assert_eq!(m.callouts.len(), 1, "no JWKS fetch, no fallback: {doc:?}");
        let s = m.sent(2).unwrap();
        assert_eq!(s.status, 503);
        assert!(s.body.contains("signing keys unavailable"), "{}", s.body);
        request(&mut f, &mut m, 3);
        assert_eq!(m.sent(3).unwrap().status, 503);
        assert_eq!(m.callouts.len(), 1, "backing off");
    }
}

#[test]
fn rfc8414_location_is_tried_when_the_openid_one_is_missing() {
    for missing in [
        status(404),
        ok("<html>not here</html>"),
        ok(r#"{"issuer": "x"}"#),
        ok("[]"),
    ] {
        let (mut f, mut m) = (filter(), Mock::new());
        request(&mut f, &mut m, 2);
        answer(&mut f, &mut m, 2, &missing);
        assert_eq!(m.callouts.len(), 2, "{missing:?}");
        assert_get(&m.callouts[1], CLUSTER, "127.0.0.1:9000", "http", OAUTH);
        assert!(waiting(&m, 2));
        answer(&mut f, &mut m, 2, &metadata(ISS, "http://127.0.0.1:9000/keys"));
        assert_get(&m.callouts[2], CLUSTER, "127.0.0.1:9000", "http", "/keys");
        answer(&mut f, &mut m, 2, &ok(&keys()));
        assert!(m.stream(2).resumed);
    }
}

#[test]
fn no_document_at_either_location_is_a_503() {
    let (mut f, mut m) = (filter(), Mock::new());
    request(&mut f, &mut m, 2);
    answer(&mut f, &mut m, 2, &status(404));
    answer(&mut f, &mut m, 2, &status(404));
    assert_eq!(m.callouts.len(), 2);
    assert_eq!(m.sent(2).unwrap().status, 503);
}

#[test]
fn other_failures_do_not_fall_back() {
    for resp in [
        CalloutResponse::default(),
        status(500),
        CalloutResponse {
            truncated: true,
            ..metadata(ISS, "http://127.0.0.1:9000/mcp/jwks")
        },
    ] {
        let (mut f, mut m) = (filter(), Mock::new());
        request(&mut f, &mut m, 2);
        answer(&mut f, &mut m, 2, &resp);
        assert_eq!(m.callouts.len(), 1, "{resp:?}");
        assert_eq!(m.sent(2).unwrap().status, 503);
    }
}

#[test]
fn jwks_uri_on_another_host_goes_to_that_hosts_default_cluster() {
    let (mut f, mut m) = (filter(), Mock::new());
    request(&mut f, &mut m, 2);
    answer(
        &mut f,
        &mut m,
        2,
        &metadata(ISS, "https://keys.example.net/v1/keys?x=1"),
    );
    assert_get(
        &m.callouts[1],
        "outbound|443||keys.example.net",
        "keys.example.net",
        "https",
        "/v1/keys?x=1",
    );
    answer(&mut f, &mut m, 2, &ok(&keys()));
    assert!(m.stream(2).resumed);
}

#[test]
fn jwks_cluster_serves_discovery_and_keys() {
    let (mut f, mut m) = (filter_with(json!({"jwksCluster": "idp"})), Mock::new());
    request(&mut f, &mut m, 2);
    assert_get(&m.callouts[0], "idp", "127.0.0.1:9000", "http", OPENID);
    answer(&mut f, &mut m, 2, &status(404));
    assert_get(&m.callouts[1], "idp", "127.0.0.1:9000", "http", OAUTH);
    answer(&mut f, &mut m, 2, &metadata(ISS, "https://keys.example.net/k"));
    assert_get(&m.callouts[2], "idp", "keys.example.net", "https", "/k");
}

#[test]
fn unusable_jwks_uri_fails_closed() {
    for uri in [
        "http://keys.example.net/k",
        "/jwks",
        "ftp://keys.example.net/k",
        "https://u:p@keys.example.net/k",
        "https://keys.example.net/k#f",
        "https://keys.example.net/\u{202e}k",
        "https://keys.example.net/k k",
    ] {
        let (mut f, mut m) = (filter(), Mock::new());
        request(&mut f, &mut m, 2);
        answer(&mut f, &mut m, 2, &metadata(ISS, uri));
        assert_eq!(m.callouts.len(), 1, "{uri}");
        assert_eq!(m.sent(2).unwrap().status, 503, "{uri}");
    }
    // insecureAllowHttp lets a plain-http jwks_uri through, as it does a configured one.
    let (mut f, mut m) = (filter_with(json!({"insecureAllowHttp": true})), Mock::new());
    request(&mut f, &mut m, 2);
    answer(&mut f, &mut m, 2, &metadata(ISS, "http://keys.example.net/k"));
    assert_get(
        &m.callouts[1],
        "outbound|80||keys.example.net",
        "keys.example.net",
        "http",
        "/k",
    );
}

#[test]
fn failed_discovery_is_a_503_then_retried_from_the_start_after_backoff() {
    let (mut f, mut m) = (filter(), Mock::new());
    request(&mut f, &mut m, 2);
    answer(&mut f, &mut m, 2, &status(404));
    answer(&mut f, &mut m, 2, &status(503));
    let s = m.sent(2).unwrap();
    assert_eq!(s.status, 503);
    assert_eq!(s.header("retry-after"), Some("5"));
    // Backing off: answered at once, nothing asked.
    request(&mut f, &mut m, 3);
    assert_eq!(m.sent(3).unwrap().status, 503);
    assert_eq!(m.callouts.len(), 2);
    m.enter(ROOT);
    f.on_tick(&mut m);
    assert_eq!(m.callouts.len(), 2, "not before the back-off ends");
    // After it, a tick asks again, from the OpenID location.
    m.now_ms += 1_500;
    f.on_tick(&mut m);
    assert_eq!(m.callouts.len(), 3);
    assert_get(&m.callouts[2], CLUSTER, "127.0.0.1:9000", "http", OPENID);
    assert_eq!(m.callouts[2].owner, ROOT);
    answer(&mut f, &mut m, ROOT, &metadata(ISS, "http://127.0.0.1:9000/mcp/jwks"));
    answer(&mut f, &mut m, ROOT, &ok(&keys()));
    assert_eq!(request(&mut f, &mut m, 4), Action::Continue);
    // The back-off doubles with each failure in a row.
    let (mut f, mut m) = (filter(), Mock::new());
    request(&mut f, &mut m, 2);
    answer(&mut f, &mut m, 2, &status(500));
    m.now_ms += 1_001;
    m.enter(ROOT);
    f.on_tick(&mut m);
    answer(&mut f, &mut m, ROOT, &status(500));
    assert_eq!(m.callouts.len(), 2);
    m.now_ms += 1_001;
    f.on_tick(&mut m);
    assert_eq!(m.callouts.len(), 2, "the second back-off is 2 s");
    m.now_ms += 1_000;
    f.on_tick(&mut m);
    assert_eq!(m.callouts.len(), 3);
}

#[test]
fn refused_discovery_callout_is_a_503() {
    let (mut f, mut m) = (filter(), Mock::new());
    m.refuse_dispatch = true;
    request(&mut f, &mut m, 2);
    assert_eq!(m.sent(2).unwrap().status, 503);
    // Refused after the metadata came: the waiter is answered, not stranded.
    let (mut f, mut m) = (filter(), Mock::new());
    request(&mut f, &mut m, 2);
    m.refuse_dispatch = true;
    answer(&mut f, &mut m, 2, &metadata(ISS, "http://127.0.0.1:9000/mcp/jwks"));
    assert_eq!(m.sent(2).unwrap().status, 503);
}

#[test]
fn discovery_owner_leaving_is_restarted_from_the_root() {
    let (mut f, mut m) = (filter(), Mock::new());
    request(&mut f, &mut m, 2);
    request(&mut f, &mut m, 3);
    answer(&mut f, &mut m, 2, &status(404));
    m.streams.remove(&2);
    m.enter(ROOT);
    f.on_done(&mut m, 2);
    f.on_tick(&mut m);
    assert_eq!(m.callouts.len(), 3);
    assert_eq!(m.callouts[2].owner, ROOT);
    assert_eq!(m.callouts[2].header(":path"), Some(OAUTH), "going on where it was");
    answer(&mut f, &mut m, ROOT, &metadata(ISS, "http://127.0.0.1:9000/mcp/jwks"));
    answer(&mut f, &mut m, ROOT, &ok(&keys()));
    assert!(m.stream(3).resumed);
}

#[test]
fn other_workers_use_the_published_keys_without_discovering() {
    let shared = Shared::default();
    let (mut f1, mut m1) = (filter(), Mock::with_shared(shared.clone()));
    let (mut f2, mut m2) = (filter(), Mock::with_shared(shared));
    request(&mut f1, &mut m1, 2);
    assert_eq!(request(&mut f2, &mut m2, 2), Action::Pause);
    answer(&mut f1, &mut m1, 2, &metadata(ISS, "http://127.0.0.1:9000/mcp/jwks"));
    answer(&mut f1, &mut m1, 2, &ok(&keys()));
    m2.enter(ROOT);
    f2.on_tick(&mut m2);
    assert!(m2.stream(2).resumed);
    assert!(m2.callouts.is_empty());
}

#[test]
fn excerpts_are_escaped_and_bounded() {
    assert_eq!(excerpt("https://i"), "https://i");
    assert_eq!(excerpt("a\"b\\c\nd\u{202e}é"), r#"a\"b\\c\nd\u{202e}\u{e9}"#);
    let long = "x".repeat(500);
    assert_eq!(excerpt(&long), format!("{}...", "x".repeat(MAX_EXCERPT)));
    assert_eq!(cut("ééé", 2), "éé");
    assert_eq!(cut("ab", 5), "ab");
}

#[test]
fn discovery_steps_are_answers_to_the_key_fetch() {
    use crate::keys::cache::{Answer, Fetch, JwksCache};
    let config = json!({"oidc": {"issuer": ISS, "audience": "mcpserver"}}).to_string();
    let config = plugin_config::parse(config.as_bytes()).unwrap();
    let (mut cache, mut m) = (JwksCache::new(config.oidc.as_ref().unwrap(), "tef:jwks"), Mock::new());
    assert_eq!(cache.fetch(&mut m), Fetch::Pending);
    let step = m.callouts.last().unwrap().token;
    assert_eq!(cache.on_response(&mut m, step + 100, &ok(&keys())), Answer::NotOurs);
    let meta = metadata(ISS, "http://127.0.0.1:9000/mcp/jwks");
    assert_eq!(
        cache.on_response(&mut m, step, &meta),
        Answer::Continuing,
        "the metadata answer is the fetch's own, not an unknown callout"
    );
    let jwks = m.callouts.last().unwrap().token;
    assert_eq!(cache.on_response(&mut m, jwks, &ok(&keys())), Answer::Fetched);
}
