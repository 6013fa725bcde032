//! The `X-Forwarded-For` walk. Properties: from an untrusted peer the header is never believed; from
//! a trusted one the answer is the peer or an address written in the header.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use tiergate::identity::client_ip;

fuzz_target!(|data: &[u8]| {
    let mut headers = http::HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(v) = http::HeaderValue::from_bytes(line) {
            headers.append("x-forwarded-for", v);
        }
    }
    let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    let outsider: IpAddr = "203.0.113.9".parse().unwrap();
    assert_eq!(client_ip(outsider, (&headers).into(), &trusted), outsider);
    let proxy: IpAddr = "10.0.0.2".parse().unwrap();
    let got = client_ip(proxy, (&headers).into(), &trusted);
    if got != proxy {
        // The answer must be one of the addresses written in the header (compared as addresses:
        // `a:0a::` and `a:a::` are the same one).
        let written: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|e| {
                let e = e.trim();
                e.parse::<IpAddr>().ok().or_else(|| e.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
            })
            .map(|ip| ip.to_canonical())
            .collect();
        assert!(written.contains(&got), "{got} is not among {written:?}");
    }
});
