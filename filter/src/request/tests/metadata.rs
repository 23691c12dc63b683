//! The RFC 9728 metadata document, served without a token.

use super::*;

#[test]
fn metadata_endpoint_is_served_without_auth() {
    let (mut f, mut m) = (filter(), Mock::new());
    m.open(
        2,
        &[
            (":method", "GET"),
            (":authority", "127.0.0.1:8080"),
            (":path", "/.well-known/oauth-protected-resource/mcp?x=1"),
        ],
    );
    assert_eq!(f.on_request_headers(&mut m, false), Action::Pause);
    let s = m.sent(2).unwrap();
    assert_eq!(s.status, 200);
    assert_eq!(s.header("access-control-allow-origin"), Some("*"));
    let doc: serde_json::Value = serde_json::from_str(&s.body).unwrap();
    assert_eq!(doc["resource"], "http://127.0.0.1:8080/mcp");
    assert_eq!(doc["authorization_servers"], json!([ISS]));
    m.open(
        3,
        &[
            (":method", "OPTIONS"),
            (":authority", "127.0.0.1:8080"),
            (":path", "/.well-known/oauth-protected-resource/mcp"),
        ],
    );
    f.on_request_headers(&mut m, false);
    assert_eq!(m.sent(3).unwrap().status, 204);
    m.open(
        4,
        &[
            (":method", "POST"),
            (":authority", "127.0.0.1:8080"),
            (":path", "/.well-known/oauth-protected-resource/mcp"),
        ],
    );
    f.on_request_headers(&mut m, false);
    assert_eq!(m.sent(4).unwrap().status, 405);
    // Other well-known paths are not ours.
    m.open(
        5,
        &[
            (":method", "GET"),
            (":path", "/.well-known/oauth-protected-resource/other"),
        ],
    );
    f.on_request_headers(&mut m, false);
    assert_eq!(m.sent(5).unwrap().status, 401);
}
