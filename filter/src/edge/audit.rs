//! The audit log: one JSON line per decision, for the people who must later
//! answer "who reached which backend, when, and why was this refused". It
//! holds identities and reasons, never a token or a secret; serde_json
//! escapes whatever a token's claims contain, so a claim cannot forge lines.
//! `audit: false` turns it off.

use serde_json::json;

/// One decision about one request.
pub struct Entry<'a> {
    pub now_ms: u64,
    pub sub: Option<&'a str>,
    pub client: Option<&'a str>,
    /// The route's issuer and protected resource, once the route is known.
    pub issuer: Option<&'a str>,
    pub resource: Option<&'a str>,
    /// `allow`, `deny` or `skip`.
    pub decision: &'static str,
    /// The denial's reason, or `ok`.
    pub reason: &'a str,
    pub status: Option<u32>,
    /// The exchange target (audience, resource or scope), if any.
    pub target: Option<&'a str>,
    /// `hit`, `miss`, or none when no exchange was involved.
    pub cache: Option<&'static str>,
    pub latency_ms: Option<u64>,
}

impl Entry<'_> {
    pub fn line(&self) -> String {
        json!({
            "time": rfc3339(self.now_ms),
            "sub": self.sub,
            "client": self.client,
            "iss": self.issuer,
            "resource": self.resource,
            "decision": self.decision,
            "reason": self.reason,
            "status": self.status,
            "target": self.target,
            "cache": self.cache,
            "latency_ms": self.latency_ms,
        })
        .to_string()
    }
}

/// `2026-11-23T10:15:30.123Z`.
pub(crate) fn rfc3339(ms: u64) -> String {
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(1_709_208_000_000), "2024-02-29T12:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_line_escapes_what_claims_contain() {
        let e = Entry {
            now_ms: 0,
            sub: Some("evil\n{\"decision\":\"allow\"}"),
            client: None,
            issuer: Some("https://i"),
            resource: None,
            decision: "deny",
            reason: "invalid signature",
            status: Some(401),
            target: None,
            cache: None,
            latency_ms: None,
        };
        let line = e.line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["sub"], "evil\n{\"decision\":\"allow\"}");
    }
}
