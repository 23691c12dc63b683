//! The RFC 9728 documents the filter serves, by host and path: each
//! resource's at its own well-known path on its own host (other hosts'
//! well-known paths are theirs). Found with a lookup or two, so a gateway
//! of many resources pays nothing per document.

use crate::edge::challenge::metadata_document;
use crate::request::outcome::Reply;
use crate::request::routes::{host_matches, host_name};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// Metadata is public: any page may read it.
const ANY_ORIGIN: (&str, &str) = ("access-control-allow-origin", "*");

struct Document {
    /// The resource URL's host, with its port when the URL names one.
    host: String,
    path: String,
    body: Rc<str>,
}

pub struct Documents {
    /// By host name (lower-case, no port).
    by_host: HashMap<String, Vec<Document>>,
    paths: HashSet<String>,
}

impl Documents {
    pub fn new(metadata: &[plugin_config::Metadata]) -> Documents {
        let mut by_host: HashMap<String, Vec<Document>> = HashMap::new();
        for m in metadata {
            by_host
                .entry(host_name(&m.host).to_string())
                .or_default()
                .push(Document {
                    host: m.host.clone(),
                    path: m.path.clone(),
                    body: metadata_document(m).into(),
                });
        }
        Documents {
            by_host,
            paths: metadata.iter().map(|m| m.path.clone()).collect(),
        }
    }

    /// Whether a request to `authority` may be for a document (`None`: the
    /// authority was not read, so any may).
    pub fn may_serve(&self, authority: Option<&str>) -> bool {
        match authority {
            None => !self.paths.is_empty(),
            Some(a) => self.by_host.contains_key(host_name(a)),
        }
    }

    /// Whether `path` (query cut) is some document's.
    pub fn has_path(&self, path: &str) -> bool {
        self.paths.contains(without_query(path))
    }

    /// The answer to a metadata request for `path` on `authority`, which
    /// needs no authentication; `None` for any other request.
    pub fn reply(&self, authority: &str, path: &str, method: &str) -> Option<Reply> {
        let path = without_query(path);
        let doc = self
            .by_host
            .get(host_name(authority))?
            .iter()
            .find(|d| d.path == path && host_matches(&d.host, authority))?;
        Some(match method {
            "GET" | "HEAD" => Reply {
                status: 200,
                headers: &[
                    ("content-type", "application/json"),
                    ("cache-control", "max-age=300"),
                    ANY_ORIGIN,
                ],
                body: Rc::clone(&doc.body),
            },
            "OPTIONS" => Reply {
                status: 204,
                headers: &[
                    ANY_ORIGIN,
                    ("access-control-allow-methods", "GET, HEAD, OPTIONS"),
                    ("access-control-allow-headers", "authorization, mcp-protocol-version"),
                    ("access-control-max-age", "86400"),
                ],
                body: Rc::from(""),
            },
            _ => Reply {
                status: 405,
                headers: &[("allow", "GET, HEAD, OPTIONS")],
                body: Rc::from(""),
            },
        })
    }
}

fn without_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}
