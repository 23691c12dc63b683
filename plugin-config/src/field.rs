//! Checks of single values that every section shares: non-empty strings,
//! scope lists, token type names, request paths.

use crate::error::ConfigError;

/// A `typ` value as compared: lower-case, without `application/` (RFC 7515 §4.1.9).
pub fn token_type_name(t: &str) -> String {
    let t = t.trim().to_ascii_lowercase();
    t.strip_prefix("application/").map(String::from).unwrap_or(t)
}

pub(crate) fn non_empty(path: &str, v: &str) -> Result<(), ConfigError> {
    if v.trim().is_empty() {
        return Err(ConfigError::new(path, "must not be empty"));
    }
    Ok(())
}

/// Scopes end up inside quoted header parameters, so they must be RFC 6749
/// scope-tokens: printable ASCII without space, `"` or `\`.
pub(crate) fn scope_list(path: &str, scopes: &[String]) -> Result<(), ConfigError> {
    for (i, s) in scopes.iter().enumerate() {
        let p = format!("{path}[{i}]");
        non_empty(&p, s)?;
        let ok = s
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !ok {
            return Err(ConfigError::new(
                p,
                format!("{s:?} is not a valid scope: use printable ASCII without spaces, '\"' or '\\'"),
            ));
        }
    }
    Ok(())
}

/// A path the filter matches requests against (`rules[].match.pathPrefix`,
/// `mcp.path`): plain, so that every reading of a request is compared with
/// one text. No query or fragment, escapes, backslashes, `;` parameters,
/// `//`, or `.` and `..` segments.
pub(crate) fn plain_path(path: &str, p: &str) -> Result<(), ConfigError> {
    let plain = p.starts_with('/')
        && !p.contains(['?', '#', '%', '\\', ';'])
        && !p.contains("//")
        && !p.split('/').any(|s| s == "." || s == "..");
    if !plain {
        return Err(ConfigError::new(
            path,
            format!(
                "must be a plain path starting with '/', without '?', '#', '%', '\\', ';', '//' or '.' and '..' \
                 segments; got {p:?}"
            ),
        ));
    }
    Ok(())
}
