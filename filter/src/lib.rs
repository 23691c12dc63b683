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

pub mod edge;
pub mod exchange;
pub mod host;
pub mod keys;
pub mod request;
pub mod support;
pub mod token;

#[cfg(test)]
mod testkeys;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    host::wasm::start::<request::Filter>();
}}
