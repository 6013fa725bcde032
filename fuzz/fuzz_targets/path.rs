//! The path normaliser and route matching. Properties: normalising is idempotent; a normalised
//! path starts with `/` (or is `*`), has no empty or dot segment; and the route the normalised
//! path gets is the route of the path the upstream receives (the same string, normalised again).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiergate::route::{Class, EscapedSlashes, OnError, Route, RouteTable, normalize};

fn table(escaped: EscapedSlashes) -> RouteTable {
    let r = |class| Route { class, shadow: false, on_error: OnError::Local };
    RouteTable::new(
        vec![
            ("/api/v1/export".into(), vec![], r(Class::DataExport)),
            ("/api/".into(), vec![], r(Class::Api)),
            ("/health".into(), vec![], r(Class::Exempt)),
        ],
        OnError::Local,
        escaped,
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    for escaped in [EscapedSlashes::Reject, EscapedSlashes::Keep] {
        let Ok(once) = normalize(path, escaped) else { continue };
        let twice = normalize(&once, escaped).expect("a normalised path normalises again");
        assert_eq!(once, twice, "idempotent");
        if once != "*" {
            assert!(once.starts_with('/'), "{once:?}");
            assert!(!once.contains("//"), "{once:?}");
            for seg in once.split('/').skip(1) {
                let name = seg.split(';').next().unwrap_or(seg);
                assert!(name != "." && name != "..", "dot segment left in {once:?}");
            }
        }
        let routes = table(escaped);
        let method = http::Method::GET;
        assert_eq!(routes.classify(&method, &once), routes.classify(&method, &twice));
        // Exempt only when the forwarded path really is under the exempt prefix.
        if routes.classify(&method, &once).class == Class::Exempt {
            assert!(once.starts_with("/health"), "{once:?}");
        }
    }
});
