//! The wire of `provider: id-jag` (both steps) and of actor tokens: every
//! form field and header of each callout, and how each step's answers map.

use super::{exchanger_with_keys, form, get, resp, stamp, NOW_MS};
use crate::exchange::{Exchanger, Failure, Next, Step};
use crate::host::CalloutResponse;
use crate::testkeys::RSA1;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use jwt_simple::prelude::*;
use serde_json::{json, Value};

const ID_JAG_URN: &str = "urn:ietf:params:oauth:token-type:id-jag";
const ACCESS_TOKEN_URN: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const THE_ID_JAG: &str = "eyJ0eXAiOiJvYXV0aC1pZC1qYWcrand0In0.eyJzdWIiOiJhbGljZSJ9.c2ln";

fn id_jag_section(grant: Value) -> Value {
    json!({
        "provider": "id-jag",
        "tokenUrl": "https://idp.example.com/oauth2/v1/token",
        "clientId": "gw", "clientSecretEnv": "SECRET",
        "audience": "https://as.example.com/",
        "resource": "https://api.example.com/mcp",
        "scopes": ["todos.read", "todos.write"],
        "timeoutMs": 1000,
        "assertionGrant": grant
    })
}

fn id_jag(grant: Value) -> Exchanger {
    exchanger_with_keys(id_jag_section(grant), "").unwrap()
}

fn grant_basic() -> Value {
    json!({"tokenUrl": "https://as.example.com/oauth/token", "clientId": "gw at as", "clientSecretEnv": "SECRET",
        "scopes": ["todos.read"], "resource": ["https://api.example.com/mcp", "https://api.example.com/b"]})
}

fn header<'a>(headers: &'a [(&'static str, String)], k: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str())
}

fn basic(id_enc: &str, secret_enc: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id_enc}:{secret_enc}")))
}

fn id_jag_answer() -> CalloutResponse {
    resp(
        200,
        json!({"access_token": THE_ID_JAG, "issued_token_type": ID_JAG_URN, "token_type": "N_A", "expires_in": 300}),
    )
}

/// Step 1's answer, and the step 2 call it leads to.
fn step_two(ex: &Exchanger, jti: &str) -> (Step, Vec<(&'static str, String)>, Vec<u8>, String) {
    match ex
        .answer(Step::Token, &id_jag_answer(), 10, "subj", &stamp(NOW_MS, jti))
        .unwrap()
    {
        Next::Then(c) => (c.step, c.headers, c.body, c.endpoint.cluster.clone()),
        Next::Done(_) => panic!("id-jag has a second step"),
    }
}

#[test]
fn id_jag_step_one_is_rfc8693_at_the_idp_for_an_id_jag() {
    let ex = id_jag(grant_basic());
    let call = ex.request("the.caller.token", None, &stamp(NOW_MS, "j")).unwrap();
    assert_eq!(call.step, Step::Token);
    assert_eq!(call.endpoint.cluster, "outbound|443||idp.example.com");
    let h = &call.headers;
    assert_eq!(header(h, ":method"), Some("POST"));
    assert_eq!(header(h, ":path"), Some("/oauth2/v1/token"));
    assert_eq!(header(h, ":authority"), Some("idp.example.com"));
    assert_eq!(header(h, ":scheme"), Some("https"));
    assert_eq!(header(h, "content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(header(h, "accept"), Some("application/json"));
    assert_eq!(header(h, "authorization"), Some(basic("gw", "s3cret").as_str()));
    assert_eq!(h.len(), 7, "{h:?}");
    let f = form(&call.body);
    assert_eq!(get(&f, "grant_type"), Some(TOKEN_EXCHANGE));
    assert_eq!(get(&f, "requested_token_type"), Some(ID_JAG_URN));
    assert_eq!(get(&f, "audience"), Some("https://as.example.com/"));
    assert_eq!(get(&f, "resource"), Some("https://api.example.com/mcp"));
    assert_eq!(get(&f, "scope"), Some("todos.read todos.write"));
    assert_eq!(get(&f, "subject_token"), Some("the.caller.token"));
    assert_eq!(get(&f, "subject_token_type"), Some(ACCESS_TOKEN_URN));
    assert_eq!(f.len(), 7, "nothing else: {f:?}");
}

#[test]
fn id_jag_step_two_presents_it_at_the_resource_as_with_its_own_client() {
    let ex = id_jag(grant_basic());
    let (step, h, body, cluster) = step_two(&ex, "j");
    assert_eq!(step, Step::Assertion);
    assert_eq!(cluster, "outbound|443||as.example.com");
    assert_eq!(header(&h, ":method"), Some("POST"));
    assert_eq!(header(&h, ":path"), Some("/oauth/token"));
    assert_eq!(header(&h, ":authority"), Some("as.example.com"));
    assert_eq!(header(&h, ":scheme"), Some("https"));
    assert_eq!(header(&h, "content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(header(&h, "accept"), Some("application/json"));
    // The resource AS's client, form-urlencoded before base64 (RFC 6749 §2.3.1).
    assert_eq!(header(&h, "authorization"), Some(basic("gw+at+as", "s3cret").as_str()));
    assert_eq!(h.len(), 7);
    let f = form(&body);
    assert_eq!(get(&f, "grant_type"), Some(JWT_BEARER));
    assert_eq!(get(&f, "assertion"), Some(THE_ID_JAG));
    assert_eq!(get(&f, "scope"), Some("todos.read"));
    let resources: Vec<&str> = f
        .iter()
        .filter(|(k, _)| k == "resource")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(resources, ["https://api.example.com/mcp", "https://api.example.com/b"]);
    assert_eq!(f.len(), 5, "no subject token, no secret in the body: {f:?}");
}

#[test]
fn id_jag_step_two_with_client_secret_post_and_without_scope() {
    let ex = id_jag(
        json!({"tokenUrl": "https://as.example.com/token", "clientId": "as-client",
        "clientSecretEnv": "SECRET", "clientAuthMethod": "client_secret_post"}),
    );
    let (_, h, body, _) = step_two(&ex, "j");
    assert_eq!(header(&h, "authorization"), None);
    let f = form(&body);
    assert_eq!(get(&f, "client_id"), Some("as-client"));
    assert_eq!(get(&f, "client_secret"), Some("s3cret"));
    assert_eq!((get(&f, "scope"), get(&f, "resource")), (None, None));
    assert_eq!(f.len(), 4);
}

#[test]
fn id_jag_step_two_with_private_key_jwt_signs_for_the_resource_as() {
    let ex = id_jag(
        json!({"tokenUrl": "https://as.example.com/token", "clientId": "as-client",
        "clientAssertionKeyEnv": "RSA_KEY", "clientAssertionKid": "as-k1"}),
    );
    assert!(ex.signs(), "the second step signs, so requests need a stamp");
    let (_, h, body, _) = step_two(&ex, "jti-step-2");
    assert_eq!(header(&h, "authorization"), None);
    let f = form(&body);
    assert_eq!(get(&f, "client_id"), Some("as-client"));
    assert_eq!(
        get(&f, "client_assertion_type"),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    let opts = VerificationOptions {
        artificial_time: Some(UnixTimeStamp::from_secs(NOW_MS / 1000 + 1)),
        allowed_audiences: Some(HashSet::from_strings(&["https://as.example.com/token"])),
        allowed_issuers: Some(HashSet::from_strings(&["as-client"])),
        ..Default::default()
    };
    let claims = RS256KeyPair::from_pem(RSA1)
        .unwrap()
        .public_key()
        .verify_token::<NoCustomClaims>(get(&f, "client_assertion").unwrap(), Some(opts))
        .unwrap();
    assert_eq!(claims.jwt_id.as_deref(), Some("jti-step-2"));
    assert_eq!(claims.subject.as_deref(), Some("as-client"));
}

#[test]
fn id_jag_step_one_answers_are_held_to_the_draft() {
    let ex = id_jag(grant_basic());
    let answer = |body: Value| ex.answer(Step::Token, &resp(200, body), 10, "s", &stamp(NOW_MS, "j"));
    // issued_token_type must say id-jag: an access token is not a grant.
    let wrong = answer(json!({"access_token": THE_ID_JAG, "issued_token_type": ACCESS_TOKEN_URN, "token_type": "N_A"}));
    assert!(matches!(wrong, Err(Failure::BadGateway(w)) if w.contains("issued_token_type")));
    let missing = answer(json!({"access_token": THE_ID_JAG, "token_type": "N_A"}));
    assert!(matches!(missing, Err(Failure::BadGateway(_))));
    // The IdP's refusals map as any exchange's, unprefixed: it is the first step.
    let refused = ex.answer(
        Step::Token,
        &resp(400, json!({"error": "invalid_grant"})),
        10,
        "s",
        &stamp(NOW_MS, "j"),
    );
    assert!(matches!(refused, Err(Failure::InvalidGrant)));
    let client = ex.answer(
        Step::Token,
        &resp(401, json!({"error": "invalid_client"})),
        10,
        "s",
        &stamp(NOW_MS, "j"),
    );
    assert!(matches!(client, Err(Failure::BadGateway(w)) if w == "HTTP 401 invalid_client"));
}

#[test]
fn id_jag_step_two_answers_map_and_name_the_step() {
    let ex = id_jag(grant_basic());
    let answer =
        |r: &CalloutResponse, elapsed: u64| match ex.answer(Step::Assertion, r, elapsed, "s", &stamp(NOW_MS, "j")) {
            Ok(Next::Done(e)) => Ok(e),
            Ok(Next::Then(_)) => panic!("no third step"),
            Err(f) => Err(f),
        };
    let ok = answer(
        &resp(
            200,
            json!({"access_token": "as.eyJleHAiOjE5MDAwMDAwMDB9.sig", "token_type": "Bearer", "expires_in": 600}),
        ),
        10,
    )
    .unwrap();
    assert_eq!(
        (ok.access_token.as_str(), ok.expires_in),
        ("as.eyJleHAiOjE5MDAwMDAwMDB9.sig", Some(600))
    );
    assert_eq!(ok.jwt_exp, Some(1_900_000_000));
    let cases = [
        (resp(400, json!({"error": "invalid_grant"})), 10, "invalid_grant"),
        (resp(400, json!({"error": "invalid_scope"})), 10, "insufficient_scope"),
        (
            resp(401, json!({"error": "invalid_client"})),
            10,
            "bad_gateway (assertion grant: HTTP 401 invalid_client)",
        ),
        (
            resp(200, json!({"token_type": "Bearer"})),
            10,
            "bad_gateway (assertion grant: no access_token)",
        ),
        (
            resp(200, json!({"access_token": "t", "token_type": "MAC"})),
            10,
            "bad_gateway (assertion grant: token_type",
        ),
        (resp(503, json!({})), 10, "unavailable (assertion grant: HTTP 503)"),
        (
            CalloutResponse::default(),
            10,
            "unavailable (assertion grant: no response",
        ),
        (CalloutResponse::default(), 1_000, "timeout"),
    ];
    for (r, elapsed, outcome) in cases {
        let got = answer(&r, elapsed).unwrap_err().outcome();
        assert!(got.starts_with(outcome), "{r:?}: {got}");
    }
}

#[test]
fn params_digest_depends_on_the_assertion_grant() {
    let a = id_jag(grant_basic());
    assert_eq!(a.params_digest(), id_jag(grant_basic()).params_digest());
    let mut other_scope = grant_basic();
    other_scope["scopes"] = json!(["todos.write"]);
    let mut other_as = grant_basic();
    other_as["tokenUrl"] = "https://as2.example.com/oauth/token".into();
    let mut other_client = grant_basic();
    other_client["clientId"] = "someone else".into();
    for g in [other_scope, other_as, other_client] {
        assert_ne!(a.params_digest(), id_jag(g).params_digest());
    }
}

fn rfc8693(actor: Value) -> Exchanger {
    exchanger_with_keys(
        json!({"tokenUrl": "https://idp.example.com/token", "clientId": "gw", "clientSecretEnv": "SECRET",
            "audience": "backend", "timeoutMs": 1000, "actor": actor}),
        "",
    )
    .unwrap()
}

#[test]
fn an_actor_from_the_environment_goes_in_every_exchange() {
    let ex = rfc8693(json!({"source": "env", "env": "RSA_KEY", "tokenType": "jwt"}));
    assert!(!ex.needs_actor());
    // Given a fetched token anyway, the configured one wins.
    let call = ex.request("subj", Some("other"), &stamp(NOW_MS, "j")).unwrap();
    let f = form(&call.body);
    assert_eq!(get(&f, "actor_token"), Some(RSA1));
    assert_eq!(
        get(&f, "actor_token_type"),
        Some("urn:ietf:params:oauth:token-type:jwt")
    );
    assert_eq!(get(&f, "subject_token"), Some("subj"));
    // The actor is part of the cache key: none, another token, another type.
    let none = exchanger_with_keys(
        json!({"tokenUrl": "https://idp.example.com/token", "clientId": "gw", "clientSecretEnv": "SECRET",
            "audience": "backend", "timeoutMs": 1000}),
        "",
    )
    .unwrap();
    let other_token = rfc8693(json!({"source": "env", "env": "SECRET", "tokenType": "jwt"}));
    let other_type = rfc8693(json!({"source": "env", "env": "RSA_KEY", "tokenType": "access_token"}));
    for other in [&none, &other_token, &other_type] {
        assert_ne!(ex.params_digest(), other.params_digest());
    }
    assert_eq!(
        form(&none.request("subj", None, &stamp(NOW_MS, "j")).unwrap().body).len(),
        5
    );
}

#[test]
fn the_filters_own_actor_token_is_a_client_credentials_grant_at_the_same_endpoint() {
    let ex = rfc8693(json!({"source": "clientCredentials", "scopes": ["agent", "act"]}));
    assert!(ex.needs_actor());
    let call = ex.actor_request(&stamp(NOW_MS, "j")).unwrap();
    assert_eq!(call.step, Step::Actor);
    assert_eq!(call.endpoint.url, "https://idp.example.com/token");
    let h = &call.headers;
    assert_eq!(header(h, ":method"), Some("POST"));
    assert_eq!(header(h, ":path"), Some("/token"));
    assert_eq!(header(h, ":authority"), Some("idp.example.com"));
    assert_eq!(header(h, ":scheme"), Some("https"));
    assert_eq!(header(h, "content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(header(h, "accept"), Some("application/json"));
    assert_eq!(header(h, "authorization"), Some(basic("gw", "s3cret").as_str()));
    let f = form(&call.body);
    assert_eq!(get(&f, "grant_type"), Some("client_credentials"));
    assert_eq!(get(&f, "scope"), Some("agent act"));
    assert_eq!(f.len(), 2, "{f:?}");
    // The exchange carries the fetched token.
    let f = form(
        &ex.request("subj", Some("own.actor.token"), &stamp(NOW_MS, "j"))
            .unwrap()
            .body,
    );
    assert_eq!(get(&f, "actor_token"), Some("own.actor.token"));
    assert_eq!(get(&f, "actor_token_type"), Some(ACCESS_TOKEN_URN));
    assert_eq!(get(&f, "subject_token"), Some("subj"));
    // Who acts is in the cache key; the token itself is not (it changes, the actor does not).
    let other_scopes = rfc8693(json!({"source": "clientCredentials", "scopes": ["agent"]}));
    assert_ne!(ex.params_digest(), other_scopes.params_digest());
    assert_eq!(
        ex.params_digest(),
        rfc8693(json!({"source": "clientCredentials", "scopes": ["agent", "act"]})).params_digest()
    );
}

#[test]
fn the_actor_tokens_answer_fails_as_our_own_problem() {
    let ex = rfc8693(json!({"source": "clientCredentials"}));
    let f = form(&ex.actor_request(&stamp(NOW_MS, "j")).unwrap().body);
    assert_eq!(
        (get(&f, "grant_type"), get(&f, "scope")),
        (Some("client_credentials"), None)
    );
    let got = ex
        .actor_answer(
            &resp(
                200,
                json!({"access_token": "own", "token_type": "Bearer", "expires_in": 120}),
            ),
            10,
        )
        .unwrap();
    assert_eq!((got.access_token.as_str(), got.expires_in), ("own", Some(120)));
    for (r, elapsed, outcome) in [
        // Even a scope refusal is our configuration, not the caller's scopes.
        (
            resp(400, json!({"error": "invalid_scope"})),
            10,
            "bad_gateway (actor token: HTTP 400 invalid_scope)",
        ),
        (
            resp(400, json!({"error": "invalid_grant"})),
            10,
            "bad_gateway (actor token: HTTP 400 invalid_grant)",
        ),
        (
            resp(401, json!({"error": "invalid_client"})),
            10,
            "bad_gateway (actor token: HTTP 401 invalid_client)",
        ),
        (
            resp(200, json!({"token_type": "Bearer"})),
            10,
            "bad_gateway (actor token: no access_token)",
        ),
        (resp(500, json!({})), 10, "unavailable (actor token: HTTP 500)"),
        (CalloutResponse::default(), 10, "unavailable (actor token: no response"),
        (CalloutResponse::default(), 1_000, "timeout"),
    ] {
        let got = ex.actor_answer(&r, elapsed).unwrap_err().outcome();
        assert!(got.starts_with(outcome), "{r:?}: {got}");
    }
    // An exchange still waiting for it when it gave up fails as it did.
    let parked = ex.answer(
        Step::Actor,
        &CalloutResponse::default(),
        1_000,
        "s",
        &stamp(NOW_MS, "j"),
    );
    assert!(matches!(parked, Err(Failure::Timeout)));
    // Without a fetched actor there is nothing to ask for.
    assert!(rfc8693(json!({"source": "env", "env": "SECRET"}))
        .actor_request(&stamp(NOW_MS, "j"))
        .is_err());
}
