//! The vocabulary of the `path_readings` target: plain prefixes (as the
//! config allows them), endpoints, authorities, and the characters paths
//! are made of, chosen so that random bytes spell escapes (`%2e`, `%2F`,
//! `%5c`, `%6D`), parameters, dot segments and case variants often.

pub const PREFIXES: [&str; 16] = [
    "/", "/a", "/a/", "/a/b", "/admin/", "/admin", "/Admin/", "/mcp", "/mcp/", "/MCP", "/api/", "/API/v2/", "/b", "/m",
    "/x.y", "/e/",
];
/// Each policy's tool-gate endpoint (the top-level policy's, then rules'
/// policies 1 to 3), by the input's endpoint bits: one for every policy,
/// as a top-level `mcp` alone gives; or each its own, or none.
pub const GATES: [[Option<&str>; 4]; 4] = [
    [Some("/mcp"); 4],
    [Some("/a/b"); 4],
    [Some("/mcp"), Some("/a/b"), Some("/admin/mcp"), None],
    [None, Some("/admin/mcp"), Some("/mcp"), Some("/a")],
];
pub const AUTHORITIES: [&str; 3] = ["h", "other", "api"];
pub const ALPHABET: &[u8] = b"/.%2eEfF5cC\\;aAdDmMcpP6v1b4i?n/./";

/// The input bytes that spell `path` (its characters must be in `ALPHABET`).
pub fn spell(path: &str) -> Vec<u8> {
    path.bytes()
        .map(|c| ALPHABET.iter().position(|&a| a == c).map_or(0, |i| i as u8))
        .collect()
}

/// A whole input: `head` (rule count in bits 0-2, gate in bit 3, authority
/// in bits 4-5, endpoints (`GATES`) in bits 6-7), one byte per rule, then
/// the path.
pub fn input(head: u8, rules: &[u8], path: &str) -> Vec<u8> {
    let mut v = vec![head];
    v.extend_from_slice(rules);
    v.extend(spell(path));
    v
}
