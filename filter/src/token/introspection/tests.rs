use super::*;
use serde_json::json;

const NOW: u64 = 1_700_000_000;

fn aud() -> Vec<String> {
    vec!["mcp".to_string(), "other".to_string()]
}

fn expect(audiences: &[String], require_audience: bool) -> Expect<'_> {
    Expect {
        issuer: "https://idp.example.com",
        audiences,
        require_audience,
        skew: 60,
    }
}

fn active(v: Value) -> Value {
    match parse(v.to_string().as_bytes()) {
        Ok(Answer::Active(claims)) => claims,
        other => panic!("not active: {other:?}"),
    }
}

fn judge(v: Value, require_audience: bool) -> Result<Principal, Reject> {
    let a = aud();
    check(&active(v), &expect(&a, require_audience), NOW, NOW + 60)
}

fn good() -> Value {
    json!({"active": true, "sub": "alice", "client_id": "vscode", "exp": NOW + 300,
        "iss": "https://idp.example.com", "aud": "mcp", "scope": "mcp:tools:call openid"})
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

#[test]
fn an_active_token_for_us_passes_with_its_subject_client_and_scopes() {
    let p = judge(good(), false).unwrap();
    assert_eq!(p.sub.as_deref(), Some("alice"));
    assert_eq!(p.client.as_deref(), Some("vscode"));
    assert_eq!(p.exp, NOW + 300);
    assert_eq!(p.scopes, vec!["mcp:tools:call", "openid"]);
}

#[test]
fn inactive_is_inactive_whatever_else_it_says() {
    assert_eq!(parse(br#"{"active": false}"#), Ok(Answer::Inactive));
    assert_eq!(
        parse(br#"{"active": false, "sub": "alice", "exp": 1}"#),
        Ok(Answer::Inactive)
    );
}

#[test]
fn malformed_answers_are_the_endpoints_fault() {
    for body in [
        &b""[..],
        b"not json",
        b"[]",
        b"{}",
        br#"{"active": "true"}"#,
        br#"{"active": 1}"#,
        br#"{"active": true, "active": false}"#,
        br#"{"active": true, "exp": 1.5}"#,
        br#"{"active": true, "exp": "tomorrow"}"#,
        br#"{"active": true, "nbf": -1}"#,
        br#"{"active": true, "iat": 99999999999}"#,
    ] {
        assert!(parse(body).is_err(), "{}", String::from_utf8_lossy(body));
    }
    let big = format!(r#"{{"active": true, "x": "{}"}}"#, "a".repeat(MAX_ANSWER_BYTES));
    assert_eq!(parse(big.as_bytes()), Err(Malformed("answer too large")));
}

#[test]
fn expiry_and_not_before_with_skew() {
    assert_eq!(judge(with(good(), "exp", json!(NOW - 61)), false), Err(Reject::Expired));
    assert!(
        judge(with(good(), "exp", json!(NOW - 60)), false).is_ok(),
        "within skew"
    );
    assert_eq!(
        judge(with(good(), "nbf", json!(NOW + 61)), false),
        Err(Reject::NotYetValid)
    );
    assert!(judge(with(good(), "nbf", json!(NOW + 60)), false).is_ok());
    let p = judge(without(good(), "exp"), false).unwrap();
    assert_eq!(p.exp, NOW + 60, "without exp, trusted until the cache says");
}

#[test]
fn issuer_when_present_must_be_ours() {
    assert_eq!(
        judge(with(good(), "iss", json!("https://evil.example.com")), false),
        Err(Reject::Issuer)
    );
    assert_eq!(
        judge(with(good(), "iss", json!(["https://idp.example.com"])), false),
        Err(Reject::Issuer)
    );
    assert!(judge(without(good(), "iss"), false).is_ok());
}

#[test]
fn audience_as_string_or_list_and_required_when_configured() {
    assert!(judge(with(good(), "aud", json!("other")), false).is_ok());
    assert!(judge(with(good(), "aud", json!(["x", "mcp"])), false).is_ok());
    assert_eq!(
        judge(with(good(), "aud", json!("backend")), false),
        Err(Reject::Audience)
    );
    assert_eq!(
        judge(with(good(), "aud", json!(["x", "y"])), false),
        Err(Reject::Audience)
    );
    assert_eq!(judge(with(good(), "aud", json!([])), false), Err(Reject::Audience));
    assert_eq!(judge(with(good(), "aud", json!(1)), false), Err(Reject::Audience));
    assert!(judge(without(good(), "aud"), false).is_ok());
    assert_eq!(judge(without(good(), "aud"), true), Err(Reject::Audience));
    assert!(judge(good(), true).is_ok());
}

#[test]
fn subject_is_sub_else_client_id_else_refused() {
    let p = judge(without(good(), "sub"), false).unwrap();
    assert_eq!(p.sub.as_deref(), Some("vscode"), "a client acting for itself");
    assert_eq!(p.client.as_deref(), Some("vscode"));
    let p = judge(without(good(), "client_id"), false).unwrap();
    assert_eq!((p.sub.as_deref(), p.client), (Some("alice"), None));
    let neither = without(without(good(), "sub"), "client_id");
    assert_eq!(judge(neither.clone(), false), Err(Reject::NoSubject));
    assert_eq!(judge(with(neither, "sub", json!(" ")), false), Err(Reject::NoSubject));
}

#[test]
fn scope_must_be_a_string() {
    assert_eq!(
        judge(with(good(), "scope", json!(["a"])), false),
        Err(Reject::ScopeClaim)
    );
    assert!(judge(without(good(), "scope"), false).unwrap().scopes.is_empty());
}

#[test]
fn only_jwts_are_jwts() {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#);
    assert!(is_jwt(&format!("{header}.e30.c2ln")));
    assert!(is_jwt(&format!("{header}..")));
    for opaque in [
        "2YotnFZFEjr1zCsicMWpAA",
        "a.b.c",
        "e30.e30",
        &format!("{header}.e30.c2ln.x"),
        &format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("[1]")),
    ] {
        assert!(!is_jwt(opaque), "{opaque}");
    }
}
