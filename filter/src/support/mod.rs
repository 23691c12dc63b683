//! Small pieces every family leans on: per-worker maps bounded in entries
//! and bytes, and log excerpts that cannot carry a secret or a forged line.

pub mod bounded;
pub mod logsafe;
