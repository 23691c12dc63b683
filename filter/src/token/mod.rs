//! The caller's token: found in its header (`bearer`), checked (`verify`,
//! over JSON parsed with no duplicate keys, `strict_json`), remembered once
//! checked (`verified`), and read for claim headers (`claims`); an opaque
//! one is checked by its issuer's RFC 7662 answer (`introspection`).

pub mod bearer;
pub mod claims;
pub mod introspection;
pub mod strict_json;
pub mod verified;
pub mod verify;
