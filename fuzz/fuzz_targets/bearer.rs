//! `bearer::extract` on any Authorization header value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use token_exchange_filter::fuzzing::{extract, Bearer};

fuzz_target!(|data: &[u8]| {
    // Header values reach the filter as strings.
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    match extract(Some(value)) {
        Bearer::Token(t) => {
            // RFC 6750 b64token: never empty, only its alphabet, `=` only at the end.
            let body = t.trim_end_matches('=');
            assert!(!body.is_empty(), "empty token from {value:?}");
            assert!(
                body.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)),
                "token {t:?} from {value:?}"
            );
            assert!(value.contains(t));
        }
        Bearer::Multiple => assert!(value.contains(',')),
        Bearer::Missing | Bearer::Malformed => {}
    }
});
