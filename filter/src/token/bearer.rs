//! Finding the bearer token: only in `Authorization: Bearer`, never in a query
//! string or body (RFC 6750 §2.1 only, as the MCP authorization spec requires).

#[derive(Debug, PartialEq, Eq)]
pub enum Bearer<'a> {
    /// No Authorization header, or one with another scheme.
    Missing,
    /// More than one Authorization header: ambiguous, so refused.
    Multiple,
    /// `Bearer` with an empty or syntactically invalid token.
    Malformed,
    Token(&'a str),
}

/// Reads the bearer token from the Authorization header's value. The proxy
/// joins a repeated header with commas, and no bearer token contains one, so a
/// comma means the header came more than once.
pub fn extract(authorization: Option<&str>) -> Bearer<'_> {
    let Some(value) = authorization else {
        return Bearer::Missing;
    };
    if value.contains(',') {
        return Bearer::Multiple;
    }
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Bearer::Missing;
    }
    let token = rest.trim_start_matches(' ');
    if is_b64token(token) {
        Bearer::Token(token)
    } else {
        Bearer::Malformed
    }
}

/// RFC 6750 §2.1: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_is_case_insensitive() {
        for v in [
            "Bearer abc.def",
            "bearer abc.def",
            "BEARER   abc.def",
            " Bearer abc.def ",
        ] {
            assert_eq!(extract(Some(v)), Bearer::Token("abc.def"), "{v}");
        }
    }

    #[test]
    fn missing_other_scheme_multiple_malformed() {
        assert_eq!(extract(None), Bearer::Missing);
        assert_eq!(extract(Some("Basic dTpw")), Bearer::Missing);
        assert_eq!(extract(Some("Bearerabc")), Bearer::Missing);
        // Envoy's view of two Authorization headers.
        assert_eq!(extract(Some("Bearer a,Bearer b")), Bearer::Multiple);
        assert_eq!(extract(Some("Basic x, Bearer b")), Bearer::Multiple);
        for v in ["Bearer", "Bearer ", "Bearer a b", "Bearer a\"b", "Bearer ==="] {
            assert_eq!(extract(Some(v)), Bearer::Malformed, "{v}");
        }
    }

    #[test]
    fn padding_allowed_at_the_end() {
        assert_eq!(extract(Some("Bearer ab+/c==")), Bearer::Token("ab+/c=="));
    }
}
