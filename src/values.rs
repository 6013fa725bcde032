//! Header values made per request (a request id, the rate-limit numbers), cut from a buffer each
//! worker thread keeps instead of allocated one by one.
//!
//! An `http::HeaderValue` owns its bytes as a `bytes::Bytes`. Made from a slice, each one is a heap
//! allocation and a free. Here the bytes are appended to the thread's buffer and split off it: every
//! value made from one chunk shares that chunk (a reference count), and a new chunk is allocated
//! only when the current one is full, or is reused in place once every value cut from it is gone.
//! So a response's dynamic values cost one allocation per few hundred responses, not one each.
//!
//! A value keeps its whole chunk alive, so only short-lived values belong here: ones that end with
//! their response (or, for a value a thread caches, one chunk per worker thread).

use std::cell::RefCell;

use bytes::BytesMut;
use http::HeaderValue;

/// Room allocated at a time: about a hundred responses' worth of values.
const CHUNK: usize = 4096;

thread_local! {
    static BUFFER: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// A header value holding `bytes`, checked as [`HeaderValue::from_bytes`] checks it; `None` when
/// they are not a valid value.
pub fn header_value(bytes: &[u8]) -> Option<HeaderValue> {
    BUFFER.with(|buffer| {
        // Never borrowed twice (nothing here calls back into it); a failed borrow falls back.
        let Ok(mut buffer) = buffer.try_borrow_mut() else { return HeaderValue::from_bytes(bytes).ok() };
        if buffer.capacity() - buffer.len() < bytes.len() {
            buffer.reserve(CHUNK.max(bytes.len()));
        }
        buffer.extend_from_slice(bytes);
        HeaderValue::from_maybe_shared(buffer.split().freeze()).ok()
    })
}

/// `n` in decimal as a header value.
pub fn number(n: u64) -> HeaderValue {
    let mut digits = [0u8; 20];
    header_value(decimal(n, &mut digits)).unwrap_or_else(|| HeaderValue::from(n))
}

/// `n` in decimal, written into the end of `buf`.
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_writes_every_width() {
        for n in [0, 7, 10, 99, 4095, 1_000_000_007, u64::MAX] {
            assert_eq!(decimal(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }

    #[test]
    fn values_cut_from_one_chunk_stay_apart() {
        // Many more values than one chunk holds, all alive at once, then checked: none overwrote
        // another when the buffer moved on to a new chunk.
        let values: Vec<(u64, HeaderValue)> = (0..2_000u64).map(|i| (i * 7_919, number(i * 7_919))).collect();
        for (n, v) in &values {
            assert_eq!(v.as_bytes(), n.to_string().as_bytes());
        }
        // And once they are gone, the chunk is reused and new values are still right.
        drop(values);
        assert_eq!(number(u64::MAX).as_bytes(), u64::MAX.to_string().as_bytes());
        assert_eq!(
            header_value(b"\"day\";r=5;t=60").map(|v| v.as_bytes().to_vec()),
            Some(b"\"day\";r=5;t=60".to_vec())
        );
    }

    #[test]
    fn invalid_bytes_are_refused_as_from_bytes_refuses_them() {
        assert!(header_value(b"a\r\nInjected: 1").is_none());
        assert!(header_value(b"nul\0").is_none());
        assert!(header_value(b"").is_some_and(|v| v.is_empty()));
    }
}
