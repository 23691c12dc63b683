//! Per-resource tool gates: `rules[].mcp` merged over the top-level `mcp`.

use super::*;

/// The GitHub and Jira servers of `two_servers`, with a top-level `mcp`.
fn gated(github_mcp: serde_json::Value) -> serde_json::Value {
    let mut v = two_servers();
    v["mcp"] = serde_json::json!({"toolScopes": {"shutdown": ["ops:admin"]}, "maxBodyBytes": 500});
    v["rules"][0]["mcp"] = github_mcp;
    v
}

fn rule_mcp(c: &Config, i: usize) -> Option<&Mcp> {
    match &c.rules[i].action {
        RuleAction::Apply { mcp, .. } => mcp.as_ref(),
        RuleAction::Skip => panic!("rule {i} is a skip"),
    }
}

fn tools(pairs: &[(&str, &str)]) -> Vec<(String, Vec<String>)> {
    pairs
        .iter()
        .map(|(t, s)| (t.to_string(), vec![s.to_string()]))
        .collect()
}

#[test]
fn a_rules_mcp_is_merged_over_the_top_level_key_by_key() {
    let c = parse_value(&gated(
        serde_json::json!({"toolScopes": {"delete_repo": ["repo:admin"]}}),
    ))
    .unwrap();
    let gh = rule_mcp(&c, 0).unwrap();
    assert_eq!(gh.path, "/github/mcp", "its own resource's path");
    assert_eq!(
        gh.tool_scopes,
        tools(&[("delete_repo", "repo:admin")]),
        "replaced whole"
    );
    assert_eq!(gh.max_body_bytes, 500, "inherited");
    assert!(rule_mcp(&c, 1).is_none(), "Jira keeps the top-level gate");
    let top = c.mcp.as_ref().unwrap();
    assert_eq!(top.path, "/github/mcp", "the first resource's path, as before");
    assert_eq!(top.tool_scopes, tools(&[("shutdown", "ops:admin")]));

    // Keys it does not set come from the top-level section; its own win.
    let c = parse_value(&gated(serde_json::json!({"path": "/github/rpc", "maxBodyBytes": 64}))).unwrap();
    let gh = rule_mcp(&c, 0).unwrap();
    assert_eq!((gh.path.as_str(), gh.max_body_bytes), ("/github/rpc", 64));
    assert_eq!(gh.tool_scopes, tools(&[("shutdown", "ops:admin")]), "inherited");

    // An empty map turns the gate off for the rule.
    let c = parse_value(&gated(serde_json::json!({"toolScopes": {}}))).unwrap();
    assert!(rule_mcp(&c, 0).unwrap().tool_scopes.is_empty());
}

#[test]
fn a_rules_mcp_needs_no_top_level_one_and_not_its_path() {
    let mut v = two_servers();
    v["rules"][1]["mcp"] = serde_json::json!({"toolScopes": {"close_issue": ["jira:admin"]}});
    let c = parse_value(&v).unwrap();
    assert!(c.mcp.is_none());
    let jira = rule_mcp(&c, 1).unwrap();
    assert_eq!(jira.path, "/jira/mcp");
    assert_eq!(jira.max_body_bytes, 1 << 20, "the default");
    // A rule with only mcp changes something: it is not refused as empty.
    let mut v = base();
    v["rules"] = serde_json::json!([{"match": {"pathPrefix": "/a/"}, "mcp": {"path": "/a/mcp",
        "toolScopes": {"t": ["s"]}}}]);
    assert_eq!(rule_mcp(&parse_value(&v).unwrap(), 0).unwrap().path, "/a/mcp");
}

#[test]
fn the_top_level_path_is_not_a_rules() {
    // An explicit top-level path (outside /github/) stays the top-level
    // policy's and the inheriting rules'; GitHub's own gate is at its resource.
    let mut v = gated(serde_json::json!({"toolScopes": {"delete_repo": ["repo:admin"]}}));
    v["mcp"]["path"] = "/mcp".into();
    let c = parse_value(&v).unwrap();
    assert_eq!(rule_mcp(&c, 0).unwrap().path, "/github/mcp");
    assert_eq!(c.mcp.as_ref().unwrap().path, "/mcp");
}

#[test]
fn rule_mcp_errors_name_the_rule() {
    for (github_mcp, path) in [
        (
            serde_json::json!({"toolScopes": {"t": []}}),
            "rules[0].mcp.toolScopes.t",
        ),
        (
            serde_json::json!({"toolScopes": {"t": ["a b"]}}),
            "rules[0].mcp.toolScopes.t[0]",
        ),
        (serde_json::json!({"path": "github/mcp"}), "rules[0].mcp.path"),
        (serde_json::json!({"maxBodyBytes": 0}), "rules[0].mcp.maxBodyBytes"),
        (
            serde_json::json!({"maxBodyBytes": (16 << 20) + 1}),
            "rules[0].mcp.maxBodyBytes",
        ),
        (serde_json::json!({"toolScope": {}}), "rules[0].mcp"),
        // Its endpoint outside its pathPrefix would never be judged.
        (serde_json::json!({"path": "/jira/mcp"}), "rules[0].mcp.path"),
    ] {
        let e = parse_value(&gated(github_mcp.clone())).unwrap_err();
        assert!(e.path.starts_with(path), "{github_mcp}: {e}");
    }
    // The top-level section's faults are named there, before any rule's.
    let mut v = gated(serde_json::json!({"path": "/github/rpc"}));
    v["mcp"]["maxBodyBytes"] = 0.into();
    assert_eq!(parse_value(&v).unwrap_err().path, "mcp.maxBodyBytes");
    // Without a resource and without a path, the rule's path is wanted.
    let mut v = two_servers();
    v["rules"][1]["oidc"].as_object_mut().unwrap().remove("resourceUrl");
    v["rules"][1]["mcp"] = serde_json::json!({"toolScopes": {"t": ["a"]}});
    assert_eq!(parse_value(&v).unwrap_err().path, "rules[1].mcp.path");
    // Outside the prefix is fine without tools (nothing to gate).
    assert!(parse_value(&gated(serde_json::json!({"path": "/jira/mcp", "toolScopes": {}}))).is_ok());
}

#[test]
fn a_skipped_rule_has_no_gate() {
    let mut v = two_servers();
    v["rules"][2]["mcp"] = serde_json::json!({"path": "/mcp", "toolScopes": {"t": ["a"]}});
    let e = parse_value(&v).unwrap_err();
    assert_eq!(e.path, "rules[2].mcp", "{e}");
    assert!(e.message.contains("remove mcp"), "{e}");
}
