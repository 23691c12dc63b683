use super::answer::{safe_description, MAX_RESPONSE_BYTES};
use super::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;

fn exchanger(te: serde_json::Value) -> Exchanger {
    let cfg = json!({
        "oidc": {"issuer": "https://i", "audience": "a", "jwksUrl": "https://i/k"},
        "tokenExchange": te
    });
    let env = |n: &str| (n == "SECRET").then(|| "p@ss:w rd".to_string());
    let c = plugin_config::parse_with_env(cfg.to_string().as_bytes(), &env).unwrap();
    Exchanger::new(c.token_exchange.as_ref().unwrap()).unwrap()
}

fn stamp(now_ms: u64, jti: &str) -> Stamp {
    Stamp {
        now_ms,
        jti: jti.to_string(),
    }
}

/// The first request's headers and body.
fn wire(ex: &Exchanger, subject: &str) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let call = ex.request(subject, None, &stamp(1_700_000_000_000, "jti-1")).unwrap();
    (call.headers, call.body)
}

impl Exchanger {
    /// The token endpoint's answer, for a one-step exchange.
    fn parse(&self, resp: &CalloutResponse, elapsed_ms: u64, subject: &str) -> Result<Exchanged, Failure> {
        match self.answer(Step::Token, resp, elapsed_ms, subject, &stamp(0, "jti-0"))? {
            Next::Done(e) => Ok(e),
            Next::Then(_) => panic!("a second step"),
        }
    }
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
    let (headers, body) = wire(&ex, "subj.tok.en+/=");
    let h = |k: &str| headers.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
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
    let (headers, body) = wire(&ex, "t");
    assert!(!headers.iter().any(|(k, _)| *k == "authorization"));
    let f = form(&body);
    assert_eq!(get(&f, "client_id"), Some("c1"));
    assert_eq!(get(&f, "client_secret"), Some("p@ss:w rd"));
    assert_eq!(get(&f, "audience"), None);
    assert_eq!(get(&f, "scope"), None);

    let ex = exchanger(json!({"tokenUrl": "https://i/t", "clientId": "pub"}));
    let (headers, body) = wire(&ex, "t");
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
    assert_eq!(basic().parse(&resp(200, b.clone()), 10, "s").unwrap().expires_in, None);
    // Zero, negative, fractional or not a number: a malformed answer, never cached.
    for bad in [json!(0), json!(-5), json!(1.5), json!("soon"), json!(true), json!("-1")] {
        b["expires_in"] = bad.clone();
        assert!(
            matches!(basic().parse(&resp(200, b.clone()), 10, "s"), Err(Failure::BadGateway(w)) if w.contains("expires_in")),
            "{bad}"
        );
    }
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

// ---------------------------------------------------------------------------
// Dialects and private_key_jwt (issue 9).

use crate::testkeys::RSA1;
use jwt_simple::prelude::*;

const WIP: &str = "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/pool/providers/okta";
const IMPERSONATE: &str =
    "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/bq@p.iam.gserviceaccount.com:generateAccessToken";
const NOW_MS: u64 = 1_700_000_000_000;

/// An exchanger whose environment holds `SECRET`, the RSA test key as
/// `RSA_KEY`, an EC key as `EC_KEY`, and a certificate-shaped PEM as `CERT`.
fn exchanger_with_keys(te: serde_json::Value, ec_pem: &str) -> Result<Exchanger, plugin_config::ConfigError> {
    let cfg = json!({"oidc": {"issuer": "https://i", "audience": "a", "jwksUrl": "https://i/k"}, "tokenExchange": te});
    let env = |n: &str| match n {
        "SECRET" => Some("s3cret".to_string()),
        "RSA_KEY" => Some(RSA1.to_string()),
        "EC_KEY" => Some(ec_pem.to_string()),
        "CERT" => Some("-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n".to_string()),
        _ => None,
    };
    let c = plugin_config::parse_with_env(cfg.to_string().as_bytes(), &env)?;
    Exchanger::new(c.token_exchange.as_ref().unwrap())
}

fn all<'a>(f: &'a [(String, String)], k: &str) -> Vec<&'a str> {
    f.iter().filter(|(n, _)| n == k).map(|(_, v)| v.as_str()).collect()
}

#[test]
fn lists_are_repeated_parameters_and_access_token_is_requested_by_default() {
    let ex = exchanger(
        json!({"provider": "keycloak", "tokenUrl": "https://kc/realms/r/protocol/openid-connect/token",
        "clientId": "gw", "clientSecretEnv": "SECRET", "audience": ["backend", "reports"]}),
    );
    let (headers, body) = wire(&ex, "subject");
    let f = form(&body);
    assert_eq!(all(&f, "audience"), vec!["backend", "reports"]);
    assert_eq!(
        get(&f, "requested_token_type"),
        Some("urn:ietf:params:oauth:token-type:access_token")
    );
    assert_eq!(
        get(&f, "subject_token_type"),
        Some("urn:ietf:params:oauth:token-type:access_token")
    );
    assert!(headers
        .iter()
        .any(|(k, v)| *k == "authorization" && v.starts_with("Basic ")));
    let ex = exchanger(json!({"tokenUrl": "https://i/t", "resource": ["https://a/", "https://b/"]}));
    assert_eq!(
        all(&form(&wire(&ex, "s").1), "resource"),
        vec!["https://a/", "https://b/"]
    );
}

#[test]
fn okta_sends_rfc8693_with_basic_client_auth() {
    let ex = exchanger(
        json!({"provider": "okta", "tokenUrl": "https://dev-1.okta.com/oauth2/aus2/v1/token",
        "clientId": "0oa1", "clientSecretEnv": "SECRET", "audience": "api://backend", "scopes": ["api:read", "api:write"]}),
    );
    let (headers, body) = wire(&ex, "subject");
    let f = form(&body);
    assert_eq!(
        f.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        vec![
            "grant_type",
            "subject_token_type",
            "requested_token_type",
            "audience",
            "scope",
            "subject_token"
        ]
    );
    assert_eq!(get(&f, "scope"), Some("api:read api:write"));
    let basic = format!("Basic {}", STANDARD.encode("0oa1:p%40ss%3Aw+rd"));
    assert!(headers.iter().any(|(k, v)| *k == "authorization" && *v == basic));
}

fn google(impersonation: bool) -> Exchanger {
    let mut te = json!({"provider": "google-sts", "audience": WIP, "subjectTokenType": "id_token",
        "scopes": ["https://www.googleapis.com/auth/bigquery"], "options": {"userProject": "p1"}});
    if impersonation {
        te["serviceAccountImpersonation"] = json!({"url": IMPERSONATE, "lifetimeSeconds": 1800});
    }
    exchanger(te)
}

#[test]
fn google_sts_form_has_no_client_and_names_the_provider() {
    let (headers, body) = wire(&google(false), "id.token.jwt");
    let h = |k: &str| headers.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
    assert_eq!(h(":path"), Some("/v1/token"));
    assert_eq!(h(":authority"), Some("sts.googleapis.com"));
    assert_eq!(h("authorization"), None, "no client authentication");
    let f = form(&body);
    assert_eq!(
        get(&f, "grant_type"),
        Some("urn:ietf:params:oauth:grant-type:token-exchange")
    );
    assert_eq!(get(&f, "audience"), Some(WIP));
    assert_eq!(get(&f, "scope"), Some("https://www.googleapis.com/auth/bigquery"));
    assert_eq!(
        get(&f, "requested_token_type"),
        Some("urn:ietf:params:oauth:token-type:access_token")
    );
    assert_eq!(
        get(&f, "subject_token_type"),
        Some("urn:ietf:params:oauth:token-type:id_token")
    );
    assert_eq!(get(&f, "subject_token"), Some("id.token.jwt"));
    assert_eq!(get(&f, "options"), Some(r#"{"userProject":"p1"}"#));
    assert_eq!(get(&f, "client_id"), None);
    assert_ne!(google(false).params_digest(), google(true).params_digest());
}

fn sts_answer() -> CalloutResponse {
    resp(
        200,
        json!({"access_token": "ya29.federated", "issued_token_type":
        "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer", "expires_in": 3599}),
    )
}

#[test]
fn google_impersonation_is_a_second_call_with_the_federated_token() {
    let ex = google(true);
    let call = match ex
        .answer(Step::Token, &sts_answer(), 10, "s", &stamp(0, "jti-0"))
        .unwrap()
    {
        Next::Then(c) => c,
        Next::Done(_) => panic!("one step only"),
    };
    assert_eq!(call.step, Step::Impersonate);
    assert_eq!(call.endpoint.cluster, "outbound|443||iamcredentials.googleapis.com");
    let h = |k: &str| call.headers.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
    assert_eq!(h(":method"), Some("POST"));
    assert_eq!(
        h(":path"),
        Some("/v1/projects/-/serviceAccounts/bq@p.iam.gserviceaccount.com:generateAccessToken")
    );
    assert_eq!(h("authorization"), Some("Bearer ya29.federated"));
    assert_eq!(h("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(
        body,
        json!({"scope": ["https://www.googleapis.com/auth/cloud-platform"], "lifetime": "1800s"})
    );

    let ok = resp(
        200,
        json!({"accessToken": "ya29.sa", "expireTime": "2023-11-14T23:13:20.123456789Z"}),
    );
    match ex.answer(Step::Impersonate, &ok, 10, "s", &stamp(0, "jti-0")).unwrap() {
        Next::Done(e) => {
            assert_eq!(e.access_token, "ya29.sa");
            assert_eq!(e.expires_at, Some(1_700_003_600));
            assert_eq!(e.expires_in, None);
        }
        Next::Then(_) => panic!("a third step"),
    }
    // Failures in the second step say so, and map through the table.
    let cases = [
        (
            resp(
                403,
                json!({"error": {"code": 403, "status": "PERMISSION_DENIED", "message": "no"}}),
            ),
            "403",
        ),
        (
            resp(404, json!({"error": {"code": 404, "status": "NOT_FOUND"}})),
            "impersonation: HTTP 404 NOT_FOUND",
        ),
        (resp(503, json!({})), "impersonation: HTTP 503"),
        (
            resp(200, json!({"accessToken": "t"})),
            "impersonation: no valid expireTime",
        ),
        (
            resp(200, json!({"expireTime": "2023-11-14T23:13:20Z"})),
            "impersonation: no access_token",
        ),
    ];
    for (r, want) in cases {
        let got = match ex.answer(Step::Impersonate, &r, 10, "s", &stamp(0, "jti-0")) {
            Err(f) => f,
            Ok(_) => panic!("accepted {want}"),
        };
        match (&got, want) {
            (Failure::InsufficientScope, "403") => {}
            (Failure::BadGateway(why) | Failure::Unavailable(why), w) => assert_eq!(why, w),
            other => panic!("{other:?}"),
        }
    }
    let none = CalloutResponse::default();
    assert!(
        matches!(ex.answer(Step::Impersonate, &none, 10, "s", &stamp(0, "jti-0")), Err(Failure::Unavailable(w)) if w.starts_with("impersonation: "))
    );
}

#[test]
fn rfc3339_as_google_writes_it() {
    use super::google_sts::rfc3339;
    assert_eq!(rfc3339("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(rfc3339("2023-11-14T22:13:20Z"), Some(1_700_000_000));
    assert_eq!(rfc3339("2024-02-29T12:00:00.5Z"), Some(1_709_208_000));
    assert_eq!(rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800));
    for bad in [
        "",
        "2023-11-14 22:13:20Z",
        "2023-11-14T22:13:20+01:00",
        "2023-13-01T00:00:00Z",
        "2023-11-14T25:00:00Z",
        "x",
    ] {
        assert_eq!(rfc3339(bad), None, "{bad}");
    }
}

fn entra(te_extra: serde_json::Value) -> Exchanger {
    let mut te = json!({"provider": "entra-obo", "tenantId": "contoso", "clientId": "app-1",
        "clientSecretEnv": "SECRET", "scopes": ["api://backend/.default"]});
    for (k, v) in te_extra.as_object().unwrap() {
        te[k] = v.clone();
    }
    exchanger(te)
}

#[test]
fn entra_obo_on_the_wire() {
    let (headers, body) = wire(&entra(json!({})), "caller.jwt.token");
    let h = |k: &str| headers.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
    assert_eq!(h(":authority"), Some("login.microsoftonline.com"));
    assert_eq!(h(":path"), Some("/contoso/oauth2/v2.0/token"));
    assert_eq!(h("authorization"), None, "the secret goes in the body");
    let f = form(&body);
    let mut names: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        vec![
            "assertion",
            "client_id",
            "client_secret",
            "grant_type",
            "requested_token_use",
            "scope"
        ]
    );
    assert_eq!(
        get(&f, "grant_type"),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    assert_eq!(get(&f, "requested_token_use"), Some("on_behalf_of"));
    assert_eq!(get(&f, "assertion"), Some("caller.jwt.token"));
    assert_eq!(get(&f, "scope"), Some("api://backend/.default"));
    assert_eq!(get(&f, "client_secret"), Some("p@ss:w rd"));
}

#[test]
fn entra_answers_without_issued_token_type_and_claims_challenges() {
    let ex = entra(json!({}));
    let ok = resp(
        200,
        json!({"token_type": "Bearer", "scope": "api://backend/.default", "expires_in": 3599,
        "ext_expires_in": 3599, "access_token": "eyJ0.eyJleHAiOjE5MDAwMDAwMDB9.sig"}),
    );
    let e = ex.parse(&ok, 10, "s").unwrap();
    assert_eq!((e.expires_in, e.jwt_exp), (Some(3599), Some(1_900_000_000)));
    let claims = r#"{"access_token":{"polids":{"essential":true,"values":["p1"]}}}"#;
    let challenge = resp(
        400,
        json!({"error": "interaction_required", "error_description": "AADSTS50079: MFA",
        "error_codes": [50079], "claims": claims}),
    );
    assert_eq!(
        ex.parse(&challenge, 10, "s"),
        Err(Failure::ClaimsChallenge(Some(claims.into())))
    );
    let grant_with_claims = resp(400, json!({"error": "invalid_grant", "claims": claims}));
    assert_eq!(
        ex.parse(&grant_with_claims, 10, "s"),
        Err(Failure::ClaimsChallenge(Some(claims.into())))
    );
    assert_eq!(
        ex.parse(&resp(400, json!({"error": "interaction_required"})), 10, "s"),
        Err(Failure::ClaimsChallenge(None))
    );
    assert_eq!(
        ex.parse(&resp(400, json!({"error": "invalid_grant"})), 10, "s"),
        Err(Failure::InvalidGrant)
    );
    // Only Entra's dialect reads claims.
    assert_eq!(basic().parse(&grant_with_claims, 10, "s"), Err(Failure::InvalidGrant));
}

/// Verifies an assertion from a request body with `key`, returning its claims and header.
fn assertion_of(body: &[u8]) -> String {
    get(&form(body), "client_assertion").unwrap().to_string()
}

#[test]
fn private_key_jwt_assertions_verify_and_are_fresh() {
    let ec = ES256KeyPair::generate();
    let ec_pem = ec.to_pem().unwrap();
    for (alg, key_env) in [("RS256", "RSA_KEY"), ("PS256", "RSA_KEY"), ("ES256", "EC_KEY")] {
        let ex = exchanger_with_keys(
            json!({"tokenUrl": "https://idp.example.com/token", "clientId": "gw",
                "clientAssertionKeyEnv": key_env, "clientAssertionAlg": alg, "clientAssertionKid": "k7",
                "clientAssertionCertEnv": "CERT"}),
            &ec_pem,
        )
        .unwrap();
        assert!(ex.signs());
        let call = ex.request("subject", None, &stamp(NOW_MS, "jti-a")).unwrap();
        let f = form(&call.body);
        assert_eq!(
            get(&f, "client_assertion_type"),
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        );
        assert_eq!(get(&f, "client_id"), Some("gw"));
        assert!(!call.headers.iter().any(|(k, _)| *k == "authorization"));
        let token = assertion_of(&call.body);
        let meta = Token::decode_metadata(&token).unwrap();
        assert_eq!(meta.algorithm(), alg);
        assert_eq!(meta.key_id(), Some("k7"));
        assert_eq!(meta.certificate_sha1_thumbprint(), Some("jEEBpEwaL5kOHqKf7OPF-Gb-Vhs"));
        let opts = VerificationOptions {
            artificial_time: Some(UnixTimeStamp::from_secs(NOW_MS / 1000 + 1)),
            allowed_audiences: Some(HashSet::from_strings(&["https://idp.example.com/token"])),
            allowed_issuers: Some(HashSet::from_strings(&["gw"])),
            ..Default::default()
        };
        let claims = match alg {
            "RS256" => RS256KeyPair::from_pem(RSA1)
                .unwrap()
                .public_key()
                .verify_token::<NoCustomClaims>(&token, Some(opts)),
            "PS256" => PS256KeyPair::from_pem(RSA1)
                .unwrap()
                .public_key()
                .verify_token::<NoCustomClaims>(&token, Some(opts)),
            _ => ec.public_key().verify_token::<NoCustomClaims>(&token, Some(opts)),
        }
        .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(claims.subject.as_deref(), Some("gw"));
        assert_eq!(claims.jwt_id.as_deref(), Some("jti-a"));
        let (iat, exp) = (
            claims.issued_at.unwrap().as_secs(),
            claims.expires_at.unwrap().as_secs(),
        );
        assert_eq!(iat, NOW_MS / 1000);
        assert!(exp > iat && exp - iat <= 300, "at most 5 minutes");
        // Every request signs a new assertion with the jti it is given.
        let again = assertion_of(&ex.request("subject", None, &stamp(NOW_MS, "jti-b")).unwrap().body);
        assert_ne!(again, token);
    }
}

/// RSA1 as PKCS#1 PEM, and as PKCS#1 PEM with one CRT value changed.
fn rsa1_pkcs1() -> (String, String) {
    use rsa::pkcs1::der::{Decode, Encode};
    use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};
    use rsa::pkcs8::DecodePrivateKey;
    let key = rsa::PrivateKey::from_pkcs8_pem(RSA1).unwrap();
    let pem = key.to_pkcs1_pem(LineEnding::LF).unwrap().to_string();
    let der = key.to_pkcs1_der().unwrap();
    let mut parts = rsa::pkcs1::RsaPrivateKeyRef::from_der(der.as_bytes()).unwrap();
    let mut wrong = parts.exponent1.as_bytes().to_vec();
    *wrong.last_mut().unwrap() ^= 2;
    parts.exponent1 = rsa::pkcs1::UintRef::new(&wrong).unwrap();
    let bad = rsa::pkcs1::der::pem::encode_string("RSA PRIVATE KEY", LineEnding::LF, &parts.to_der().unwrap()).unwrap();
    (pem, bad)
}

/// Keys in every PEM form the filter takes sign assertions jwt-simple
/// verifies; RSA keys jwt-simple refuses, the filter refuses too. SEC1 (`EC
/// PRIVATE KEY`, what `openssl ecparam -genkey` writes) is taken beside
/// PKCS#8, which jwt-simple alone would take for ES256.
#[test]
fn private_keys_in_pkcs1_pkcs8_and_sec1_pem() {
    let (pkcs1, inconsistent) = rsa1_pkcs1();
    let sec1 = include_str!("../testdata/ec_sec1.pem");
    let weak = include_str!("../testdata/rsa1024_pkcs1.pem");
    let section = |alg: &str| {
        json!({"tokenUrl": "https://idp.example.com/token", "clientId": "gw",
            "clientAssertionKeyEnv": "EC_KEY", "clientAssertionAlg": alg})
    };
    let opts = || VerificationOptions {
        artificial_time: Some(UnixTimeStamp::from_secs(NOW_MS / 1000 + 1)),
        ..Default::default()
    };
    let assertion = |pem: &str, alg: &str| {
        let ex = exchanger_with_keys(section(alg), pem).unwrap();
        assertion_of(&ex.request("subject", None, &stamp(NOW_MS, "j")).unwrap().body)
    };
    let rsa1 = RS256KeyPair::from_pem(RSA1).unwrap().public_key();
    assert!(rsa1
        .verify_token::<NoCustomClaims>(&assertion(&pkcs1, "RS256"), Some(opts()))
        .is_ok());
    let ps = PS256KeyPair::from_pem(RSA1).unwrap().public_key();
    assert!(ps
        .verify_token::<NoCustomClaims>(&assertion(&pkcs1, "PS256"), Some(opts()))
        .is_ok());
    let point = {
        let (label, der) = rsa::pkcs1::der::pem::decode_vec(sec1.as_bytes()).unwrap();
        assert_eq!(label, "EC PRIVATE KEY");
        let secret = p256::SecretKey::from_sec1_der(&der).unwrap();
        p256::ecdsa::VerifyingKey::from(&p256::ecdsa::SigningKey::from(secret)).to_sec1_point(false)
    };
    let ec = ES256PublicKey::from_bytes(point.as_bytes()).unwrap();
    assert!(ec
        .verify_token::<NoCustomClaims>(&assertion(sec1, "ES256"), Some(opts()))
        .is_ok());
    for (pem, what) in [
        (weak, "a 1024-bit key"),
        (inconsistent.as_str(), "a CRT value that disagrees"),
    ] {
        assert!(RS256KeyPair::from_pem(pem).is_err(), "jwt-simple takes {what}");
        let e = exchanger_with_keys(section("RS256"), pem).err().unwrap();
        assert!(e.message.contains("does not hold an RSA private key"), "{what}: {e}");
    }
    // The other kind of key, for either algorithm.
    assert!(exchanger_with_keys(section("ES256"), &pkcs1).is_err());
    assert!(exchanger_with_keys(section("RS256"), sec1).is_err());
}

#[test]
fn a_key_that_does_not_fit_its_algorithm_fails_the_config() {
    let ec_pem = ES256KeyPair::generate().to_pem().unwrap();
    let e = exchanger_with_keys(
        json!({"tokenUrl": "https://i/t", "clientId": "gw", "clientAssertionKeyEnv": "EC_KEY"}),
        &ec_pem,
    )
    .err()
    .unwrap();
    assert_eq!(e.path, "tokenExchange.clientAssertionKeyEnv");
    assert!(e.message.contains("EC_KEY does not hold an RSA private key"), "{e}");
    let e = exchanger_with_keys(
        json!({"tokenUrl": "https://i/t", "clientId": "gw", "clientAssertionKeyEnv": "RSA_KEY", "clientAssertionAlg": "ES256"}),
        &ec_pem,
    )
    .err()
    .unwrap();
    assert!(e.message.contains("P-256"), "{e}");
}

mod id_jag_actor;
