//! Device enumeration: names, GUIDs, ports, GIDs.

use std::ffi::CStr;
use std::fmt;
use std::net::Ipv6Addr;

use rdma_sys::*;

use crate::error::{check_ibv, Error, Result};

extern "C" {
    // Exported by libibverbs (IBVERBS_1.11, rdma-core >= 32); the header only
    // has the inline wrapper `ibv_query_gid_ex`, which bindgen cannot bind.
    fn _ibv_query_gid_ex(
        context: *mut ibv_context,
        port_num: u32,
        gid_index: u32,
        entry: *mut ibv_gid_entry,
        flags: u32,
        entry_size: usize,
    ) -> libc::c_int;
}

/// A device, its ports and their GIDs, one per line: what `iser-target devices` prints.
impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (node GUID {:016x})", self.name, self.node_guid)?;
        for p in &self.ports {
            write!(
                f,
                "\n  port {}: {:?}, MTU {}, link layer {:?}",
                p.number, p.state, p.active_mtu, p.link_layer
            )?;
            for g in &p.gids {
                write!(f, "\n    GID[{}] {} {:?}", g.index, g.gid, g.gid_type)?;
            }
        }
        Ok(())
    }
}

/// One RDMA device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Kernel name, e.g. `rxe0`, `mlx5_0`.
    pub name: String,
    /// Node GUID (host byte order).
    pub node_guid: u64,
    /// The device's ports (numbered from 1).
    pub ports: Vec<PortInfo>,
}

/// Port state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    /// Link down.
    Down,
    /// Initialising.
    Init,
    /// Armed.
    Armed,
    /// Active: usable.
    Active,
    /// Active, deferred.
    ActiveDefer,
    /// Any other value.
    Other(u32),
}

/// Link layer of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkLayer {
    /// InfiniBand.
    InfiniBand,
    /// Ethernet (RoCE, iWARP).
    Ethernet,
    /// Not reported.
    Unspecified,
    /// Any other value.
    Other(u8),
}

/// GID type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GidType {
    /// InfiniBand / RoCEv1 GID ("IB/RoCE v1").
    IbOrRoceV1,
    /// RoCEv2 (routable, UDP encapsulated).
    RoceV2,
    /// Not obtainable / other value.
    Unknown(u32),
}

/// One populated GID table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GidInfo {
    /// Index in the port's GID table.
    pub index: u32,
    /// The GID.
    pub gid: Ipv6Addr,
    /// Its type.
    pub gid_type: GidType,
}

/// One port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Port number (1-based).
    pub number: u8,
    /// State.
    pub state: PortState,
    /// Active MTU in bytes (256..4096), 0 if unknown.
    pub active_mtu: u32,
    /// Link layer.
    pub link_layer: LinkLayer,
    /// Populated GID entries.
    pub gids: Vec<GidInfo>,
}

/// Map an `ibv_mtu` value to bytes.
pub(crate) fn mtu_bytes(mtu: u32) -> u32 {
    match mtu {
        1..=5 => 128 << mtu,
        _ => 0,
    }
}

fn port_state(s: u32) -> PortState {
    match s {
        1 => PortState::Down,
        2 => PortState::Init,
        3 => PortState::Armed,
        4 => PortState::Active,
        5 => PortState::ActiveDefer,
        o => PortState::Other(o),
    }
}

fn link_layer(l: u8) -> LinkLayer {
    // IBV_LINK_LAYER_* are #defines that bindgen does not emit.
    match l {
        0 => LinkLayer::Unspecified,
        1 => LinkLayer::InfiniBand,
        2 => LinkLayer::Ethernet,
        _ => LinkLayer::Other(l),
    }
}

fn gid_type(t: u32) -> GidType {
    match t {
        0 | 1 => GidType::IbOrRoceV1, // IBV_GID_TYPE_IB, IBV_GID_TYPE_ROCE_V1
        2 => GidType::RoceV2,         // IBV_GID_TYPE_ROCE_V2
        o => GidType::Unknown(o),
    }
}

/// List the RDMA devices of this host. A host without RDMA support (no
/// devices, no kernel modules) yields an empty list, not an error.
pub fn list_devices() -> Result<Vec<DeviceInfo>> {
    let mut n: libc::c_int = 0;
    // SAFETY: `n` is a valid out-pointer; the returned array is freed below.
    let list = unsafe { ibv_get_device_list(&mut n) };
    if list.is_null() {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOSYS) | Some(libc::ENODEV) | Some(libc::ENOENT) | Some(0) | None => {
                Ok(Vec::new())
            }
            _ => Err(Error::Os {
                op: "ibv_get_device_list",
                source: e,
            }),
        };
    }
    let mut out = Vec::new();
    let mut result = Ok(());
    for i in 0..n.max(0) as usize {
        // SAFETY: `list` holds `n` valid device pointers until freed.
        let dev = unsafe { *list.add(i) };
        match query_device(dev) {
            Ok(d) => out.push(d),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // SAFETY: `list` came from ibv_get_device_list and is freed once; no
    // device pointer from it is used afterwards.
    unsafe { ibv_free_device_list(list) };
    result.map(|()| out)
}

fn query_device(dev: *mut ibv_device) -> Result<DeviceInfo> {
    // SAFETY: `dev` is a valid device from the live device list; the name is
    // a NUL-terminated string inside it.
    let name = unsafe { CStr::from_ptr(ibv_get_device_name(dev)) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: as above.
    let node_guid = u64::from_be(unsafe { ibv_get_device_guid(dev) });
    // SAFETY: as above; the context is closed below on every path.
    let ctx = unsafe { ibv_open_device(dev) };
    if ctx.is_null() {
        return Err(Error::last_os("ibv_open_device"));
    }
    let ports = query_ports(ctx);
    // SAFETY: `ctx` was opened above and has no other users.
    unsafe { ibv_close_device(ctx) };
    Ok(DeviceInfo {
        name,
        node_guid,
        ports: ports?,
    })
}

fn query_ports(ctx: *mut ibv_context) -> Result<Vec<PortInfo>> {
    let attr = crate::verbs::query_device_attr(ctx)?;
    let mut ports = Vec::new();
    for port in 1..=attr.phys_port_cnt {
        // SAFETY: ibv_port_attr is plain data; zero is a valid initial value.
        let mut pa: ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: `ctx` is an open context, `pa` a valid out-pointer of the
        // size the inline helper passes to the provider.
        check_ibv("ibv_query_port", unsafe {
            ___ibv_query_port(ctx, port, &mut pa)
        })?;
        let mut gids = Vec::new();
        for index in 0..pa.gid_tbl_len.max(0) as u32 {
            // SAFETY: ibv_gid_entry is plain data.
            let mut entry: ibv_gid_entry = unsafe { std::mem::zeroed() };
            // SAFETY: valid context and out-pointer; size passed matches.
            let r = unsafe {
                _ibv_query_gid_ex(
                    ctx,
                    port as u32,
                    index,
                    &mut entry,
                    0,
                    std::mem::size_of::<ibv_gid_entry>(),
                )
            };
            if r != 0 {
                continue; // empty slot (ENODATA) or not supported
            }
            // SAFETY: `raw` is always a valid view of the 16-byte union.
            let raw = unsafe { entry.gid.raw };
            if raw == [0u8; 16] {
                continue;
            }
            gids.push(GidInfo {
                index,
                gid: Ipv6Addr::from(raw),
                gid_type: gid_type(entry.gid_type),
            });
        }
        ports.push(PortInfo {
            number: port,
            state: port_state(pa.state),
            active_mtu: mtu_bytes(pa.active_mtu),
            link_layer: link_layer(pa.link_layer),
            gids,
        });
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_mapping() {
        assert_eq!(mtu_bytes(1), 256);
        assert_eq!(mtu_bytes(3), 1024);
        assert_eq!(mtu_bytes(5), 4096);
        assert_eq!(mtu_bytes(0), 0);
        assert_eq!(port_state(4), PortState::Active);
        assert_eq!(link_layer(2), LinkLayer::Ethernet);
        assert_eq!(gid_type(2), GidType::RoceV2);
    }

    #[test]
    fn list_devices_does_not_crash() {
        // On a host without RDMA this is an empty list; with RDMA, names are set.
        let devs = list_devices().expect("list_devices");
        for d in devs {
            assert!(!d.name.is_empty());
        }
    }

    #[test]
    fn display_lists_ports_and_gids_one_per_line() {
        let device = DeviceInfo {
            name: "rxe0".into(),
            node_guid: 0x0250_56ff_fe8a_0001,
            ports: vec![PortInfo {
                number: 1,
                state: PortState::Active,
                active_mtu: 1024,
                link_layer: LinkLayer::Ethernet,
                gids: vec![GidInfo {
                    index: 1,
                    gid: "::ffff:192.168.77.1".parse().unwrap(),
                    gid_type: GidType::RoceV2,
                }],
            }],
        };
        assert_eq!(
            device.to_string(),
            "rxe0 (node GUID 025056fffe8a0001)\n\
             \x20 port 1: Active, MTU 1024, link layer Ethernet\n\
             \x20   GID[1] ::ffff:192.168.77.1 RoceV2"
        );
    }
}
