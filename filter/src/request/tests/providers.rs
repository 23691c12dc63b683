//! Provider dialects with more than one step: Google STS, Entra OBO.

use super::*;

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

#[test]
fn entra_claims_challenge_reaches_the_client() {
    let mut v = config_json();
    v["tokenExchange"] = json!({"provider": "entra-obo", "tenantId": "contoso", "clientId": "app",
        "clientSecretEnv": "TE_SECRET", "scopes": ["api://backend/.default"]});
    let mut f = filter_with_env(&v, &[("TE_SECRET", "secret")]);
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
