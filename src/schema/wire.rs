//! The Confluent wire format: magic byte 0, a big-endian 4-byte schema id, then the Avro datum.

use thiserror::Error;

pub const MAGIC: u8 = 0;
pub const HEADER_LEN: usize = 5;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    #[error("payload is {0} bytes, shorter than the 5-byte Confluent header")]
    TooShort(usize),
    #[error("magic byte is {0:#04x}, not 0x00: not Confluent wire format")]
    BadMagic(u8),
}

/// Splits a payload into its schema id and the Avro datum.
pub fn split(payload: &[u8]) -> Result<(u32, &[u8]), WireError> {
    if payload.len() < HEADER_LEN {
        return Err(WireError::TooShort(payload.len()));
    }
    if payload[0] != MAGIC {
        return Err(WireError::BadMagic(payload[0]));
    }
    let id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
    Ok((id, &payload[HEADER_LEN..]))
}

/// Prefixes a datum with the header for `schema_id`.
pub fn frame(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trips() {
        let framed = frame(0x0102_0304, b"datum");
        assert_eq!(&framed[..5], &[0, 1, 2, 3, 4]);
        assert_eq!(split(&framed), Ok((0x0102_0304, &b"datum"[..])));
    }

    #[test]
    fn short_and_foreign_payloads_are_refused() {
        assert_eq!(split(b"\0\0\0"), Err(WireError::TooShort(3)));
        assert_eq!(split(b"{\"json\": 1}"), Err(WireError::BadMagic(b'{')));
    }
}
