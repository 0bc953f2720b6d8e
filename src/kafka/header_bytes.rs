//! Record headers as bytes, read from and written to librdkafka directly.
//!
//! Kafka calls a header key a string, but brokers pass any bytes through, and a producer may send
//! keys that are not UTF-8. rdkafka's `Headers` accessors turn every key into `&str` with an
//! `unwrap()`, so one such record would panic the fetch thread (and the `dlq ls` reader); and its
//! `OwnedHeaders::insert` takes only `&str` keys, so such a key could not be written back to a
//! dead letter or replayed. These two functions read and write keys as the bytes they are.
//!
//! One limit remains, librdkafka's own: it hands a key out as a NUL-terminated C string, so a key
//! holding a NUL byte is read up to that byte.

use crate::pipeline::RecordHeader;
use rdkafka::bindings as rd;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, OwnedHeaders};
use std::ffi::{CStr, c_char, c_void};
use std::ptr;

/// The headers of a polled message, in their order, keys as bytes.
pub fn of_message(m: &BorrowedMessage<'_>) -> Vec<RecordHeader> {
    let mut headers: *mut rd::rd_kafka_headers_t = ptr::null_mut();
    // SAFETY: `m.ptr()` is the live message `m` borrows; librdkafka returns a pointer into the
    // message's own headers (or an error when it has none), valid while the message is.
    let found = unsafe { rd::rd_kafka_message_headers(m.ptr(), &mut headers) };
    if found != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
        return Vec::new();
    }
    // SAFETY: `headers` is valid while `m` is (above), and read only here.
    unsafe { read_all(headers) }
}

/// Copies every header out of a librdkafka header list.
///
/// # Safety
/// `headers` must point to a live `rd_kafka_headers_t` for the duration of the call.
unsafe fn read_all(headers: *const rd::rd_kafka_headers_t) -> Vec<RecordHeader> {
    // SAFETY: the caller guarantees `headers` is live.
    let count = unsafe { rd::rd_kafka_header_cnt(headers) };
    let mut out = Vec::with_capacity(count);
    for idx in 0..count {
        let mut name: *const c_char = ptr::null();
        let mut value: *const c_void = ptr::null();
        let mut size = 0usize;
        // SAFETY: `idx` is below the count; librdkafka fills the three out-pointers with data
        // owned by the header list, which we copy before returning.
        let got =
            unsafe { rd::rd_kafka_header_get_all(headers, idx, &mut name, &mut value, &mut size) };
        if got != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            continue;
        }
        // SAFETY: librdkafka stores every header name NUL-terminated; a non-null value points
        // to `size` bytes.
        let key = unsafe { CStr::from_ptr(name) }.to_bytes().to_vec();
        let value = (!value.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }.to_vec());
        out.push((key, value));
    }
    out
}

/// Headers for a record to send, keys written as the bytes they are.
pub fn owned(headers: &[RecordHeader]) -> OwnedHeaders {
    let owned = OwnedHeaders::new_with_capacity(headers.len().max(1));
    let raw = raw_list(&owned);
    for (key, value) in headers {
        let (value_ptr, value_len) = match value {
            Some(v) => (v.as_ptr().cast::<c_void>(), v.len() as isize),
            None => (ptr::null(), 0),
        };
        // SAFETY: `raw` is the list `owned` holds, writable (a fresh list, not a message's); the
        // key and value are copied by librdkafka before this returns.
        let added = unsafe {
            rd::rd_kafka_header_add(
                raw,
                key.as_ptr().cast::<c_char>(),
                key.len() as isize,
                value_ptr,
                value_len,
            )
        };
        // Only a read-only list (one attached to a message in flight) refuses an add.
        debug_assert_eq!(added, rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
    }
    owned
}

/// The librdkafka list behind an `OwnedHeaders`. rdkafka exposes it only as a `&BorrowedHeaders`,
/// which is that same pointer cast (`OwnedHeaders::as_borrowed`); the tests below write through it
/// and read back, so an rdkafka release that changes the representation fails them.
fn raw_list(owned: &OwnedHeaders) -> *mut rd::rd_kafka_headers_t {
    owned.as_borrowed() as *const BorrowedHeaders as *mut rd::rd_kafka_headers_t
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    fn read_back(owned: &OwnedHeaders) -> Vec<RecordHeader> {
        // SAFETY: `owned` is alive for the call.
        unsafe { read_all(raw_list(owned)) }
    }

    #[test]
    fn keys_that_are_not_utf8_are_written_and_read_as_the_same_bytes() {
        let headers: Vec<RecordHeader> = vec![
            (b"trace-id".to_vec(), Some(b"t1".to_vec())),
            (vec![0xff, 0xfe, b'k'], Some(vec![0, 1, 2])),
            (b"empty".to_vec(), Some(Vec::new())),
            (b"null".to_vec(), None),
        ];
        let owned = owned(&headers);
        assert_eq!(owned.count(), 4, "rdkafka sees the same list");
        assert_eq!(read_back(&owned), headers);
    }
}
