//! `SocketAddr` <-> `struct sockaddr` conversions.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Owned C socket address big enough for IPv4 and IPv6.
pub(crate) struct RawSockAddr {
    pub storage: libc::sockaddr_storage,
}

impl RawSockAddr {
    pub(crate) fn as_mut_ptr(&mut self) -> *mut libc::sockaddr {
        &mut self.storage as *mut libc::sockaddr_storage as *mut libc::sockaddr
    }
}

pub(crate) fn to_raw(addr: SocketAddr) -> RawSockAddr {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for
            // sockaddr_in; we write one complete value into it.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
        }
    }
    RawSockAddr { storage }
}

/// Convert a C socket address. Returns `None` for families other than
/// AF_INET/AF_INET6 (e.g. AF_IB or an unset address).
///
/// # Safety
/// `sa` must point to a readable socket address whose storage is at least as
/// large as the structure its `sa_family` announces.
pub(crate) unsafe fn from_raw(sa: *const libc::sockaddr) -> Option<SocketAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees `sa` is readable.
    let family = unsafe { (*sa).sa_family } as i32;
    match family {
        libc::AF_INET => {
            // SAFETY: family says this is a sockaddr_in; caller guarantees size.
            let sin = unsafe { std::ptr::read_unaligned(sa as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: family says this is a sockaddr_in6; caller guarantees size.
            let sin6 = unsafe { std::ptr::read_unaligned(sa as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_v4_v6() {
        for s in [
            "192.168.77.1:3260",
            "[fe80::1%2]:3260",
            "0.0.0.0:0",
            "[::1]:1",
        ] {
            let a: SocketAddr = s.parse().unwrap();
            let raw = to_raw(a);
            // SAFETY: `raw` is a complete sockaddr_storage.
            let back = unsafe { from_raw(&raw.storage as *const _ as *const libc::sockaddr) };
            assert_eq!(back, Some(a), "{s}");
        }
    }

    #[test]
    fn unknown_family_is_none() {
        // SAFETY: all-zero sockaddr_storage is valid (AF_UNSPEC).
        let st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a complete sockaddr_storage.
        assert_eq!(
            unsafe { from_raw(&st as *const _ as *const libc::sockaddr) },
            None
        );
    }
}
