//! The module's shadow stack: 256 KiB instead of Rust's default 1 MiB.
//!
//! The stack sits below the data (rustc links wasm with `--stack-first`, so an
//! overflow traps instead of writing over data), and every address of a
//! static in the code is an `i32.const`: below 1 MiB each takes 3 LEB128
//! bytes instead of 4, 5.7 KB of the module. The filter's deepest use, JSON
//! nested up to serde_json's limit of 128, is far below this (README,
//! Performance → Footprint; tests/integration/test_attacks.py sends 5,000).
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg-cdylib=-zstack-size={}", 256 * 1024);
    }
}
