//! Zig-zag variable-length integers, as in Protocol Buffers and Kafka's v2 records.
//!
//! A signed value `n` is first mapped to an unsigned one by zig-zag encoding
//! (`(n << 1) ^ (n >> 63)`, so 0, -1, 1, -2 become 0, 1, 2, 3), then written 7 bits at a time,
//! least significant group first; the high bit of each byte says whether another byte follows.
//! An `i32` takes at most 5 bytes, an `i64` at most 10.

/// Why a varint could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    #[error("varint runs past the end of its buffer")]
    Truncated,
    #[error("varint is longer than {max_bytes} bytes")]
    TooLong { max_bytes: usize },
}

/// Appends `value` as a zig-zag varint (at most 10 bytes).
pub fn put_varlong(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

/// Appends `value` as a zig-zag varint (at most 5 bytes).
pub fn put_varint(out: &mut Vec<u8>, value: i32) {
    put_varlong(out, i64::from(value));
}

/// The number of bytes `put_varlong(value)` writes.
#[must_use]
pub fn varlong_len(value: i64) -> usize {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let mut len = 1;
    while zigzag >= 0x80 {
        zigzag >>= 7;
        len += 1;
    }
    len
}

/// Reads a zig-zag varint of at most 10 bytes from `buf` at `*pos`, advancing `*pos`.
pub fn get_varlong(buf: &[u8], pos: &mut usize) -> Result<i64, VarintError> {
    get_zigzag(buf, pos, 10).map(|raw| ((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

/// Reads a zig-zag varint of at most 5 bytes that must fit an `i32`.
pub fn get_varint(buf: &[u8], pos: &mut usize) -> Result<i32, VarintError> {
    let value = get_zigzag(buf, pos, 5).map(|raw| ((raw >> 1) as i64) ^ -((raw & 1) as i64))?;
    i32::try_from(value).map_err(|_| VarintError::TooLong { max_bytes: 5 })
}

fn get_zigzag(buf: &[u8], pos: &mut usize, max_bytes: usize) -> Result<u64, VarintError> {
    let mut raw: u64 = 0;
    for i in 0..max_bytes {
        let byte = *buf.get(*pos + i).ok_or(VarintError::Truncated)?;
        raw |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *pos += i + 1;
            return Ok(raw);
        }
    }
    Err(VarintError::TooLong { max_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_encodings_match_protobuf_zigzag() {
        let cases: [(i64, &[u8]); 6] = [
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-2, &[0x03]),
            (63, &[0x7e]),
            (300, &[0xd8, 0x04]),
        ];
        for (value, bytes) in cases {
            let mut out = Vec::new();
            put_varlong(&mut out, value);
            assert_eq!(out, bytes, "encoding of {value}");
            assert_eq!(varlong_len(value), bytes.len());
            let mut pos = 0;
            assert_eq!(get_varlong(&out, &mut pos), Ok(value));
            assert_eq!(pos, bytes.len());
        }
    }

    #[test]
    fn extreme_values_round_trip() {
        for value in [i64::MIN, i64::MAX, i64::from(i32::MIN), i64::from(i32::MAX)] {
            let mut out = Vec::new();
            put_varlong(&mut out, value);
            let mut pos = 0;
            assert_eq!(get_varlong(&out, &mut pos), Ok(value));
        }
    }

    #[test]
    fn truncated_and_overlong_varints_are_errors() {
        let mut pos = 0;
        assert_eq!(
            get_varlong(&[0x80, 0x80], &mut pos),
            Err(VarintError::Truncated)
        );
        let mut pos = 0;
        assert_eq!(
            get_varint(&[0xff; 6], &mut pos),
            Err(VarintError::TooLong { max_bytes: 5 })
        );
        let mut pos = 0;
        // Five bytes that decode to more than i32 can hold.
        assert!(get_varint(&[0xff, 0xff, 0xff, 0xff, 0x7f], &mut pos).is_err());
    }
}
