//! Which address a request comes from: the peer's, or behind trusted proxies the
//! client's as their forwarding headers say; and the block of addresses one client
//! can rotate through, to which a failure budget belongs.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The proxies in front of the gateway, whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TrustedProxies {
    /// Every peer is a proxy: on Databricks Apps the peer is always the Apps proxy.
    pub every_peer: bool,
    /// Proxies by network: a peer in one is trusted, and `X-Forwarded-For` hops
    /// in one are passed over.
    pub networks: Vec<IpNet>,
}

impl TrustedProxies {
    /// Comma-separated CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or single addresses.
    pub(crate) fn parse_networks(list: &str) -> Result<Vec<IpNet>, String> {
        list.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .map(|net| net.trunc())
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!("{entry:?} is not a CIDR (such as 10.0.0.0/8) or an IP address")
                    })
            })
            .collect()
    }

    fn trusts_peer(&self, peer: IpAddr) -> bool {
        self.every_peer || self.is_proxy(peer)
    }

    fn is_proxy(&self, address: IpAddr) -> bool {
        self.networks.iter().any(|net| net.contains(&address))
    }
}

/// The client's address. From a peer that is not a trusted proxy, the peer's: its
/// headers are the client's own claims. From a trusted one, the right-most
/// `X-Forwarded-For` hop (over all header lines) that is not a trusted proxy (each
/// proxy appends the address it saw; entries further left are claims a key
/// guesser would rotate); without `X-Forwarded-For`, `X-Real-Ip`; else the peer.
pub(crate) fn client_address(
    headers: &HeaderMap,
    peer: IpAddr,
    trusted: &TrustedProxies,
) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.trusts_peer(peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|line| line.to_str().ok())
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .collect();
    if hops.is_empty() {
        return headers
            .get("x-real-ip")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_address)
            .map_or(peer, |address| address.to_canonical());
    }
    let mut nearest = peer;
    for hop in hops.iter().rev() {
        // A hop that is no address was not written by a proxy: stop at the last known one.
        let Some(address) = parse_address(hop).map(|address| address.to_canonical()) else {
            return nearest;
        };
        if !trusted.is_proxy(address) {
            return address;
        }
        nearest = address;
    }
    nearest
}

/// The block a failure budget belongs to: an IPv4 address, or an IPv6 address's
/// /64 (one subscriber's network, whose addresses a client can rotate freely).
pub(crate) fn address_block(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// An IP address, or the address of `ip:port` as some proxies send it.
fn parse_address(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|address| address.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for &(name, value) in pairs {
            headers.append(name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn client_address_behind_trusted_proxies() {
        let trusted = TrustedProxies {
            every_peer: false,
            networks: TrustedProxies::parse_networks("10.0.0.0/8, 192.168.1.1, fd00::/8").unwrap(),
        };
        let proxy: IpAddr = "10.0.0.9".parse().unwrap();
        let cases: [(&[(&str, &str)], &str); 12] = [
            (&[], "10.0.0.9"),
            // The right-most hop that is not a trusted proxy; the left ones are claims.
            (
                &[(
                    "x-forwarded-for",
                    "198.51.100.1, 203.0.113.7, 10.1.1.1, 192.168.1.1",
                )],
                "203.0.113.7",
            ),
            // Over all header lines, in order.
            (
                &[
                    ("x-forwarded-for", "198.51.100.1, 203.0.113.7"),
                    ("x-forwarded-for", "10.2.2.2"),
                ],
                "203.0.113.7",
            ),
            (&[("x-forwarded-for", "203.0.113.7:5555")], "203.0.113.7"),
            (
                &[("x-forwarded-for", "10.1.1.1, [2001:db8::7]:443")],
                "2001:db8::7",
            ),
            (&[("x-forwarded-for", "::ffff:203.0.113.9")], "203.0.113.9"),
            // Every hop a proxy: the farthest one.
            (&[("x-forwarded-for", "10.3.3.3, fd00::1")], "10.3.3.3"),
            // A hop that is no address: the nearest known hop.
            (&[("x-forwarded-for", "junk, 10.4.4.4")], "10.4.4.4"),
            (&[("x-forwarded-for", "not an ip")], "10.0.0.9"),
            // X-Real-Ip only without X-Forwarded-For.
            (&[("x-real-ip", " 198.51.100.4 ")], "198.51.100.4"),
            (
                &[
                    ("x-forwarded-for", "203.0.113.7"),
                    ("x-real-ip", "198.51.100.4"),
                ],
                "203.0.113.7",
            ),
            (&[("x-real-ip", "")], "10.0.0.9"),
        ];
        for (pairs, expected) in cases {
            let headers = headers(pairs);
            assert_eq!(
                client_address(&headers, proxy, &trusted),
                expected.parse::<IpAddr>().unwrap(),
                "{pairs:?}"
            );
            // From a peer that is not a trusted proxy, headers are ignored.
            let stranger: IpAddr = "203.0.113.50".parse().unwrap();
            assert_eq!(client_address(&headers, stranger, &trusted), stranger);
            assert_eq!(
                client_address(&headers, proxy, &TrustedProxies::default()),
                proxy
            );
        }
    }

    #[test]
    fn on_databricks_apps_the_proxy_appends_the_client() {
        let apps = TrustedProxies {
            every_peer: true,
            networks: Vec::new(),
        };
        let peer: IpAddr = "100.64.0.3".parse().unwrap();
        let forged = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.7")]);
        assert_eq!(
            client_address(&forged, peer, &apps),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        let real_ip = headers(&[("x-real-ip", "203.0.113.8")]);
        assert_eq!(
            client_address(&real_ip, peer, &apps),
            "203.0.113.8".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn trusted_networks_are_validated() {
        let nets = TrustedProxies::parse_networks(" 10.1.2.3/8 ,, 2001:db8::1 ").unwrap();
        assert_eq!(
            nets,
            vec![
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "2001:db8::1/128".parse::<IpNet>().unwrap()
            ]
        );
        for bad in ["10.0.0.0/33", "proxy.internal", "10.0.0.0/8, *"] {
            let error = TrustedProxies::parse_networks(bad).unwrap_err();
            assert!(error.contains("is not a CIDR"), "{error}");
        }
    }
}
