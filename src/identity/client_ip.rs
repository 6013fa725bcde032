//! The client address for an anonymous caller: the TCP peer, or for a trusted proxy the rightmost
//! untrusted `X-Forwarded-For` hop; IPv6 addresses counted per network.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::head::Headers;

/// The client address: the TCP peer, unless the peer is a trusted proxy; then walk
/// `X-Forwarded-For` from the right, skipping trusted hops: the first untrusted one is the client.
/// Every hop trusted → the leftmost. An entry that is not an address ends the walk at the last
/// address read before it. `X-Real-IP` and `Forwarded` are never believed.
pub fn client_ip(peer: IpAddr, headers: Headers<'_>, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut last = peer;
    // Header lines in order; each line's entries in order; walked from the right.
    let lines: Vec<&str> = headers.all("x-forwarded-for").filter_map(crate::head::text).collect();
    for line in lines.iter().rev() {
        for entry in line.rsplit(',') {
            let Some(ip) = parse_forwarded_ip(entry.trim()) else { return last };
            if !is_trusted(&ip) {
                return ip;
            }
            last = ip;
        }
    }
    last
}

/// The address an anonymous caller is counted under: IPv4 as is, IPv6 cut to its network (`prefix`
/// bits), since one client commonly holds a whole /64.
pub fn counted_network(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if prefix >= 128 { u128::MAX } else { !(u128::MAX >> prefix) };
            IpAddr::V6(std::net::Ipv6Addr::from(bits & mask))
        }
    }
}

fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    s.parse::<SocketAddr>().ok().map(|a| a.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(xff: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // Untrusted peer: its header is ignored.
        assert_eq!(client_ip(ip("203.0.113.9"), (&headers(&["1.2.3.4"])).into(), &trusted), ip("203.0.113.9"));
        // Trusted peer: rightmost untrusted hop.
        assert_eq!(
            client_ip(ip("10.0.0.2"), (&headers(&["6.6.6.6, 1.2.3.4, 10.0.0.7"])).into(), &trusted),
            ip("1.2.3.4")
        );
        // Several header lines read as one list.
        assert_eq!(client_ip(ip("10.0.0.2"), (&headers(&["6.6.6.6", "1.2.3.4"])).into(), &trusted), ip("1.2.3.4"));
        // Every hop trusted: leftmost.
        assert_eq!(client_ip(ip("10.0.0.2"), (&headers(&["10.1.1.1, 10.2.2.2"])).into(), &trusted), ip("10.1.1.1"));
        // Missing header: the peer.
        assert_eq!(client_ip(ip("10.0.0.2"), (&headers(&[])).into(), &trusted), ip("10.0.0.2"));
        // Garbage ends the walk at the last address read before it.
        assert_eq!(
            client_ip(ip("10.0.0.2"), (&headers(&["1.2.3.4, junk, 10.9.9.9"])).into(), &trusted),
            ip("10.9.9.9")
        );
        assert_eq!(client_ip(ip("10.0.0.2"), (&headers(&["1.2.3.4, junk"])).into(), &trusted), ip("10.0.0.2"));
        // Ports and IPv4-mapped addresses.
        assert_eq!(client_ip(ip("10.0.0.2"), (&headers(&["[2001:db8::1]:443"])).into(), &trusted), ip("2001:db8::1"));
        assert_eq!(client_ip(ip("::ffff:10.0.0.2"), (&headers(&["1.2.3.4:80"])).into(), &trusted), ip("1.2.3.4"));
    }

    #[test]
    fn ipv6_callers_are_counted_per_network() {
        let a = counted_network(ip("2001:db8:1:2:aaaa::1"), 64);
        let b = counted_network(ip("2001:db8:1:2:ffff:1:2:3"), 64);
        assert_eq!(a, b);
        assert_eq!(a, ip("2001:db8:1:2::"));
        assert_ne!(a, counted_network(ip("2001:db8:1:3::1"), 64));
        assert_eq!(counted_network(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(counted_network(ip("203.0.113.7"), 64), ip("203.0.113.7"));
    }
}
