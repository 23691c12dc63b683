//! The ABI calls whose SDK wrappers panic on an unexpected status or on
//! invalid UTF-8 (metrics included), declared with plain integers so that
//! any status the host returns is representable.

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
    let map = super::header_map::encode(headers);
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
