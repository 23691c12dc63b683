//! The issuer's signing keys: the algorithms we accept (`alg`), a JWKS
//! document parsed into keys (`jwks`), each in the form its library checks
//! signatures with (`signature`, with `rsa`'s fast PKCS#1 check), where
//! the document is found (`discovery`), and the per-worker copy shared
//! across workers and refreshed on schedule (`cache`).

pub mod alg;
pub mod cache;
pub mod discovery;
pub mod jwks;
pub mod rsa;
pub mod signature;
