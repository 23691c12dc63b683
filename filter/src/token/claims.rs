//! `claimToHeaders`: claims of the validated token copied into request
//! headers for the upstream. Read once, when the token is verified, from its
//! payload (dotted names reach into objects); the headers are stripped from
//! every request first, so a client can never supply them itself.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use plugin_config::ClaimHeader;
use serde_json::Value;

/// Longest header value set from a claim; a longer claim is left out.
pub const MAX_VALUE_BYTES: usize = 4096;

/// `(header, value)` for each configured claim the token carries.
pub fn extract(config: &[ClaimHeader], token: &str) -> Vec<(String, String)> {
    if config.is_empty() {
        return Vec::new();
    }
    let Some(payload) = token
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return Vec::new();
    };
    from_claims(config, &payload)
}

/// `(header, value)` for each configured claim in `claims` (a JWT's
/// payload, or an introspection answer).
pub fn from_claims(config: &[ClaimHeader], claims: &Value) -> Vec<(String, String)> {
    config
        .iter()
        .filter_map(|c| {
            let v = c.claim.iter().try_fold(claims, |v, k| v.get(k))?;
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Array(items) if items.iter().all(Value::is_string) => {
                    items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")
                }
                Value::Null => return None,
                other => other.to_string(),
            };
            // Only what a header can carry safely: no control characters.
            let safe = text.len() <= MAX_VALUE_BYTES && !text.chars().any(char::is_control);
            safe.then(|| (c.header.clone(), text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(payload: Value) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(payload.to_string()))
    }

    fn ch(claim: &str, header: &str) -> ClaimHeader {
        ClaimHeader {
            claim: claim.split('.').map(String::from).collect(),
            header: header.into(),
        }
    }

    #[test]
    fn strings_lists_numbers_and_nested_claims() {
        let t = token(json!({"sub": "alice", "email": "a@example.com", "roles": ["r1", "r2"],
            "realm_access": {"roles": ["admin"]}, "age": 42, "obj": {"a": 1}}));
        let got = extract(
            &[
                ch("sub", "x-sub"),
                ch("roles", "x-roles"),
                ch("realm_access.roles", "x-realm"),
                ch("age", "x-age"),
                ch("obj", "x-obj"),
                ch("missing", "x-missing"),
                ch("sub.deeper", "x-bad"),
            ],
            &t,
        );
        assert_eq!(
            got,
            vec![
                ("x-sub".into(), "alice".into()),
                ("x-roles".into(), "r1,r2".into()),
                ("x-realm".into(), "admin".into()),
                ("x-age".into(), "42".into()),
                ("x-obj".into(), r#"{"a":1}"#.into()),
            ]
        );
    }

    #[test]
    fn values_a_header_cannot_carry_are_left_out() {
        let t = token(json!({"sub": "alice\r\nx-admin: 1", "long": "x".repeat(MAX_VALUE_BYTES + 1)}));
        assert!(extract(&[ch("sub", "x-sub"), ch("long", "x-long")], &t).is_empty());
        assert!(extract(&[ch("sub", "x-sub")], "not-a-jwt").is_empty());
    }
}
