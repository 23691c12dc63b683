//! `Exchanger::answer` and `Exchanger::actor_answer`: the token endpoint's
//! answers (and Google's impersonation step's, id-jag's resource AS's, the
//! actor token's client credentials grant's), for every provider dialect.
//!
//! Input: one byte, then the `:status` header's value up to the first
//! newline, then the body. The byte's low two bits pick the exchanger (see
//! `exchange_sections`), bit 2 the step (token / impersonation; with bit 7:
//! assertion grant / actor token), bit 3 a late answer (elapsed ≥ timeout),
//! bit 4 a truncated body, and bit 5 no headers at all (a failed callout).
#![no_main]

use libfuzzer_sys::fuzz_target;
use token_exchange_filter::fuzzing::CalloutResponse;
use token_exchange_filter::fuzzing::{Next, Stamp, Step};
use token_exchange_fuzz::{exchangers, SUBJECT};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let ex = &exchangers()[usize::from(flags & 3)];
    let step = match (flags & 4 != 0, flags & 0x80 != 0) {
        (false, false) => Step::Token,
        (true, false) => Step::Impersonate,
        (false, true) => Step::Assertion,
        (true, true) => Step::Actor,
    };
    let elapsed_ms = if flags & 8 == 0 { 10 } else { 5_000 };
    let (status, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let headers = if flags & 32 == 0 {
        vec![
            (":status".to_string(), String::from_utf8_lossy(status).into_owned()),
            ("content-type".to_string(), "application/json".to_string()),
        ]
    } else {
        Vec::new()
    };
    let resp = CalloutResponse {
        headers,
        body: body.to_vec(),
        truncated: flags & 16 != 0,
    };
    let stamp = Stamp {
        now_ms: 0,
        jti: "jti-1".into(),
    };
    let answered = match step {
        Step::Actor => ex.actor_answer(&resp, elapsed_ms).map(Next::Done),
        _ => ex.answer(step, &resp, elapsed_ms, SUBJECT, &stamp),
    };
    match answered {
        Ok(Next::Done(e)) => {
            // It goes into a request header as `Bearer <token>`.
            assert!(!e.access_token.is_empty());
            assert!(e.access_token.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        }
        Ok(Next::Then(call)) => {
            assert_eq!(call.step, Step::Impersonate);
            let _ = call.header_pairs();
        }
        Err(f) => {
            let _ = f.outcome();
        }
    }
});
