//! The few things the filter needs from its proxy, behind a trait so the logic
//! runs (and is tested) natively, and the events the proxy hands the filter
//! (`Plugin`). The proxy-wasm implementation of both sides is `wasm` (raw
//! ABI calls in `abi`, header maps in `header_map`); tests use a mock.
//!
//! A `Host` is always bound to one *current* stream or root context: header and
//! response calls act on it, and `switch_to` rebinds it, which is how one
//! callout's result is delivered to every request that waited for it.

#[cfg(target_arch = "wasm32")]
mod abi;
pub mod header_map;
#[cfg(test)]
pub mod mock;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

use plugin_config::Endpoint;

/// Largest callout body the glue reads (a JWKS or discovery document, a
/// token answer); a bigger one is reported as `truncated`, never read.
pub const MAX_CALLOUT_BODY: usize = 256 * 1024;

/// The answer to an HTTP callout, as read by the glue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CalloutResponse {
    /// Empty when the callout failed without a response: connection reset,
    /// timeout, or no healthy upstream (proxy-wasm reports 0 headers).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body was larger than the glue was willing to read.
    pub truncated: bool,
}

impl CalloutResponse {
    /// The `:status`, if the callout got a response at all.
    pub fn status(&self) -> Option<u16> {
        self.header(":status").and_then(|s| s.parse().ok())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the proxy should do with the current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Paused: either waiting, or answered locally.
    Pause,
}

/// The proxy's events, as the glue hands them over. One plugin lives per
/// worker (proxy-wasm VM), shared by its root and stream contexts; `host`
/// is bound to the context the event is for.
pub trait Plugin: Sized {
    /// Builds the plugin from its configuration; `Err` is the one log line
    /// that says what is wrong and how to fix it.
    fn configure(config: &[u8], plugin_name: &str) -> Result<Self, String>;
    /// A request's headers; `body_follows` unless they end the request.
    fn on_request_headers(&mut self, host: &mut dyn Host, body_follows: bool) -> Action;
    /// Body data of the current request (`size` bytes buffered so far).
    fn on_request_body(&mut self, host: &mut dyn Host, size: usize, end_of_stream: bool) -> Action;
    /// A callout answered (or failed: no headers).
    fn on_callout(&mut self, host: &mut dyn Host, token: u32, resp: &CalloutResponse);
    fn on_tick(&mut self, host: &mut dyn Host);
    /// The stream `id` ended.
    fn on_done(&mut self, host: &mut dyn Host, id: u32);
}

pub trait Host {
    /// Id of the context this host currently acts on.
    fn context_id(&self) -> u32;
    /// Id of the context the proxy called us in. Callouts are always made as
    /// this context: the proxy cancels a callout when the context that made it
    /// ends, and delivers the answer to it.
    fn origin_id(&self) -> u32;
    /// Wall-clock time, milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Fills `buf` from the host's random source; false if it has none.
    fn random(&mut self, buf: &mut [u8]) -> bool;

    /// A request header of the current stream (pseudo-headers included). A
    /// header sent several times comes back as one comma-joined value, as
    /// Envoy stores it.
    fn request_header(&self, name: &str) -> Option<String>;
    /// Answers the current stream locally; the upstream is never reached.
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]);
    /// Lets a paused request continue upstream.
    fn resume_request(&mut self);
    /// Sets (replaces) a request header of the current stream.
    fn set_request_header(&mut self, name: &str, value: &str);
    /// Removes a request header of the current stream, every copy of it.
    fn remove_request_header(&mut self, name: &str);
    /// The request body buffered so far on the current stream (`size` bytes).
    fn request_body(&self, size: usize) -> Option<Vec<u8>>;
    /// Makes `context_id` current. False if it no longer exists (client gone).
    fn switch_to(&mut self, context_id: u32) -> bool;

    /// Starts an HTTP callout as the origin context (see `origin_id`), whatever
    /// context is current; `None` if the proxy refused it (unknown cluster,
    /// bad arguments).
    fn dispatch(
        &mut self,
        endpoint: &Endpoint,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> Option<u32>;

    /// Reads shared data: the value and its CAS token.
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes shared data; with `cas`, only if nobody wrote since. False on a
    /// CAS mismatch or any other failure.
    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
    /// How many shared-data keys this VM created (wrote where there was
    /// none) since the last call. The ABI cannot delete keys, so this is
    /// what shared data grows by.
    fn keys_created(&mut self) -> u64;

    /// Defines a metric (a counter, a gauge or a histogram) visible in the
    /// proxy's stats; `None` if the proxy refused it.
    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<u32>;
    /// Adds to a counter or gauge.
    fn add_metric(&mut self, id: u32, delta: i64);
    /// Sets a gauge, or records a histogram value.
    fn record_metric(&mut self, id: u32, value: u64);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}
