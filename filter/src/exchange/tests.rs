use super::*;
use serde_json::json;

fn exchanger(te: serde_json::Value) -> Exchanger {
    let cfg = json!({
        "oidc": {"issuer": "https://i", "audience": "a", "jwksUrl": "https://i/k"},
        "tokenExchange": te
    });
    let env = |n: &str| (n == "SECRET").then(|| "p@ss:w rd".to_string());
    let c = plugin_config::parse_with_env(cfg.to_string().as_bytes(), &env).unwrap();
    Exchanger::new(c.token_exchange.as_ref().unwrap())
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn get<'a>(f: &'a [(String, String)], k: &str) -> Option<&'a str> {
    f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn resp(status: u16, body: serde_json::Value) -> CalloutResponse {
    CalloutResponse {
        headers: vec![(":status".into(), status.to_string())],
        body: body.to_string().into_bytes(),
        truncated: false,
    }
}

fn basic() -> Exchanger {
    exchanger(json!({
        "tokenUrl": "https://idp.example.com/oauth2/token", "clientId": "my client",
        "clientSecretEnv": "SECRET", "audience": "backend", "scopes": ["a", "b"],
        "requestedTokenType": "access_token", "resource": "https://api.example.com/",
        "timeoutMs": 1000
    }))
}

#[test]
fn basic_request_on_the_wire() {
    let ex = basic();
    let (headers, body) = ex.request("subj.tok.en+/=");
    let h = |k: &str| headers.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    assert_eq!(h(":method"), Some("POST"));
    assert_eq!(h(":path"), Some("/oauth2/token"));
    assert_eq!(h(":authority"), Some("idp.example.com"));
    assert_eq!(h(":scheme"), Some("https"));
    assert_eq!(h("content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(h("accept"), Some("application/json"));
    // RFC 6749 §2.3.1: "my client" and "p@ss:w rd" are form-urlencoded, then joined.
    let expected = format!("Basic {}", STANDARD.encode("my+client:p%40ss%3Aw+rd"));
    assert_eq!(h("authorization"), Some(expected.as_str()));
    let f = form(&body);
    assert_eq!(
        get(&f, "grant_type"),
        Some("urn:ietf:params:oauth:grant-type:token-exchange")
    );
    assert_eq!(get(&f, "subject_token"), Some("subj.tok.en+/="));
    assert_eq!(
        get(&f, "subject_token_type"),
        Some("urn:ietf:params:oauth:token-type:access_token")
    );
    assert_eq!(
        get(&f, "requested_token_type"),
        Some("urn:ietf:params:oauth:token-type:access_token")
    );
    assert_eq!(get(&f, "audience"), Some("backend"));
    assert_eq!(get(&f, "scope"), Some("a b"));
    assert_eq!(get(&f, "resource"), Some("https://api.example.com/"));
    assert_eq!(get(&f, "client_secret"), None, "basic keeps the secret out of the body");
    assert_eq!(get(&f, "client_id"), None);
}

#[test]
fn post_and_none_client_auth() {
    let ex = exchanger(json!({
        "tokenUrl": "https://i/t", "clientId": "c1", "clientSecretEnv": "SECRET",
        "clientAuthMethod": "client_secret_post"
    }));
    let (headers, body) = ex.request("t");
    assert!(!headers.iter().any(|(k, _)| *k == "authorization"));
    let f = form(&body);
    assert_eq!(get(&f, "client_id"), Some("c1"));
    assert_eq!(get(&f, "client_secret"), Some("p@ss:w rd"));
    assert_eq!(get(&f, "audience"), None);
    assert_eq!(get(&f, "scope"), None);

    let ex = exchanger(json!({"tokenUrl": "https://i/t", "clientId": "pub"}));
    let (headers, body) = ex.request("t");
    assert!(!headers.iter().any(|(k, _)| *k == "authorization"));
    let f = form(&body);
    assert_eq!(get(&f, "client_id"), Some("pub"));
    assert_eq!(get(&f, "client_secret"), None);
}

#[test]
fn params_digest_depends_on_parameters() {
    let a = basic();
    let b = exchanger(json!({
        "tokenUrl": "https://idp.example.com/oauth2/token", "clientId": "my client",
        "clientSecretEnv": "SECRET", "audience": "other", "scopes": ["a", "b"],
        "requestedTokenType": "access_token", "resource": "https://api.example.com/",
        "timeoutMs": 1000
    }));
    assert_ne!(a.params_digest(), b.params_digest());
    assert_eq!(a.params_digest(), basic().params_digest());
}

fn good_body() -> serde_json::Value {
    json!({
        "access_token": "abc.eyJleHAiOjE5MDAwMDAwMDB9.sig",
        "token_type": "Bearer",
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "expires_in": 300
    })
}

#[test]
fn accepts_a_good_answer() {
    let ok = basic().parse(&resp(200, good_body()), 10, "s").unwrap();
    assert_eq!(ok.access_token, "abc.eyJleHAiOjE5MDAwMDAwMDB9.sig");
    assert_eq!(ok.expires_in, Some(300));
    assert_eq!(ok.jwt_exp, Some(1_900_000_000));
    let mut b = good_body();
    b["token_type"] = "N_A".into();
    b["expires_in"] = "60".into();
    assert_eq!(basic().parse(&resp(200, b), 10, "s").unwrap().expires_in, Some(60));
    let mut b = good_body();
    b.as_object_mut().unwrap().remove("expires_in");
    assert_eq!(basic().parse(&resp(200, b), 10, "s").unwrap().expires_in, None);
}

#[test]
fn rejects_incomplete_answers() {
    let bad = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut b = good_body();
        f(&mut b);
        basic().parse(&resp(200, b), 10, "s").unwrap_err()
    };
    for e in [
        bad(&|b| b["access_token"] = "".into()),
        bad(&|b| {
            b.as_object_mut().unwrap().remove("access_token");
        }),
        bad(&|b| b["access_token"] = "with space".into()),
        bad(&|b| b["token_type"] = "DPoP".into()),
        bad(&|b| {
            b.as_object_mut().unwrap().remove("issued_token_type");
        }),
        bad(&|b| b["issued_token_type"] = "urn:ietf:params:oauth:token-type:id_token".into()),
    ] {
        assert!(matches!(e, Failure::BadGateway(_)), "{e:?}");
    }
    let not_json = CalloutResponse {
        headers: vec![(":status".into(), "200".into())],
        body: b"<html>".to_vec(),
        truncated: false,
    };
    assert!(matches!(basic().parse(&not_json, 10, "s"), Err(Failure::BadGateway(_))));
    let mut big = resp(200, good_body());
    big.body.resize(MAX_RESPONSE_BYTES + 1, b' ');
    assert!(matches!(basic().parse(&big, 10, "s"), Err(Failure::BadGateway(_))));
    big.body.truncate(10);
    big.truncated = true;
    assert!(matches!(basic().parse(&big, 10, "s"), Err(Failure::BadGateway(_))));
}

#[test]
fn maps_idp_errors_to_the_table() {
    let err = |status: u16, code: &str| {
        basic()
            .parse(&resp(status, json!({"error": code})), 10, "s")
            .unwrap_err()
    };
    assert_eq!(err(400, "invalid_grant"), Failure::InvalidGrant);
    assert_eq!(err(400, "invalid_scope"), Failure::InsufficientScope);
    assert_eq!(err(400, "invalid_target"), Failure::InsufficientScope);
    for code in [
        "invalid_client",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_request",
        "x",
    ] {
        assert!(matches!(err(400, code), Failure::BadGateway(_)), "{code}");
    }
    assert!(matches!(err(401, "invalid_client"), Failure::BadGateway(_)));
    assert!(matches!(err(500, "server_error"), Failure::Unavailable(_)));
    assert!(matches!(err(503, "x"), Failure::Unavailable(_)));
    let plain = CalloutResponse {
        headers: vec![(":status".into(), "400".into())],
        body: b"nope".to_vec(),
        truncated: false,
    };
    assert!(matches!(basic().parse(&plain, 10, "s"), Err(Failure::BadGateway(_))));
}

#[test]
fn no_answer_is_unavailable_or_timeout_by_elapsed_time() {
    let none = CalloutResponse::default();
    assert!(matches!(basic().parse(&none, 10, "s"), Err(Failure::Unavailable(_))));
    assert_eq!(basic().parse(&none, 1000, "s"), Err(Failure::Timeout));
    let gw = resp(504, json!({}));
    assert_eq!(basic().parse(&gw, 999, "s"), Err(Failure::Timeout));
    assert!(matches!(basic().parse(&gw, 10, "s"), Err(Failure::Unavailable(_))));
}

#[test]
fn idp_descriptions_that_echo_the_token_are_withheld() {
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlc2lnbmF0dXJl";
    assert_eq!(
        safe_description(Some("bad token eyJhbGciOiJSUzI1NiJ9"), token),
        "(withheld: it may contain a token)"
    );
    assert_eq!(
        safe_description(Some("sig c2lnbmF0dXJlc2lnbmF0dXJl"), token),
        "(withheld: it may contain a token)"
    );
    assert_eq!(
        safe_description(Some("subject not allowed"), token),
        "subject not allowed"
    );
}
