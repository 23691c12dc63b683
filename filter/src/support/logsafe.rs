//! Text from a token, an IdP or a metadata document as it may go into a
//! log line. Such text is attacker-chosen (an issuer signs whatever `sub` it
//! is given), so it is bounded and escaped: it can neither forge log lines
//! nor hide what it says.

/// Characters of such text kept in a log line.
pub const MAX_EXCERPT: usize = 200;

/// Text from a document as it may go into a log line: bounded, with control
/// characters, quotes, backslashes and anything beyond ASCII escaped, so that
/// it can neither forge log lines nor hide what it says.
pub fn excerpt(s: &str) -> String {
    let short = cut(s, MAX_EXCERPT);
    let mut out = String::with_capacity(short.len() + 3);
    for c in short.chars() {
        if matches!(c, ' '..='~') && c != '"' && c != '\\' {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    if short.len() < s.len() {
        out.push_str("...");
    }
    out
}

/// The first `max` characters of `s`.
pub fn cut(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}
