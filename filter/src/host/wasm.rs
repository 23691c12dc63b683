//! The proxy-wasm glue: contexts that hand every event to the worker's one
//! `Plugin`, and a `Host` made of hostcalls that never panic. The SDK's trait
//! methods unwrap, and its hostcall wrappers for replacing a header,
//! continuing a stream and sending a local response panic on any status but
//! Ok; since the filter acts on other streams through
//! `set_effective_context`, those three are called through the ABI directly
//! (`abi`), with every status handled. Headers are read through the ABI too:
//! the SDK's readers unwrap UTF-8, and a client may send any byte above 0x7f
//! in a header value. A trap would take down every request on the worker.

use super::abi;
use super::header_map;
use super::{Action, CalloutResponse, Host, MetricKind, Plugin, MAX_CALLOUT_BODY};
use plugin_config::Endpoint;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action as ProxyAction, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

const TICK: Duration = Duration::from_millis(500);

thread_local! {
    /// Shared-data keys this VM created and has not reported yet.
    static CREATED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

type Shared<P> = Rc<RefCell<Option<P>>>;

/// Registers `P` as the VM's plugin; called from `proxy_wasm::main!`.
pub fn start<P: Plugin + 'static>() {
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(Root::<P> {
            id,
            plugin: Rc::new(RefCell::new(None)),
        })
    });
}

struct Root<P> {
    id: u32,
    plugin: Shared<P>,
}

/// Runs `f` on the plugin, unless it is not configured or already in use (a
/// re-entrant call must not panic; proxies defer actions, so it should not happen).
fn with_plugin<P>(shared: &Shared<P>, id: u32, f: impl FnOnce(&mut P, &mut WasmHost)) -> bool {
    match shared.try_borrow_mut() {
        Ok(mut guard) => match guard.as_mut() {
            Some(plugin) => {
                f(
                    plugin,
                    &mut WasmHost {
                        origin: id,
                        current: id,
                    },
                );
                true
            }
            None => false,
        },
        Err(_) => {
            log::error!("re-entrant call into the filter from context {id} ignored");
            false
        }
    }
}

impl<P: Plugin> Context for Root<P> {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _: usize) {
        let resp = read_callout_response(num_headers, body_size);
        with_plugin(&self.plugin, self.id, |p, h| p.on_callout(h, token, &resp));
    }
}

impl<P: Plugin + 'static> RootContext for Root<P> {
    fn on_configure(&mut self, _size: usize) -> bool {
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
        let bytes = abi::buffer(BufferType::PluginConfiguration, usize::MAX).unwrap_or_default();
        let name = match hostcalls::get_property(vec!["plugin_name"]) {
            Ok(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
            _ => String::new(),
        };
        if hostcalls::set_tick_period(TICK).is_err() {
            log::error!("token-exchange-filter: could not set the tick period");
            return false;
        }
        let plugin = match P::configure(&bytes, &name) {
            Ok(p) => p,
            Err(e) => {
                log::error!("token-exchange-filter: invalid configuration: {e}");
                return false;
            }
        };
        match self.plugin.try_borrow_mut() {
            Ok(mut slot) => {
                *slot = Some(plugin);
                true
            }
            Err(_) => false,
        }
    }

    fn on_tick(&mut self) {
        with_plugin(&self.plugin, self.id, |p, h| p.on_tick(h));
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            id,
            plugin: self.plugin.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream<P> {
    id: u32,
    plugin: Shared<P>,
}

impl<P: Plugin> Context for Stream<P> {
    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _: usize) {
        let resp = read_callout_response(num_headers, body_size);
        with_plugin(&self.plugin, self.id, |p, h| p.on_callout(h, token, &resp));
    }

    fn on_done(&mut self) -> bool {
        with_plugin(&self.plugin, self.id, |p, h| p.on_done(h, self.id));
        true
    }
}

impl<P: Plugin> HttpContext for Stream<P> {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> ProxyAction {
        let mut action = Action::Pause;
        let configured = with_plugin(&self.plugin, self.id, |p, h| {
            action = p.on_request_headers(h, !end_of_stream);
        });
        if !configured {
            // Never wave a request through unchecked.
            let _ = abi::send_local_response(500, &[], b"token-exchange-filter not configured");
            return ProxyAction::Pause;
        }
        proxy_action(action)
    }

    /// Held only for a tool call whose scopes depend on the body.
    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> ProxyAction {
        let mut action = Action::Continue;
        with_plugin(&self.plugin, self.id, |p, h| {
            action = p.on_request_body(h, size, end_of_stream)
        });
        proxy_action(action)
    }
}

fn proxy_action(action: Action) -> ProxyAction {
    match action {
        Action::Continue => ProxyAction::Continue,
        Action::Pause => ProxyAction::Pause,
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
        // Writes are rare (an exchange, a key fetch): one more read to see
        // whether this one creates a key is worth what the count tells.
        let created = cas.is_none() && matches!(hostcalls::get_shared_data(key), Ok((None, _)));
        let ok = hostcalls::set_shared_data(key, Some(value), cas).is_ok();
        if ok && created {
            CREATED.with(|c| c.set(c.get().saturating_add(1)));
        }
        ok
    }

    fn keys_created(&mut self) -> u64 {
        CREATED.with(|c| c.replace(0))
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
