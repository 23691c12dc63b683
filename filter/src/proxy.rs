//! The proxy-wasm glue: contexts that hand every event to the shared `Filter`,
//! and a `Host` made of the SDK's checked hostcalls (the trait methods would
//! unwrap, and a trap takes down every request on the worker).

use crate::filter::{Action as FilterAction, Filter};
use crate::host::{CalloutResponse, Host};
use plugin_config::Endpoint;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

/// Largest callout body read; a bigger one is reported as truncated.
const MAX_CALLOUT_BODY: usize = crate::jwks_cache::MAX_JWKS_BYTES;
const TICK: Duration = Duration::from_millis(500);

type Shared = Rc<RefCell<Option<Filter>>>;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(Root { id, filter: Rc::new(RefCell::new(None)) })
    });
}}

struct Root {
    id: u32,
    filter: Shared,
}

/// Runs `f` on the filter, unless it is not configured or already in use (a
/// re-entrant call must not panic; proxies defer actions, so it should not happen).
fn with_filter(shared: &Shared, id: u32, f: impl FnOnce(&mut Filter, &mut WasmHost)) {
    match shared.try_borrow_mut() {
        Ok(mut guard) => {
            if let Some(filter) = guard.as_mut() {
                f(filter, &mut WasmHost { current: id });
            }
        }
        Err(_) => log::error!("re-entrant call into the filter from context {id} ignored"),
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _: usize) {
        let resp = read_callout_response(num_headers, body_size);
        with_filter(&self.filter, self.id, |f, h| f.on_callout(h, token, &resp));
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(b)) => b,
            _ => Vec::new(),
        };
        let config = match plugin_config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("token-exchange-filter: invalid configuration: {e}");
                return false;
            }
        };
        let name = match hostcalls::get_property(vec!["plugin_name"]) {
            Ok(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
            _ => String::new(),
        };
        if hostcalls::set_tick_period(TICK).is_err() {
            log::error!("token-exchange-filter: could not set the tick period");
            return false;
        }
        match self.filter.try_borrow_mut() {
            Ok(mut slot) => *slot = Some(Filter::new(&config, &name)),
            Err(_) => return false,
        }
        log::info!(
            "token-exchange-filter configured: issuer {}, JWKS from {} via cluster {}",
            config.oidc.issuer,
            config.oidc.jwks.url,
            config.oidc.jwks.cluster
        );
        true
    }

    fn on_tick(&mut self) {
        with_filter(&self.filter, self.id, |f, h| f.on_tick(h));
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            id,
            filter: self.filter.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    id: u32,
    filter: Shared,
}

impl Context for Stream {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _: usize) {
        let resp = read_callout_response(num_headers, body_size);
        with_filter(&self.filter, self.id, |f, h| f.on_callout(h, token, &resp));
    }

    fn on_done(&mut self) -> bool {
        with_filter(&self.filter, self.id, |f, h| f.on_done(h, self.id));
        true
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let mut action = FilterAction::Pause;
        let mut configured = false;
        with_filter(&self.filter, self.id, |f, h| {
            configured = true;
            action = f.on_request_headers(h);
        });
        if !configured {
            // Never wave a request through unchecked.
            let _ = hostcalls::send_http_response(500, vec![], Some(b"token-exchange-filter not configured"));
            return Action::Pause;
        }
        match action {
            FilterAction::Continue => Action::Continue,
            FilterAction::Pause => Action::Pause,
        }
    }
}

/// Reads a callout's answer. No headers means no answer (reset, timeout, no
/// upstream): an empty response.
fn read_callout_response(num_headers: usize, body_size: usize) -> CalloutResponse {
    if num_headers == 0 {
        return CalloutResponse::default();
    }
    let headers = hostcalls::get_map(MapType::HttpCallResponseHeaders).unwrap_or_default();
    let truncated = body_size > MAX_CALLOUT_BODY;
    let body = if truncated || body_size == 0 {
        Vec::new()
    } else {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default()
    };
    CalloutResponse { headers, body, truncated }
}

/// `Host` over proxy-wasm hostcalls, acting on context `current`.
struct WasmHost {
    current: u32,
}

impl Host for WasmHost {
    fn context_id(&self) -> u32 {
        self.current
    }

    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default()
    }

    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        if hostcalls::send_http_response(status, headers.to_vec(), Some(body)).is_err() {
            log::warn!("could not send the local response on context {}", self.current);
        }
    }

    fn resume_request(&mut self) {
        if hostcalls::resume_http_request().is_err() {
            log::debug!("could not resume context {}", self.current);
        }
    }

    fn switch_to(&mut self, context_id: u32) -> bool {
        if hostcalls::set_effective_context(context_id).is_ok() {
            self.current = context_id;
            true
        } else {
            false
        }
    }

    fn dispatch(
        &mut self,
        endpoint: &Endpoint,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> Option<u32> {
        let timeout = Duration::from_millis(timeout_ms.max(1));
        hostcalls::dispatch_http_call(&endpoint.cluster, headers.to_vec(), body, vec![], timeout).ok()
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}
