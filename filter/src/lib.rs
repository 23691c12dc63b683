//! token-exchange-filter: a proxy-wasm HTTP filter that validates the caller's
//! OAuth bearer token at the proxy, exchanges it, and forwards the result.
//!
//! The logic is host-agnostic (`host::Host`), so everything but the thin
//! proxy-wasm glue in `proxy` runs and is tested natively. Modules, in the
//! order a request meets them: `bearer` finds the token, `verified` remembers
//! tokens already checked, `jwks_cache` keeps the issuer's keys (`jwks`,
//! found through `discovery` when no JWKS URL is configured),
//! `verify` checks a token, `challenge` words the refusal, `exchange` asks
//! the IdP for the backend's token, `cache` and `singleflight` keep that to
//! one call per user, and `filter` ties them together. Per-worker maps are
//! `bounded` in entries and bytes; `header_map` and `proxy` are the ABI side.

pub mod audit;
pub mod bearer;
pub mod bounded;
pub mod cache;
pub mod challenge;
pub mod claims;
pub mod discovery;
pub mod exchange;
pub mod filter;
pub mod header_map;
pub mod host;
pub mod jwks;
pub mod jwks_cache;
pub mod logsafe;
pub mod mcp;
pub mod metrics;
pub mod routes;
pub mod rsa;
pub mod singleflight;
pub mod strict_json;
pub mod verified;
pub mod verify;

#[cfg(target_arch = "wasm32")]
mod proxy;

#[cfg(test)]
mod mock;
#[cfg(test)]
mod testkeys;
