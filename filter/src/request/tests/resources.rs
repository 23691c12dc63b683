//! One filter, many protected resources (issue 16).

use super::*;

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
