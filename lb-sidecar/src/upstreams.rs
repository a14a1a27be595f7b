//! Where an upstream may point. A host's record is written by its own agent, so a compromised
//! host could register this LB itself as its address (say the sidecar's status port): the public
//! listener would then serve the sidecar's `/metrics` and `/healthz`, or nginx's status server,
//! to anyone. An upstream equal to one of this LB's own listeners is always refused; one on this
//! machine at all (loopback, link-local, its own addresses) only where `[upstreams] allow` lists
//! it (a test fleet on 127.0.0.x, a sidecar on an app host).
use std::net::{IpAddr, SocketAddr};

/// An IP network, `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (ip, bits) = text.split_once('/').unwrap_or((text, ""));
        let network: IpAddr = ip
            .parse()
            .map_err(|_| format!("{text:?} is not a CIDR (10.0.0.0/8, fd00::/8)"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let bits = if bits.is_empty() {
            max
        } else {
            bits.parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0..={max}"))?
        };
        Ok(Cidr { network, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (canonical(self.network), ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What this LB refuses as an upstream.
#[derive(Debug, Clone, Default)]
pub struct UpstreamPolicy {
    /// Off: every upstream is accepted (the unit tests of other rules).
    pub enforced: bool,
    /// This LB's listeners: public, preview, status, nginx's status.
    pub own: Vec<SocketAddr>,
    /// This machine's own addresses.
    pub local: Vec<IpAddr>,
    /// `[upstreams] allow`: networks on this machine upstreams may still point into.
    pub allow: Vec<Cidr>,
}

impl UpstreamPolicy {
    /// Whether `ip:port` (one resolved address of a host) may be an upstream; the error says why
    /// not.
    pub fn check(&self, ip: IpAddr, port: u16) -> Result<(), String> {
        if !self.enforced {
            return Ok(());
        }
        let ip = canonical(ip);
        let here = ip.is_loopback()
            || ip.is_unspecified()
            || link_local(ip)
            || self.local.iter().any(|l| canonical(*l) == ip);
        for own in &self.own {
            let same_ip = canonical(own.ip()) == ip || (own.ip().is_unspecified() && here);
            if own.port() == port && same_ip {
                return Err(format!("{ip}:{port} is this LB's own listener {own}"));
            }
        }
        if here && !self.allow.iter().any(|net| net.contains(ip)) {
            return Err(format!(
                "{ip}:{port} is on this LB itself (loopback, link-local or one of its addresses); \
                 list it in [upstreams] allow if an app really runs here"
            ));
        }
        Ok(())
    }
}

fn link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// This machine's interface addresses (empty when they cannot be read: then only loopback,
/// link-local and the listeners themselves are recognised).
pub fn local_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            s.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> UpstreamPolicy {
        UpstreamPolicy {
            enforced: true,
            own: vec![
                "0.0.0.0:80".parse().unwrap(),
                "127.0.0.1:9901".parse().unwrap(),
                "127.0.0.1:9902".parse().unwrap(),
            ],
            local: vec!["10.0.0.5".parse().unwrap()],
            allow: allow.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_upstream_on_one_of_this_lbs_listeners_is_refused_even_when_allowed() {
        let p = policy(&["127.0.0.0/8", "10.0.0.0/8"]);
        for (addr, port) in [
            ("127.0.0.1", 9901),
            ("127.0.0.1", 9902),
            ("10.0.0.5", 80),
            ("127.0.0.7", 80),
        ] {
            let why = p.check(ip(addr), port).unwrap_err();
            assert!(why.contains("own listener"), "{addr}:{port}: {why}");
        }
        assert!(
            p.check(ip("127.0.0.1"), 8080).is_ok(),
            "allowed, not a listener"
        );
    }

    #[test]
    fn this_machine_is_refused_unless_allowed() {
        let p = policy(&[]);
        for addr in [
            "127.0.0.1",
            "::1",
            "169.254.169.254",
            "fe80::1",
            "10.0.0.5",
            "0.0.0.0",
            "::ffff:127.0.0.1",
        ] {
            assert!(p.check(ip(addr), 8080).is_err(), "{addr}");
        }
        assert!(p.check(ip("10.0.0.6"), 8080).is_ok());
        assert!(
            p.check(ip("192.168.1.10"), 80).is_ok(),
            "another machine's port 80"
        );
        let loopback = policy(&["127.0.0.0/8"]);
        assert!(loopback.check(ip("127.0.0.11"), 8080).is_ok());
        assert!(
            loopback.check(ip("169.254.169.254"), 80).is_err(),
            "metadata stays refused"
        );
    }

    #[test]
    fn cidrs_parse_and_match() {
        assert!(Cidr::parse("10.0.0.0/8")
            .unwrap()
            .contains(ip("10.200.3.4")));
        assert!(!Cidr::parse("10.0.0.0/8").unwrap().contains(ip("11.0.0.1")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        for bad in ["10.0.0.0/33", "nope/8", "10.0.0.0/x"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
