//! Scopes per tool (`mcp.toolScopes`, top-level or a rule's): a `tools/call`
//! of a listed tool needs its scopes as well as the route's. Each policy
//! has its own (`request::policy`). The JSON-RPC body is read only for a
//! POST to the policy's MCP endpoint with the map configured
//! (`request::path` decides which paths are the endpoint, over all their
//! readings), and only up to `mcp.maxBodyBytes`; a batch is judged by its
//! strictest member.

use plugin_config::Mcp;
use serde_json::Value;

/// Why a body cannot be judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    TooLarge,
    /// Not JSON, or compressed: the filter cannot see which tool is called,
    /// so it does not let the request through.
    Unreadable,
}

pub struct Tools {
    path: String,
    scopes: Vec<(String, Vec<String>)>,
    pub max_body_bytes: usize,
}

impl Tools {
    pub fn new(mcp: &Mcp) -> Option<Tools> {
        (!mcp.tool_scopes.is_empty()).then(|| Tools {
            path: mcp.path.clone(),
            scopes: mcp.tool_scopes.clone(),
            max_body_bytes: mcp.max_body_bytes,
        })
    }

    /// The MCP endpoint's path, whose POSTs have their body read.
    pub fn endpoint(&self) -> &str {
        &self.path
    }

    /// Every scope the calls in `body` need (none for other methods and
    /// unlisted tools).
    pub fn required(&self, body: &[u8]) -> Result<Vec<String>, BodyError> {
        if body.len() > self.max_body_bytes {
            return Err(BodyError::TooLarge);
        }
        let value: Value = serde_json::from_slice(body).map_err(|_| BodyError::Unreadable)?;
        let messages = match &value {
            Value::Array(batch) => batch.iter().collect(),
            one => vec![one],
        };
        let mut needed: Vec<String> = Vec::new();
        for m in messages {
            if m.get("method").and_then(Value::as_str) != Some("tools/call") {
                continue;
            }
            let name = m.get("params").and_then(|p| p.get("name")).and_then(Value::as_str);
            let Some((_, scopes)) = self.scopes.iter().find(|(t, _)| Some(t.as_str()) == name) else {
                continue;
            };
            for s in scopes {
                if !needed.contains(s) {
                    needed.push(s.clone());
                }
            }
        }
        Ok(needed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Tools {
        Tools::new(&Mcp {
            path: "/mcp".into(),
            tool_scopes: vec![
                ("delete_repo".into(), vec!["repo:admin".into()]),
                ("read_file".into(), vec!["files:read".into()]),
            ],
            max_body_bytes: 1024,
        })
        .unwrap()
    }

    fn call(name: &str) -> Value {
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {}}})
    }

    #[test]
    fn listed_tools_need_their_scopes_and_others_none() {
        let t = tools();
        let req = |v: Value| t.required(v.to_string().as_bytes());
        assert_eq!(req(call("delete_repo")), Ok(vec!["repo:admin".to_string()]));
        assert_eq!(req(call("echo")), Ok(vec![]));
        assert_eq!(
            req(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})),
            Ok(vec![])
        );
        // A batch: the strictest member decides (all scopes any member needs).
        let batch = json!([call("echo"), call("read_file"), call("delete_repo"), call("read_file")]);
        assert_eq!(req(batch), Ok(vec!["files:read".to_string(), "repo:admin".to_string()]));
    }

    #[test]
    fn unreadable_or_oversize_bodies_are_refused() {
        let t = tools();
        assert_eq!(t.required(b"{not json"), Err(BodyError::Unreadable));
        assert_eq!(t.required(&[0x1f, 0x8b, 8, 0]), Err(BodyError::Unreadable), "gzip");
        let big = json!({"method": "tools/call", "params": {"name": "x", "pad": "y".repeat(2000)}});
        assert_eq!(t.required(big.to_string().as_bytes()), Err(BodyError::TooLarge));
    }

    #[test]
    fn only_with_tool_scopes() {
        assert_eq!(tools().endpoint(), "/mcp");
        assert!(Tools::new(&Mcp {
            path: "/mcp".into(),
            tool_scopes: vec![],
            max_body_bytes: 1
        })
        .is_none());
    }
}
