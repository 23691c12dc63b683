//! Per-resource tool gates: each policy judges `tools/call` bodies at its
//! own MCP endpoint with its own tools (a rule's `mcp`, else the top-level).

use super::*;

/// One issuer; on mcp.example.com a GitHub and a Jira MCP server, each
/// with its own gated tool (GitHub's body limit 200 bytes); plain.example.com
/// turns the gate off; everything else is the top-level policy, whose
/// `mcp` gates `shutdown` at /mcp.
fn two_gates() -> Filter {
    let mut v = config_json();
    v["mcp"] = json!({"toolScopes": {"shutdown": ["ops:admin"]}});
    v["rules"] = json!([
        {"match": {"hosts": ["plain.example.com"]}, "mcp": {"toolScopes": {}}},
        {"match": {"hosts": ["mcp.example.com"], "pathPrefix": "/github/"},
         "oidc": {"resourceUrl": "https://mcp.example.com/github/mcp"},
         "mcp": {"toolScopes": {"delete_repo": ["repo:admin"]}, "maxBodyBytes": 200}},
        {"match": {"hosts": ["mcp.example.com"], "pathPrefix": "/jira/"},
         "oidc": {"resourceUrl": "https://mcp.example.com/jira/mcp"},
         "mcp": {"toolScopes": {"close_issue": ["jira:admin"]}}}
    ]);
    Filter::new(&plugin_config::parse(v.to_string().as_bytes()).unwrap(), "tef").unwrap()
}

fn call(name: &str) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name}})
        .to_string()
        .into_bytes()
}

/// A POST to `authority` + `path` with `body`, whole: the action at the
/// headers, then the body's, and the status sent if any.
fn post(f: &mut Filter, m: &mut Mock, id: u32, at: (&str, &str), scope: &str, body: Vec<u8>) -> (Action, Action) {
    let auth = format!("Bearer {}", token(RSA1, "k1", scope));
    let headers = [
        (":method", "POST"),
        (":authority", at.0),
        (":path", at.1),
        ("authorization", auth.as_str()),
    ];
    let head = open_with(f, m, id, &headers, true);
    if m.sent(id).is_some() {
        return (head, Action::Pause);
    }
    m.streams.get_mut(&id).unwrap().body = body;
    let n = m.stream(id).body.len();
    m.enter(id);
    (head, f.on_request_body(m, n, true))
}

const GITHUB: (&str, &str) = ("mcp.example.com", "/github/mcp");
const JIRA: (&str, &str) = ("mcp.example.com", "/jira/mcp");
const PLAIN: &str = "mcp:tools:call";
const GO: (Action, Action) = (Action::Continue, Action::Continue);
const HELD: (Action, Action) = (Action::Continue, Action::Pause);

#[test]
fn each_resource_gates_its_own_tools_at_its_own_endpoint() {
    let (mut f, mut m) = (two_gates(), Mock::new());
    warm(&mut f, &mut m);
    // GitHub's tool on GitHub: its scope or 403 naming GitHub's resource.
    assert_eq!(post(&mut f, &mut m, 2, GITHUB, PLAIN, call("delete_repo")), HELD);
    let s = m.sent(2).unwrap();
    assert_eq!(s.status, 403);
    let challenge = s.header("www-authenticate").unwrap();
    assert!(
        challenge.contains(r#"scope="mcp:tools:call repo:admin""#),
        "{challenge}"
    );
    assert!(challenge.contains("oauth-protected-resource/github/mcp"), "{challenge}");
    let admin = "mcp:tools:call repo:admin";
    assert_eq!(post(&mut f, &mut m, 3, GITHUB, admin, call("delete_repo")), GO);
    // Jira's tool is not gated on GitHub, nor GitHub's on Jira.
    assert_eq!(post(&mut f, &mut m, 4, GITHUB, PLAIN, call("close_issue")), GO);
    assert_eq!(post(&mut f, &mut m, 5, JIRA, PLAIN, call("delete_repo")), GO);
    // Jira's tool on Jira needs Jira's scope; GitHub's does not do.
    assert_eq!(post(&mut f, &mut m, 6, JIRA, admin, call("close_issue")), HELD);
    let challenge = m.sent(6).unwrap().header("www-authenticate").unwrap();
    assert!(
        challenge.contains(r#"scope="mcp:tools:call jira:admin""#),
        "{challenge}"
    );
    assert!(challenge.contains("oauth-protected-resource/jira/mcp"), "{challenge}");
    let jira_admin = "mcp:tools:call jira:admin";
    assert_eq!(post(&mut f, &mut m, 7, JIRA, jira_admin, call("close_issue")), GO);
    // The top-level policy keeps the top-level gate, which the rules replaced.
    let top = ("mcp.example.com", "/mcp");
    assert_eq!(post(&mut f, &mut m, 8, top, PLAIN, call("shutdown")), HELD);
    assert_eq!(m.sent(8).unwrap().status, 403);
    assert_eq!(post(&mut f, &mut m, 9, top, PLAIN, call("delete_repo")), GO);
    assert_eq!(post(&mut f, &mut m, 10, GITHUB, PLAIN, call("shutdown")), GO);
    // Each its own body limit: 300 bytes are too many for GitHub only.
    assert_eq!(post(&mut f, &mut m, 11, GITHUB, admin, vec![b' '; 300]), HELD);
    assert_eq!(m.sent(11).unwrap().status, 413);
    assert_eq!(post(&mut f, &mut m, 12, JIRA, admin, vec![b' '; 300]), HELD);
    assert_eq!(m.sent(12).unwrap().status, 400, "read, and not JSON");
    assert!(f.gate.is_empty());
}

#[test]
fn variants_of_each_endpoint_are_refused_and_other_paths_not_gated() {
    let (mut f, mut m) = (two_gates(), Mock::new());
    warm(&mut f, &mut m);
    let host = "mcp.example.com";
    for (id, path) in [
        (2, "/github/MCP"),
        (3, "/github/mcp;x"),
        (4, "/jira/%6Dcp"),
        (5, "/jira//mcp"),
        (6, "/github/../jira/mcp"),
        (7, "/jira/x/../mcp"),
    ] {
        let (head, _) = post(&mut f, &mut m, id, (host, path), PLAIN, call("close_issue"));
        assert_eq!(head, Action::Pause, "{path}");
        let s = m.sent(id).unwrap();
        assert_eq!(s.status, 400, "{path}");
        assert!(
            s.header("www-authenticate").unwrap().contains("ambiguous path"),
            "{path}"
        );
    }
    // The endpoints with a trailing slash are theirs; other paths are not gated.
    assert_eq!(
        post(&mut f, &mut m, 8, (host, "/jira/mcp/"), PLAIN, call("close_issue")),
        HELD
    );
    assert_eq!(m.sent(8).unwrap().status, 403);
    assert_eq!(
        post(&mut f, &mut m, 9, (host, "/github/x/mcp"), PLAIN, call("delete_repo")),
        GO
    );
    assert_eq!(
        post(
            &mut f,
            &mut m,
            10,
            (host, "/github/jira/mcp"),
            PLAIN,
            call("close_issue")
        ),
        GO
    );
    // A host whose policy has no gate never reads the path: even a
    // malformed one goes on, and nothing is held.
    let plain_host = ("plain.example.com", "/MCP%zz");
    assert_eq!(post(&mut f, &mut m, 11, plain_host, PLAIN, call("shutdown")), GO);
    assert_eq!(
        post(
            &mut f,
            &mut m,
            12,
            ("plain.example.com", "/mcp"),
            PLAIN,
            call("shutdown")
        ),
        GO
    );
    assert!(f.gate.is_empty());
}

#[test]
fn a_gated_request_on_either_resource_is_decided_once() {
    let (mut f, mut m) = (two_gates(), Mock::new());
    warm(&mut f, &mut m);
    post(&mut f, &mut m, 2, GITHUB, PLAIN, call("delete_repo"));
    post(&mut f, &mut m, 3, JIRA, PLAIN, call("close_issue"));
    post(&mut f, &mut m, 4, JIRA, PLAIN, call("delete_repo"));
    assert_eq!(decisions(&mut f, &mut m), (1, 2));
    for id in 2..=4 {
        f.on_done(&mut m, id);
    }
    assert_eq!(decisions(&mut f, &mut m), (1, 2));
}
