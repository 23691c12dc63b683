//! One new user's RS256 check, repeated: `rsa_cost filter|crate N` verifies
//! the same RS256 token N times with the filter's PKCS#1 check
//! (`keys::rsa`) or with the `rsa` crate's own (`pkcs1v15::VerifyingKey`),
//! on the same key. `tests/bench/rsa_cost.sh` runs it under callgrind and
//! prints instructions per check, the steadiest measure on a shared machine.
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use std::hint::black_box;
use token_exchange_filter::fuzzing::{rsa_verify as verify, Alg};

const PEM: &str = include_str!("../src/testdata/rsa1.pem");

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_default();
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1);
    let private = rsa::PrivateKey::from_pkcs8_pem(PEM).expect("the test key");
    let public = rsa::PublicKey::from(&private);
    let message = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";
    let signature = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(private)
        .sign(message)
        .to_vec();
    let crate_key = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(public.clone());
    let crate_signature = rsa::pkcs1v15::Signature::try_from(signature.as_slice()).expect("a signature");
    let mut good = 0;
    for _ in 0..n {
        let ok = match which.as_str() {
            "filter" => verify(
                black_box(&public),
                Alg::RS256,
                black_box(message),
                black_box(&signature),
            ),
            "crate" => crate_key
                .verify(black_box(message), black_box(&crate_signature))
                .is_ok(),
            _ => false,
        };
        good += usize::from(ok);
    }
    println!("{which}: {good} of {n} verified");
    assert_eq!(good, n);
}
