use super::*;

fn found(path: &str) -> Result<Rewrites, Unjudgeable> {
    rewrites(path.as_bytes())
}

fn full(path: &str) -> String {
    let with = found(path).unwrap();
    String::from_utf8(rewrite(path.as_bytes(), with)).unwrap()
}

#[test]
fn plain_paths_need_no_rewrite() {
    for p in ["/", "/mcp", "/mcp/", "/v1.2/x..y/.z", "/MCP", "/a-b_c~d"] {
        assert_eq!(found(p), Ok(Rewrites::default()), "{p}");
    }
}

#[test]
fn each_rewrite_is_found_and_applied() {
    for (path, rewrite, read) in [
        ("/%6Dcp", Rewrites::DECODE, "/mcp"),
        ("/%41%2d%5F%7e%2E", Rewrites::DECODE, "/A-_~."),
        ("/caf%C3%A9%20x%25", Rewrites::default(), "/caf%C3%A9%20x%25"),
        ("/mcp%2Fx%2f", Rewrites::ENCODED_SLASHES, "/mcp/x/"),
        ("/mcp%5C", Rewrites::ENCODED_SLASHES, "/mcp/"),
        ("/mcp\\x", Rewrites::BACKSLASHES, "/mcp/x"),
        ("/mcp;x=1/a;b", Rewrites::PARAMS, "/mcp/a"),
        ("//mcp///x//", Rewrites::SLASHES, "/mcp/x/"),
        ("/x/../mcp", Rewrites::DOTS, "/mcp"),
        ("/mcp/.", Rewrites::DOTS, "/mcp/"),
        ("/a/b/..", Rewrites::DOTS, "/a/"),
        ("/../../mcp/./x/.", Rewrites::DOTS, "/mcp/x/"),
        (
            "/%4D%43P;v=1",
            Rewrites(Rewrites::DECODE.0 | Rewrites::PARAMS.0),
            "/MCP",
        ),
    ] {
        assert_eq!(found(path), Ok(rewrite), "{path}");
        assert_eq!(full(path), read, "{path}");
    }
}

#[test]
fn dots_resolve_as_rfc_3986_says() {
    // RFC 3986 §5.4: remove_dot_segments keeps empty segments.
    let dots = |p: &str| String::from_utf8(remove_dot_segments(p.as_bytes())).unwrap();
    assert_eq!(dots("/a/b/c/./../../g"), "/a/g");
    assert_eq!(dots("/a//../b"), "/a/b");
    assert_eq!(dots("/.."), "/");
    assert_eq!(dots("/a/./"), "/a/");
}

#[test]
fn paths_that_need_two_segment_rewrites_are_tangled() {
    for p in [
        "/a/..;/admin",    // parameters, then dots (Tomcat's reading)
        "/a//../admin",    // slashes and dots: `/admin` merged first, `/a/admin` by RFC 3986
        "/a/%2e%2e/admin", // decoding makes the dots
        "/%61/../admin",   // decoded and resolved
        "/a%2F..%2Fadmin", // encoded slashes make the dot segment
        "/a\\b%2Fc",       // both kinds of slash
        "/mcp;x//",        // parameters and slashes
    ] {
        assert_eq!(found(p), Err(Unjudgeable::Tangled), "{p}");
    }
}

#[test]
fn bad_escapes_and_relative_paths_are_malformed() {
    for p in ["/a%zz", "/a%4", "/a%", "mcp", "", "*"] {
        assert_eq!(found(p), Err(Unjudgeable::Malformed), "{p:?}");
    }
}

#[test]
fn subsets_cover_every_combination() {
    let with = Rewrites(Rewrites::DECODE.0 | Rewrites::PARAMS.0);
    let all: Vec<u8> = with.subsets().map(|s| s.0).collect();
    assert_eq!(all, vec![9, 8, 1, 0]);
    assert_eq!(Rewrites::default().subsets().count(), 1);
}

#[test]
fn prefixes_cover_their_slashless_twin_and_endpoints_both() {
    let [exact, folded] = Reading::all(b"/admin");
    assert!(exact.starts_with("/admin/") && exact.starts_with("/adm") && !exact.starts_with("/admin/x"));
    assert!(!Reading::exact(b"/administrator").starts_with("/admin/"));
    assert!(!exact.starts_with("/Admin/") && folded.starts_with("/Admin/"));
    assert!(Reading::exact(b"/").starts_with("/") && Reading::exact(b"/x").starts_with("/"));
    for p in ["/mcp", "/mcp/"] {
        assert!(
            Reading::exact(p.as_bytes()).is("/mcp") && Reading::exact(p.as_bytes()).is("/mcp/"),
            "{p}"
        );
    }
    let [exact, folded] = Reading::all(b"/MCP/");
    assert!(!exact.is("/mcp") && folded.is("/mcp"));
    assert!(!Reading::exact(b"/mcpx").is("/mcp") && !Reading::exact(b"/mcp//").is("/mcp"));
    assert!(Reading::exact(b"/").is("/") && !Reading::exact(b"/x").is("/"));
}
