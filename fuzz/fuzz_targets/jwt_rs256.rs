//! The filter's own RS256 path (`keys::rsa`, through `keys::signature`) on tokens
//! whose header and claims are fuzzed and whose signature is good: the input
//! is `header JSON \n payload JSON`, signed with the fixed RSA key, then
//! verified at NOW against the fixed JWKS. jwt-simple's RSA verifies the
//! same token, and the two must agree on the signature. RSA signing makes
//! this target slow (~100 executions a second); `jwt_verify` does the rest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use token_exchange_fuzz::{check_verdict, forge_rs256, keyset, split_line, verifier, NOW};

fuzz_target!(|data: &[u8]| {
    let (header, payload) = split_line(data);
    let token = forge_rs256(header, payload);
    let mut signatures = 0;
    let verdict = verifier().verify(keyset(), &token, NOW, &mut signatures);
    assert!(signatures <= keyset().len() as u64);
    check_verdict(&token, NOW, &verdict);
});
