//! An RFC 7662 introspection answer, as the filter reads it
//! (`request::introspection::call::read`) and checks it
//! (`token::introspection::check`) for the fixed issuer and audience.
//!
//! Input: one byte, then the `:status` header's value up to the first
//! newline, then the body. The byte's bit 0 sets `requireAudience`, bit 1
//! sends no headers at all (a failed callout), bit 2 a truncated body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use token_exchange_filter::fuzzing::introspection::read;
use token_exchange_filter::fuzzing::introspection::{check, Answer, Expect};
use token_exchange_filter::fuzzing::CalloutResponse;
use token_exchange_fuzz::{AUDIENCE, ISSUER, NOW};

const SKEW: u64 = 60;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (status, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let headers = match flags & 2 {
        0 => vec![(":status".to_string(), String::from_utf8_lossy(status).into_owned())],
        _ => Vec::new(),
    };
    let resp = CalloutResponse {
        headers,
        body: body.to_vec(),
        truncated: flags & 4 != 0,
    };
    let Ok(Answer::Active(claims)) = read(&resp) else {
        return;
    };
    assert_eq!(claims.get("active"), Some(&Value::Bool(true)));
    let audiences = [AUDIENCE.to_string()];
    let expect = Expect {
        issuer: ISSUER,
        audiences: &audiences,
        require_audience: flags & 1 != 0,
        skew: SKEW,
    };
    let Ok(p) = check(&claims, &expect, NOW, NOW + 60) else {
        return;
    };
    // What passes names someone, has not expired, and is for us.
    assert!(p.sub.as_deref().is_some_and(|s| !s.trim().is_empty()));
    assert!(NOW <= p.exp.saturating_add(SKEW));
    if let Some(iss) = claims.get("iss") {
        assert_eq!(iss.as_str(), Some(ISSUER));
    }
    match claims.get("aud") {
        None => assert!(flags & 1 == 0),
        Some(Value::String(a)) => assert_eq!(a, AUDIENCE),
        Some(aud) => assert!(aud.as_array().is_some_and(|l| l.iter().any(|a| a == AUDIENCE))),
    }
});
