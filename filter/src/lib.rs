//! token-exchange-filter: a proxy-wasm HTTP filter that validates the caller's
//! OAuth bearer token at the proxy, exchanges it, and forwards the result.
//!
//! The logic is host-agnostic (`host::Host`), so everything but the thin
//! proxy-wasm glue (`host::wasm`) runs and is tested natively. The families,
//! top down: `request` is one request's way through the filter; it uses
//! `exchange` (asking the IdP for the backend's token, caching it),
//! `token` (finding and checking the caller's token), `keys` (the issuer's
//! signing keys), `edge` (what the filter answers and records), `host` (what
//! it needs from the proxy) and `support`.

// Natively the crate serves only its tests and `fuzz/`, which reach a few
// entry points; the wasm build (where clippy denies warnings) is the one
// that finds dead code.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod edge;
mod exchange;
mod host;
mod keys;
mod request;
mod support;
mod token;

#[cfg(test)]
mod testkeys;

/// What the fuzz targets (`fuzz/`) and the cost example
/// (`examples/rsa_cost.rs`) drive, and nothing else: the crate's API is the
/// proxy-wasm ABI, not Rust.
pub mod fuzzing {
    pub use crate::exchange::{Exchanger, Next, Stamp, Step};
    pub use crate::host::CalloutResponse;
    pub use crate::keys::alg::Alg;
    pub use crate::keys::jwks::{max_age, KeySet};
    pub use crate::keys::rsa::verify as rsa_verify;
    pub use crate::request::path::reading::Unjudgeable;
    pub use crate::request::path::{target, Gates, Refusal, Target};
    pub use crate::request::routes::{Route, Routes};
    pub use crate::request::Filter;
    pub use crate::token::bearer::{extract, Bearer};
    pub use crate::token::verify::{Failure, Principal, Reject, Verifier};

    /// RFC 7662 answers: the callout's reading and the checks.
    pub mod introspection {
        pub use crate::request::introspection::call::read;
        pub use crate::token::introspection::{check, Answer, Expect};
    }
}

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    host::wasm::start::<request::Filter>();
}}
