//! The issuer's signing keys: the algorithms we accept (`alg`), one JWK
//! imported strictly (`jwk`), a JWKS document parsed into keys bound to an
//! algorithm each (`jwks`), the signature checks of each kind of key
//! (`signature`, with `rsa`'s fast PKCS#1 check), where the document is
//! found (`discovery`), and the per-worker copy shared across workers and
//! refreshed on schedule (`cache`).

pub mod alg;
pub mod cache;
pub mod discovery;
pub mod jwk;
pub mod jwks;
pub mod rsa;
pub mod signature;
