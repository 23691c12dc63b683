//! token-exchange-filter: a proxy-wasm HTTP filter that validates the caller's
//! OAuth bearer token at the proxy.
//!
//! The logic is host-agnostic (`Host`), so everything but the thin proxy-wasm
//! glue in `proxy` runs and is tested natively.

pub mod host;
pub mod jwks;
pub mod verify;

#[cfg(test)]
mod testkeys;
