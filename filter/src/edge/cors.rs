//! Browser clients. The filter answers before any CORS filter would, so it
//! must be CORS-aware itself: a preflight never carries credentials and is
//! let through to whatever answers it; the filter's own 401, 403 and
//! metadata replies carry the headers a page needs to read them (above all
//! `WWW-Authenticate`), for the origins the config allows.

use crate::host::Host;
use plugin_config::Cors;

/// An `OPTIONS` with `Origin` and `Access-Control-Request-Method`. Only asked
/// about requests without credentials, so the hot path reads nothing more.
pub fn is_preflight(host: &dyn Host) -> bool {
    host.request_header(":method").as_deref() == Some("OPTIONS")
        && host.request_header("origin").is_some()
        && host.request_header("access-control-request-method").is_some()
}

/// The headers for a reply of ours to the current request, when its
/// `Origin` is allowed.
pub fn reply_headers(cors: &Cors, host: &dyn Host) -> Option<[(&'static str, String); 3]> {
    let origin = host.request_header("origin")?;
    if !cors.allows(&origin) {
        return None;
    }
    let allow = if cors.allowed_origins.iter().any(|o| o == "*") {
        "*".to_string()
    } else {
        origin
    };
    Some([
        ("access-control-allow-origin", allow),
        ("access-control-expose-headers", "WWW-Authenticate".to_string()),
        ("vary", "Origin".to_string()),
    ])
}
