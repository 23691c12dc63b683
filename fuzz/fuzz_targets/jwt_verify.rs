//! JWT parsing and verification against the fixed JWKS.
//!
//! The first byte picks the mode and the clock: an even byte ('0') means the
//! rest is the token itself; an odd one ('1') means the rest is
//! `header JSON \n payload JSON`, which the target signs with the fixed
//! Ed25519 key, so fuzzed headers and claims get past the signature to the
//! claim checks. `(byte / 2) % 3` picks the clock: NOW ('0' and '1'), 0 or
//! u64::MAX. RS256 tokens signed with the fixed RSA key are `jwt_rs256`'s.
#![no_main]

use libfuzzer_sys::fuzz_target;
use token_exchange_fuzz::{check_verdict, forge_ed25519, keyset, split_line, verifier, NOW};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let now = [NOW, 0, u64::MAX][usize::from(mode / 2) % 3];
    let token = if mode % 2 == 0 {
        match std::str::from_utf8(rest) {
            Ok(t) => t.to_string(),
            Err(_) => return,
        }
    } else {
        let (header, payload) = split_line(rest);
        forge_ed25519(header, payload)
    };
    let mut signatures = 0;
    let verdict = verifier().verify(keyset(), &token, now, &mut signatures);
    assert!(signatures <= keyset().len() as u64);
    check_verdict(&token, now, &verdict);
});
