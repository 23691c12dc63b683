//! The proxy-wasm glue: contexts that hand every event to the shared `Filter`,
//! and a `Host` made of hostcalls that never panic. The SDK's trait methods
//! unwrap, and its hostcall wrappers for replacing a header, continuing a
//! stream and sending a local response panic on any status but Ok; since the
//! filter acts on other streams through `set_effective_context`, those three
//! are called through the ABI directly here (`abi`), with every status
//! handled. Headers are read through the ABI too: the SDK's readers unwrap
//! UTF-8, and a client may send any byte above 0x7f in a header value.
//! A trap would take down every request on the worker.

use crate::host::header_map;
use crate::host::{CalloutResponse, Host, MetricKind, MAX_CALLOUT_BODY};
use crate::request::{Action as FilterAction, Filter};
use plugin_config::Endpoint;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

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
                f(
                    filter,
                    &mut WasmHost {
                        origin: id,
                        current: id,
                    },
                );
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
        let bytes = abi::buffer(BufferType::PluginConfiguration, usize::MAX).unwrap_or_default();
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
            Ok(mut slot) => match Filter::new(&config, &name) {
                Ok(f) => *slot = Some(f),
                Err(e) => {
                    log::error!("token-exchange-filter: invalid configuration: {e}");
                    return false;
                }
            },
            Err(_) => return false,
        }
        // Format debug lines only if the proxy would print them.
        if let Ok(level) = hostcalls::get_log_level() {
            log::set_max_level(match level {
                LogLevel::Trace => log::LevelFilter::Trace,
                LogLevel::Debug => log::LevelFilter::Debug,
                LogLevel::Info => log::LevelFilter::Info,
                LogLevel::Warn => log::LevelFilter::Warn,
                LogLevel::Error | LogLevel::Critical => log::LevelFilter::Error,
            });
        }
        log::info!(
            "token-exchange-filter configured: issuer {}, {}",
            config.oidc.issuer,
            config.oidc.keys
        );
        let rule_targets = config.rules.iter().filter_map(|r| match &r.action {
            plugin_config::RuleAction::Apply {
                exchange: plugin_config::RuleExchange::Replace(t),
                ..
            } => Some(t.as_ref()),
            _ => None,
        });
        for t in config.token_exchange.iter().chain(rule_targets) {
            log::info!("exchanging tokens at {} via cluster {}", t.token.url, t.token.cluster);
            if t.secret_inline {
                log::warn!(
                    "tokenExchange.clientSecret is set inline: for local demos only; \
                     use clientSecretEnv with vm_config.environment_variables or vmConfig.env"
                );
            }
        }
        if !config.rules.is_empty() {
            log::info!("{} route rules; the first match wins", config.rules.len());
        }
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
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let mut action = FilterAction::Pause;
        let mut configured = false;
        with_filter(&self.filter, self.id, |f, h| {
            configured = true;
            action = f.on_request_headers(h, !end_of_stream);
        });
        if !configured {
            // Never wave a request through unchecked.
            let _ = abi::send_local_response(500, &[], b"token-exchange-filter not configured");
            return Action::Pause;
        }
        match action {
            FilterAction::Continue => Action::Continue,
            FilterAction::Pause => Action::Pause,
        }
    }

    /// Held only for a tool call whose scopes depend on the body.
    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let mut action = FilterAction::Continue;
        with_filter(&self.filter, self.id, |f, h| {
            action = f.on_request_body(h, size, end_of_stream)
        });
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
    let headers = abi::header_map(MapType::HttpCallResponseHeaders)
        .map(|raw| header_map::decode(&raw))
        .unwrap_or_default();
    let truncated = body_size > MAX_CALLOUT_BODY;
    let body = if truncated || body_size == 0 {
        Vec::new()
    } else {
        abi::buffer(BufferType::HttpCallResponseBody, body_size).unwrap_or_default()
    };
    CalloutResponse {
        headers,
        body,
        truncated,
    }
}

/// `Host` over proxy-wasm hostcalls, acting on context `current`, called in
/// context `origin`.
struct WasmHost {
    origin: u32,
    current: u32,
}

impl Host for WasmHost {
    fn context_id(&self) -> u32 {
        self.current
    }

    fn origin_id(&self) -> u32 {
        self.origin
    }

    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn random(&mut self, buf: &mut [u8]) -> bool {
        // WASI's random_get, which proxy-wasm hosts provide.
        getrandom::fill(buf).is_ok()
    }

    fn request_header(&self, name: &str) -> Option<String> {
        let value = abi::request_header(name).ok()??;
        // Lossy: odd bytes become U+FFFD, which no token or path we look for contains.
        Some(String::from_utf8(value).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        if let Err(code) = abi::send_local_response(status, headers, body) {
            log::warn!(
                "could not send the local response on context {} (status {code})",
                self.current
            );
        }
    }

    fn resume_request(&mut self) {
        if let Err(code) = abi::continue_request() {
            log::debug!("could not resume context {} (status {code})", self.current);
        }
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        if let Err(code) = abi::replace_request_header(name, value) {
            log::warn!(
                "could not set header {name} on context {} (status {code})",
                self.current
            );
        }
    }

    fn remove_request_header(&mut self, name: &str) {
        if let Err(code) = abi::remove_request_header(name) {
            log::warn!(
                "could not remove header {name} on context {} (status {code})",
                self.current
            );
        }
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        abi::buffer(BufferType::HttpRequestBody, size).ok()
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
        // The proxy attaches a callout to the effective context, the SDK routes
        // its answer to the context it is running: make them the same.
        let switched = self.current != self.origin;
        if switched && hostcalls::set_effective_context(self.origin).is_err() {
            return None;
        }
        let timeout = Duration::from_millis(timeout_ms.max(1));
        let token = hostcalls::dispatch_http_call(&endpoint.cluster, headers.to_vec(), body, vec![], timeout).ok();
        if switched && hostcalls::set_effective_context(self.current).is_err() {
            log::warn!("could not return to context {}", self.current);
        }
        token
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        abi::define_metric(kind as u32, name).ok()
    }

    fn add_metric(&mut self, id: u32, delta: i64) {
        // A metric that cannot be updated is not worth a log line per request.
        let _ = abi::increment_metric(id, delta);
    }

    fn record_metric(&mut self, id: u32, value: u64) {
        let _ = abi::record_metric(id, value);
    }
}

/// The ABI calls whose SDK wrappers panic on an unexpected status or on
/// invalid UTF-8 (metrics included).
mod abi {
    use proxy_wasm::types::{BufferType, MapType, Status, StreamType};

    const OK: u32 = Status::Ok as u32;
    const NOT_FOUND: u32 = Status::NotFound as u32;

    // Same imports as the SDK's, declared with plain integers so that any
    // status the host returns is representable.
    #[allow(clashing_extern_declarations)]
    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_continue_stream(stream_type: u32) -> u32;
        fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_data: *mut *mut u8,
            return_size: *mut usize,
        ) -> u32;
        fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
        fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, return_id: *mut u32) -> u32;
        fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
        fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
        fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
        fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_data: *mut *mut u8,
            return_size: *mut usize,
        ) -> u32;
        fn proxy_send_local_response(
            status_code: u32,
            details_data: *const u8,
            details_size: usize,
            body_data: *const u8,
            body_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
    }

    fn check(status: u32) -> Result<(), u32> {
        if status == OK {
            Ok(())
        } else {
            Err(status)
        }
    }

    pub fn replace_request_header(name: &str, value: &str) -> Result<(), u32> {
        // SAFETY: pointers and lengths describe live, immutable buffers for the call.
        check(unsafe {
            proxy_replace_header_map_value(
                MapType::HttpRequestHeaders as u32,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        })
    }

    /// A request header's value as bytes; `None` if absent.
    pub fn request_header(name: &str) -> Result<Option<Vec<u8>>, u32> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the name's pointer and length describe a live buffer; the
        // host writes a pointer and a length into our two locals.
        let status = unsafe {
            proxy_get_header_map_value(
                MapType::HttpRequestHeaders as u32,
                name.as_ptr(),
                name.len(),
                &mut data,
                &mut size,
            )
        };
        if status == NOT_FOUND {
            return Ok(None);
        }
        check(status)?;
        Ok(Some(take(data, size)))
    }

    /// A whole header map in the ABI's encoding (see `header_map::decode`).
    pub fn header_map(map_type: MapType) -> Result<Vec<u8>, u32> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a pointer and a length into our two locals.
        check(unsafe { proxy_get_header_map_pairs(map_type as u32, &mut data, &mut size) })?;
        Ok(take(data, size))
    }

    /// Takes ownership of a buffer the host returned.
    fn take(data: *mut u8, size: usize) -> Vec<u8> {
        if data.is_null() {
            return Vec::new();
        }
        // SAFETY: the host allocated `size` bytes with the SDK's
        // proxy_on_memory_allocate (a boxed slice of exactly `size`) and hands
        // them to us, as the SDK's own readers assume.
        unsafe { Vec::from_raw_parts(data, size, size) }
    }

    /// Up to `max` bytes of a buffer from its start; empty if there is none.
    pub fn buffer(kind: BufferType, max: usize) -> Result<Vec<u8>, u32> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a pointer and a length into our two locals.
        let status = unsafe { proxy_get_buffer_bytes(kind as u32, 0, max, &mut data, &mut size) };
        if status == NOT_FOUND {
            return Ok(Vec::new());
        }
        check(status)?;
        Ok(take(data, size))
    }

    pub fn define_metric(kind: u32, name: &str) -> Result<u32, u32> {
        let mut id: u32 = 0;
        // SAFETY: the name's pointer and length describe a live buffer; the host writes one u32.
        check(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
        Ok(id)
    }

    pub fn increment_metric(id: u32, delta: i64) -> Result<(), u32> {
        // SAFETY: no pointers.
        check(unsafe { proxy_increment_metric(id, delta) })
    }

    pub fn record_metric(id: u32, value: u64) -> Result<(), u32> {
        // SAFETY: no pointers.
        check(unsafe { proxy_record_metric(id, value) })
    }

    pub fn remove_request_header(name: &str) -> Result<(), u32> {
        // SAFETY: the name's pointer and length describe a live buffer for the call.
        check(unsafe { proxy_remove_header_map_value(MapType::HttpRequestHeaders as u32, name.as_ptr(), name.len()) })
    }

    pub fn continue_request() -> Result<(), u32> {
        // SAFETY: no pointers.
        check(unsafe { proxy_continue_stream(StreamType::HttpRequest as u32) })
    }

    pub fn send_local_response(status: u32, headers: &[(&str, &str)], body: &[u8]) -> Result<(), u32> {
        let map = crate::host::header_map::encode(headers);
        // SAFETY: pointers and lengths describe live, immutable buffers for the call.
        check(unsafe {
            proxy_send_local_response(
                status,
                std::ptr::null(),
                0,
                body.as_ptr(),
                body.len(),
                map.as_ptr(),
                map.len(),
                -1,
            )
        })
    }
}
