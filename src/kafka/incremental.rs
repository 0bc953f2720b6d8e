//! IncrementalAlterConfigs (KIP-339) on one topic: sets the keys given and leaves every other
//! setting as it is.
//!
//! rdkafka 0.39 wraps only the legacy AlterConfigs, which replaces a topic's whole dynamic
//! configuration: every setting the request does not list goes back to the broker's default, so
//! an operator's `retention.bytes` or longer `retention.ms` would be lost each time `setup` runs.
//! librdkafka itself has the incremental call; this is the small wrapper around it, on the admin
//! client's own `rd_kafka_t`. Every native object is held by an [`Owned`] guard, so each is freed
//! on every path out, errors included.

use rdkafka::admin::AdminClient;
use rdkafka::bindings as rd;
use rdkafka::client::ClientContext;
use rdkafka::error::RDKafkaErrorCode;
use std::ffi::{CStr, CString, c_char};
use std::ptr::NonNull;
use std::time::Duration;

/// Why librdkafka or the broker refused the change; `code` says whether it is an outage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterError {
    pub code: RDKafkaErrorCode,
    pub detail: String,
}

impl AlterError {
    fn new(code: RDKafkaErrorCode, detail: impl Into<String>) -> Self {
        AlterError {
            code,
            detail: detail.into(),
        }
    }
}

/// Sets each `(key, value)` on `topic` with an incremental SET, and nothing else. Blocks until the
/// broker answers or `timeout` (the request timeout) passes: call it off the async thread.
pub fn set_topic_configs<C: ClientContext>(
    client: &AdminClient<C>,
    topic: &str,
    entries: &[(String, String)],
    timeout: Duration,
) -> Result<(), AlterError> {
    let rk = client.inner().native_ptr();
    let name = c_string(topic)?;
    // SAFETY: `name` is a valid C string; librdkafka copies it. A null result is handled by Owned.
    let resource = Owned::new(
        unsafe {
            rd::rd_kafka_ConfigResource_new(
                rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
                name.as_ptr(),
            )
        },
        rd::rd_kafka_ConfigResource_destroy,
    )?;
    for (key, value) in entries {
        let (key, value) = (c_string(key)?, c_string(value)?);
        // SAFETY: the resource is live and the strings are valid; librdkafka copies both. The
        // error it may return is ours to free, which `take_error` does.
        let error = unsafe {
            rd::rd_kafka_ConfigResource_add_incremental_config(
                resource.ptr(),
                key.as_ptr(),
                rd::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET,
                value.as_ptr(),
            )
        };
        if let Some(error) = NonNull::new(error) {
            return Err(take_error(error));
        }
    }

    // SAFETY: `rk` is the admin client's handle, alive for as long as `client` is borrowed.
    let options = Owned::new(
        unsafe {
            rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS,
            )
        },
        rd::rd_kafka_AdminOptions_destroy,
    )?;
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let mut errstr = [0 as c_char; 256];
    // SAFETY: the options are live; `errstr` is writable for its whole length.
    let set = unsafe {
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options.ptr(),
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        )
    };
    if set != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        // SAFETY: librdkafka wrote a NUL-terminated message into `errstr`.
        let why = unsafe { CStr::from_ptr(errstr.as_ptr()) };
        return Err(AlterError::new(set.into(), why.to_string_lossy()));
    }

    // A queue of our own, so that the answer comes to this call and not to the admin client's
    // polling thread, which would take it for one of rdkafka's requests.
    // SAFETY: as above, `rk` is live.
    let queue = Owned::new(
        unsafe { rd::rd_kafka_queue_new(rk) },
        rd::rd_kafka_queue_destroy,
    )?;
    let mut resources = [resource.ptr()];
    // SAFETY: every pointer is live; librdkafka copies the resources and options before it
    // returns (rdkafka_admin.c), so the guards may free ours whenever this function returns.
    unsafe {
        rd::rd_kafka_IncrementalAlterConfigs(
            rk,
            resources.as_mut_ptr(),
            resources.len(),
            options.ptr(),
            queue.ptr(),
        );
    }
    // librdkafka always answers, with a timeout error once the request timeout has passed; the
    // margin only guards against waiting forever should it not.
    let wait_ms = timeout_ms.saturating_add(5_000);
    // SAFETY: the queue is live; the event, if any, is ours to destroy.
    let event = Owned::new(
        unsafe { rd::rd_kafka_queue_poll(queue.ptr(), wait_ms) },
        rd::rd_kafka_event_destroy,
    )
    .map_err(|_| {
        AlterError::new(
            RDKafkaErrorCode::OperationTimedOut,
            format!("no answer to IncrementalAlterConfigs within {wait_ms} ms"),
        )
    })?;
    check_result(&event)
}

/// The request's own error, then each resource's (only one here).
fn check_result(event: &Owned<rd::rd_kafka_event_t>) -> Result<(), AlterError> {
    // SAFETY: the event is live; the strings and arrays read below belong to it and are copied
    // into Rust strings before it is destroyed.
    unsafe {
        let code = rd::rd_kafka_event_error(event.ptr());
        if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            let why = owned_str(rd::rd_kafka_event_error_string(event.ptr()));
            return Err(AlterError::new(code.into(), why));
        }
        let result = rd::rd_kafka_event_IncrementalAlterConfigs_result(event.ptr());
        if result.is_null() {
            return Err(AlterError::new(
                RDKafkaErrorCode::Fail,
                "the answer to IncrementalAlterConfigs was another kind of event",
            ));
        }
        let mut count = 0usize;
        let resources = rd::rd_kafka_IncrementalAlterConfigs_result_resources(result, &mut count);
        if resources.is_null() {
            return Ok(());
        }
        for &resource in std::slice::from_raw_parts(resources, count) {
            let code = rd::rd_kafka_ConfigResource_error(resource);
            if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                let why = owned_str(rd::rd_kafka_ConfigResource_error_string(resource));
                let code: RDKafkaErrorCode = code.into();
                let why = if why.is_empty() {
                    code.to_string()
                } else {
                    why
                };
                return Err(AlterError::new(code, why));
            }
        }
    }
    Ok(())
}

/// A librdkafka object this module created, destroyed with its own destructor when dropped.
struct Owned<T> {
    ptr: NonNull<T>,
    destroy: unsafe extern "C" fn(*mut T),
}

impl<T> Owned<T> {
    /// Takes ownership of `ptr`; a null pointer (librdkafka could not create it) is an error.
    fn new(ptr: *mut T, destroy: unsafe extern "C" fn(*mut T)) -> Result<Self, AlterError> {
        NonNull::new(ptr)
            .map(|ptr| Owned { ptr, destroy })
            .ok_or_else(|| AlterError::new(RDKafkaErrorCode::Fail, "librdkafka returned null"))
    }

    fn ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: the pointer came from the constructor `destroy` belongs to and is freed once.
        unsafe { (self.destroy)(self.ptr.as_ptr()) }
    }
}

/// Reads and frees an error librdkafka handed over.
fn take_error(error: NonNull<rd::rd_kafka_error_t>) -> AlterError {
    let error = Owned {
        ptr: error,
        destroy: rd::rd_kafka_error_destroy,
    };
    // SAFETY: the error is live until `error` drops; its string is copied before that.
    unsafe {
        AlterError::new(
            rd::rd_kafka_error_code(error.ptr()).into(),
            owned_str(rd::rd_kafka_error_string(error.ptr())),
        )
    }
}

/// Copies a C string librdkafka owns (null reads as empty).
///
/// # Safety
/// `s` is null or a NUL-terminated string that lives for the duration of the call.
unsafe fn owned_str(s: *const c_char) -> String {
    if s.is_null() {
        return String::new();
    }
    // SAFETY: per the contract above.
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}

fn c_string(s: &str) -> Result<CString, AlterError> {
    CString::new(s).map_err(|_| {
        AlterError::new(
            RDKafkaErrorCode::InvalidArgument,
            format!("{s:?} contains a NUL byte"),
        )
    })
}
