//! The MCP body gate: per-tool scopes, decided once.

use super::*;

fn tools_filter(exchange: bool) -> Filter {
    edge_filter(
        json!({"mcp": {"toolScopes": {"delete_repo": ["repo:admin"]}, "maxBodyBytes": 200}}),
        exchange,
    )
}

fn tool_call(name: &str) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name}})
        .to_string()
        .into_bytes()
}

/// Opens a POST to /mcp with a body to come.
fn post(f: &mut Filter, m: &mut Mock, id: u32, token: &str, body: Vec<u8>) -> Action {
    let auth = format!("Bearer {token}");
    let a = open_with(
        f,
        m,
        id,
        &[(":method", "POST"), (":path", "/mcp"), ("authorization", &auth)],
        true,
    );
    m.streams.get_mut(&id).unwrap().body = body;
    a
}

#[test]
fn a_tool_needs_its_scopes_once_the_body_is_read() {
    let (mut f, mut m) = (tools_filter(false), Mock::new());
    warm(&mut f, &mut m);
    let admin = token(RSA1, "k1", "mcp:tools:call repo:admin");
    // Granted: the headers go on, the body is held until read, then on.
    assert_eq!(
        post(&mut f, &mut m, 2, &admin, tool_call("delete_repo")),
        Action::Continue
    );
    assert_eq!(f.on_request_body(&mut m, 10, false), Action::Pause, "buffering");
    let n = m.stream(2).body.len();
    assert_eq!(f.on_request_body(&mut m, n, true), Action::Continue);
    // Not granted: 403 naming the route's and the tool's scopes.
    let plain = good();
    post(&mut f, &mut m, 3, &plain, tool_call("delete_repo"));
    let n = m.stream(3).body.len();
    assert_eq!(f.on_request_body(&mut m, n, true), Action::Pause);
    let s = m.sent(3).unwrap();
    assert_eq!(s.status, 403);
    assert!(s
        .header("www-authenticate")
        .unwrap()
        .contains(r#"scope="mcp:tools:call repo:admin""#));
    // Other tools need nothing more.
    post(&mut f, &mut m, 4, &plain, tool_call("echo"));
    let n = m.stream(4).body.len();
    assert_eq!(f.on_request_body(&mut m, n, true), Action::Continue);
    // Too large, or not JSON.
    post(&mut f, &mut m, 5, &admin, vec![b' '; 300]);
    assert_eq!(f.on_request_body(&mut m, 300, false), Action::Pause);
    assert_eq!(m.sent(5).unwrap().status, 413);
    post(&mut f, &mut m, 6, &admin, b"{nope".to_vec());
    f.on_request_body(&mut m, 5, true);
    assert_eq!(m.sent(6).unwrap().status, 400);
    // A GET, or a POST without a body, is never held.
    let auth = format!("Bearer {plain}");
    assert_eq!(
        open_with(
            &mut f,
            &mut m,
            7,
            &[(":method", "GET"), (":path", "/mcp"), ("authorization", &auth)],
            true
        ),
        Action::Continue
    );
    assert_eq!(f.on_request_body(&mut m, 0, true), Action::Continue);
    assert_eq!(
        open_with(
            &mut f,
            &mut m,
            8,
            &[(":method", "POST"), (":path", "/mcp"), ("authorization", &auth)],
            false
        ),
        Action::Continue
    );
}

#[test]
fn the_body_is_judged_after_a_paused_request_goes_on() {
    let (mut f, mut m) = (tools_filter(true), Mock::new());
    warm(&mut f, &mut m);
    // Paused for its exchange: Envoy delivers the body once it resumes.
    let plain = good();
    assert_eq!(post(&mut f, &mut m, 2, &plain, tool_call("delete_repo")), Action::Pause);
    let c = m.callouts.last().unwrap().clone();
    f.on_callout(&mut m, c.token, &exchanged(300));
    assert!(m.stream(2).resumed);
    assert_eq!(authorization(&m, 2), Some(format!("Bearer {BACKEND_TOKEN}")));
    m.enter(2);
    let n = m.stream(2).body.len();
    assert_eq!(f.on_request_body(&mut m, n, true), Action::Pause);
    assert_eq!(m.sent(2).unwrap().status, 403);
    // Paused for keys: the same.
    let (mut f, mut m) = (tools_filter(false), Mock::new());
    let admin = token(RSA1, "k1", "mcp:tools:call repo:admin");
    post(&mut f, &mut m, 2, &admin, tool_call("delete_repo"));
    let jwks = m.callouts[0].clone();
    f.on_callout(&mut m, jwks.token, &ok(&keys_k1()));
    assert!(m.stream(2).resumed);
    m.enter(2);
    let n = m.stream(2).body.len();
    assert_eq!(f.on_request_body(&mut m, n, true), Action::Continue);
    // A client that leaves leaves nothing behind.
    post(&mut f, &mut m, 3, &admin, tool_call("delete_repo"));
    f.on_done(&mut m, 3);
    assert!(f.gate.is_empty());
}

#[test]
fn older_keys_from_another_worker_do_not_decide_a_waiting_unseen_kid() {
    let shared = Shared::default();
    let (mut f1, mut m1) = (filter(), Mock::with_shared(shared.clone()));
    let (mut f2, mut m2) = (filter(), Mock::with_shared(shared));
    m2.now_ms = m1.now_ms;
    warm(&mut f1, &mut m1);
    // Worker 2 has no keys yet; worker 1 refreshed just now.
    m2.now_ms += 100;
    let rotated = token(RSA2, "k2", "mcp:tools:call");
    // Worker 2 loads worker 1's copy and holds the request (no refetch yet).
    assert_eq!(request(&mut f2, &mut m2, 2, Some(&rotated)), Action::Pause);
    m2.enter(ROOT);
    f2.on_tick(&mut m2);
    assert!(m2.sent(2).is_none(), "not refused by keys older than the request");
    // The next allowed refetch brings k2.
    m2.now_ms += KID_REFETCH_INTERVAL_MS;
    m2.enter(ROOT);
    f2.on_tick(&mut m2);
    let c = m2.callouts.last().unwrap().clone();
    f2.on_callout(&mut m2, c.token, &ok(&keys_k2()));
    assert!(m2.stream(2).resumed);
}

#[test]
fn a_gated_request_is_decided_once_at_its_body_or_its_end() {
    let (mut f, mut m) = (tools_filter(false), Mock::new());
    warm(&mut f, &mut m);
    // Refused at the body: one denial, and no allow at the headers.
    post(&mut f, &mut m, 2, &good(), tool_call("delete_repo"));
    assert_eq!(
        decisions(&mut f, &mut m),
        (0, 0),
        "not decided while the body is to come"
    );
    m.enter(2);
    let n = m.stream(2).body.len();
    assert_eq!(f.on_request_body(&mut m, n, true), Action::Pause);
    assert_eq!(decisions(&mut f, &mut m), (0, 1));
    // Allowed at the body: one allow.
    let admin = token(RSA1, "k1", "mcp:tools:call repo:admin");
    post(&mut f, &mut m, 3, &admin, tool_call("delete_repo"));
    m.enter(3);
    let n = m.stream(3).body.len();
    assert_eq!(f.on_request_body(&mut m, n, true), Action::Continue);
    assert_eq!(decisions(&mut f, &mut m), (1, 1));
    f.on_done(&mut m, 3);
    // No body ever judged (the client left): its headers went on, so it
    // counts as allowed when it ends, once.
    post(&mut f, &mut m, 4, &admin, tool_call("delete_repo"));
    assert_eq!(decisions(&mut f, &mut m), (1, 1));
    f.on_done(&mut m, 4);
    f.on_done(&mut m, 4);
    assert_eq!(decisions(&mut f, &mut m), (2, 1));
    assert!(f.gate.is_empty());
}

#[test]
fn posts_to_a_variant_of_the_endpoint_are_refused_before_anything_goes_on() {
    let (mut f, mut m) = (tools_filter(false), Mock::new());
    warm(&mut f, &mut m);
    let plain = good();
    let auth = format!("Bearer {plain}");
    for (id, path) in [(2, "/MCP"), (3, "/mcp;x"), (4, "//mcp"), (5, "/%6Dcp")] {
        let headers = [(":method", "POST"), (":path", path), ("authorization", auth.as_str())];
        assert_eq!(open_with(&mut f, &mut m, id, &headers, true), Action::Pause, "{path}");
        let s = m.sent(id).unwrap();
        assert_eq!(s.status, 400, "{path}");
        assert!(s.header("www-authenticate").unwrap().contains("ambiguous path"));
    }
    // With a trailing slash it is the endpoint: judged, and refused for the tool.
    let headers = [
        (":method", "POST"),
        (":path", "/mcp/"),
        ("authorization", auth.as_str()),
    ];
    assert_eq!(open_with(&mut f, &mut m, 6, &headers, true), Action::Continue);
    m.streams.get_mut(&6).unwrap().body = tool_call("delete_repo");
    let n = m.stream(6).body.len();
    assert_eq!(f.on_request_body(&mut m, n, true), Action::Pause);
    assert_eq!(m.sent(6).unwrap().status, 403);
    // A GET, or a POST without a body, has no tool call: its path is not read.
    let get = [(":method", "GET"), (":path", "/MCP"), ("authorization", auth.as_str())];
    assert_eq!(open_with(&mut f, &mut m, 7, &get, false), Action::Continue);
    let bodiless = [(":method", "POST"), (":path", "/MCP"), ("authorization", auth.as_str())];
    assert_eq!(open_with(&mut f, &mut m, 8, &bodiless, false), Action::Continue);
}
