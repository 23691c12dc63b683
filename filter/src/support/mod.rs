//! Small pieces every family leans on: per-worker maps bounded in entries
//! and bytes, fixed tables of shared-data slots, and log excerpts that
//! cannot carry a secret or a forged line.

pub mod bounded;
pub mod logsafe;
pub mod slots;
