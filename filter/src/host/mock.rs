//! A proxy in memory, for unit tests: streams, callouts, shared data, a clock.

use crate::host::{CalloutResponse, Host, MetricKind};
use plugin_config::Endpoint;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

pub const ROOT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Sent {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
pub struct Stream {
    pub headers: Vec<(String, String)>,
    /// Headers set by the filter, in order.
    pub set_headers: Vec<(String, String)>,
    pub removed_headers: Vec<String>,
    /// The request body the proxy has buffered.
    pub body: Vec<u8>,
    pub sent: Option<Sent>,
    pub resumed: bool,
}

#[derive(Debug, Clone)]
pub struct Callout {
    pub token: u32,
    pub owner: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

impl Callout {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Shared data is shared between mocks, as between workers.
pub type Shared = Rc<RefCell<HashMap<String, (Vec<u8>, u32)>>>;

pub struct Mock {
    pub now_ms: u64,
    /// The context the proxy called into (see `Host::origin_id`).
    pub active: u32,
    pub current: u32,
    pub streams: HashMap<u32, Stream>,
    pub callouts: Vec<Callout>,
    pub shared: Shared,
    next_token: u32,
    random_counter: u8,
    /// Metrics by name: (kind, value). Histograms keep their last value and count.
    pub metrics: Vec<(String, MetricKind, i64, u64)>,
    pub refuse_dispatch: bool,
    /// Shared-data keys this mock created, not yet reported.
    created: u64,
    /// Every shared-data write that took, by key, in order.
    pub writes: Vec<String>,
}

impl Mock {
    /// A metric's value by name (0 if never defined or touched).
    pub fn metric(&self, name: &str) -> i64 {
        self.metrics.iter().find(|(n, ..)| n == name).map_or(0, |m| m.2)
    }

    pub fn new() -> Mock {
        Mock::with_shared(Shared::default())
    }

    pub fn with_shared(shared: Shared) -> Mock {
        Mock {
            now_ms: crate::testkeys::now_secs() * 1000,
            active: ROOT,
            current: ROOT,
            streams: HashMap::new(),
            callouts: Vec::new(),
            shared,
            next_token: 100,
            random_counter: 0,
            metrics: Vec::new(),
            refuse_dispatch: false,
            created: 0,
            writes: Vec::new(),
        }
    }

    /// Enters context `id` as the proxy does for a callback.
    pub fn enter(&mut self, id: u32) {
        self.active = id;
        self.current = id;
    }

    /// Opens stream `id` with these headers and enters it.
    pub fn open(&mut self, id: u32, headers: &[(&str, &str)]) {
        let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.streams.insert(
            id,
            Stream {
                headers,
                ..Default::default()
            },
        );
        self.enter(id);
    }

    pub fn stream(&self, id: u32) -> &Stream {
        &self.streams[&id]
    }

    pub fn sent(&self, id: u32) -> Option<&Sent> {
        self.streams[&id].sent.as_ref()
    }

    fn cur(&mut self) -> &mut Stream {
        self.streams.get_mut(&self.current).expect("current stream")
    }
}

impl Host for Mock {
    fn context_id(&self) -> u32 {
        self.current
    }

    fn origin_id(&self) -> u32 {
        self.active
    }

    fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Distinct bytes on every call, so tests can see ids differ.
    fn random(&mut self, buf: &mut [u8]) -> bool {
        for b in buf.iter_mut() {
            self.random_counter = self.random_counter.wrapping_add(1);
            *b = self.random_counter;
        }
        true
    }

    fn request_header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self.streams[&self.current]
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        let s = self.cur();
        // After a resume, only a body-phase refusal may answer (Envoy resets
        // the upstream request then).
        assert!(s.sent.is_none(), "stream answered twice");
        s.sent = Some(Sent {
            status,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: String::from_utf8_lossy(body).into_owned(),
        });
    }

    fn resume_request(&mut self) {
        let s = self.cur();
        assert!(s.sent.is_none() && !s.resumed, "stream resumed twice");
        s.resumed = true;
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        let s = self.cur();
        s.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        s.headers.push((name.to_string(), value.to_string()));
        s.set_headers.push((name.to_string(), value.to_string()));
    }

    fn remove_request_header(&mut self, name: &str) {
        let s = self.cur();
        s.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        s.removed_headers.push(name.to_string());
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        let body = &self.streams[&self.current].body;
        Some(body[..size.min(body.len())].to_vec())
    }

    fn switch_to(&mut self, context_id: u32) -> bool {
        if context_id == ROOT || self.streams.contains_key(&context_id) {
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
        if self.refuse_dispatch {
            return None;
        }
        self.next_token += 1;
        self.callouts.push(Callout {
            token: self.next_token,
            owner: self.active,
            cluster: endpoint.cluster.clone(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: body.unwrap_or_default().to_vec(),
            timeout_ms,
        });
        Some(self.next_token)
    }

    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.shared.borrow().get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        let mut map = self.shared.borrow_mut();
        let current = map.get(key).map(|(_, c)| *c);
        if let (Some(want), Some(have)) = (cas, current) {
            if want != have {
                return false;
            }
        }
        let next = current.unwrap_or(0) + 1;
        map.insert(key.to_string(), (value.to_vec(), next));
        self.writes.push(key.to_string());
        if current.is_none() {
            self.created += 1;
        }
        true
    }

    fn keys_created(&mut self) -> u64 {
        std::mem::take(&mut self.created)
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        if let Some(i) = self.metrics.iter().position(|(n, ..)| n == name) {
            return Some(i as u32);
        }
        self.metrics.push((name.to_string(), kind, 0, 0));
        Some(self.metrics.len() as u32 - 1)
    }

    fn add_metric(&mut self, id: u32, delta: i64) {
        if let Some(m) = self.metrics.get_mut(id as usize) {
            m.2 += delta;
        }
    }

    fn record_metric(&mut self, id: u32, value: u64) {
        if let Some(m) = self.metrics.get_mut(id as usize) {
            m.2 = value as i64;
            m.3 += 1;
        }
    }
}

/// A 200 answer with this body.
pub fn ok(body: &str) -> CalloutResponse {
    CalloutResponse {
        headers: vec![(":status".into(), "200".into())],
        body: body.as_bytes().to_vec(),
        truncated: false,
    }
}
