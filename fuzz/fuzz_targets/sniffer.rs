//! The HTTP/1.1 framing sniffer. Property: what it finds does not depend on how the bytes were
//! split into reads (the network decides that, never the client's intent).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiergate::conn::FramingSniffer;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // The first byte picks the read sizes; the rest is the stream.
    let (seed, stream) = (data[0] as usize, &data[1..]);
    let mut whole = FramingSniffer::default();
    let expected = whole.feed(stream);
    let mut split = FramingSniffer::default();
    let mut found = None;
    let mut at = 0;
    let mut step = 1 + seed % 7;
    while at < stream.len() {
        let end = (at + step).min(stream.len());
        if let Some(head) = split.feed(&stream[at..end]) {
            found = found.or(Some(head));
        }
        at = end;
        step = 1 + (step * 5 + seed) % 13;
    }
    assert_eq!(found, expected, "split reads found a different head");
    assert_eq!(split.is_off(), whole.is_off());
    assert_eq!(split.reading_head(), whole.reading_head());
});
