//! The wasm floor for tests/bench: reads one request header and sets another,
//! the least any header-rewriting proxy-wasm filter does. What
//! token-exchange-filter costs beyond this is its own.
#![cfg(target_arch = "wasm32")]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Floor;

impl Context for Floor {}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if let Ok(Some(v)) = hostcalls::get_map_value(MapType::HttpRequestHeaders, "authorization") {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-floor", Some(&v[..v.len().min(16)]));
        }
        Action::Continue
    }
}
