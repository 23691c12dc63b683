//! `KeySet::parse` on any JWKS document; the keys it loads then meet the
//! fixed tokens (RS256, ES256, EdDSA), so fuzzed RSA moduli reach the fast
//! RSA path. Each key is imported for exactly the algorithms jwt-simple's
//! import takes it for. Also `jwks::max_age` on the same bytes as a
//! Cache-Control value.
#![no_main]

use jwt_simple::prelude::*;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use token_exchange_filter::fuzzing::{max_age, Alg, KeySet};
use token_exchange_fuzz::{
    check_jwk_import, es256, forge_ed25519, forge_rs256, good_claims, good_header, verifier, NOW,
};

fn tokens() -> &'static [String] {
    static T: OnceLock<Vec<String>> = OnceLock::new();
    T.get_or_init(|| {
        let claims = good_claims();
        let es = serde_json::from_str::<JWTClaims<serde_json::Value>>(&claims)
            .ok()
            .and_then(|c| es256().sign(c).ok())
            .unwrap_or_default();
        vec![
            forge_rs256(good_header("RS256", "rsa-1").as_bytes(), claims.as_bytes()),
            forge_rs256(br#"{"alg":"RS256"}"#, claims.as_bytes()),
            forge_ed25519(good_header("EdDSA", "ed-1").as_bytes(), claims.as_bytes()),
            es,
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = max_age(s);
    }
    check_jwk_import(data);
    let Ok((set, _skipped)) = KeySet::parse(data) else {
        return;
    };
    assert!(!set.is_empty());
    let total: usize = Alg::ALL.iter().map(|&a| set.candidates(a, None).count()).sum();
    assert_eq!(total, set.len());
    for token in tokens() {
        let mut signatures = 0;
        let _ = verifier().verify(&set, token, NOW, &mut signatures);
    }
});
