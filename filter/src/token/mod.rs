//! The caller's token: found in its header (`bearer`), checked (`verify`,
//! over JSON parsed with no duplicate keys, `strict_json`), remembered once
//! checked (`verified`), and read for claim headers (`claims`).

pub mod bearer;
pub mod claims;
pub mod strict_json;
pub mod verified;
pub mod verify;
