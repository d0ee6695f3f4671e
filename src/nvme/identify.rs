//! Identify data structures (base 2.0 §5.17.2; NVM Command Set 1.0 §4.1.5), built from the
//! configuration. Each is 4096 bytes.

use super::config::{
    NamespaceDescriptor, NvmeConfig, SubsystemDescriptor, ANA_GROUP_MAX, DISCOVERY_NQN,
};
use super::controller::{Notice, ERROR_LOG_ENTRIES, VERSION};

/// Size of every Identify data structure.
pub const IDENTIFY_LEN: usize = 4096;

/// CNS values we answer (base 2.0).
pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NAMESPACES: u8 = 0x02;
    pub const NAMESPACE_DESCRIPTORS: u8 = 0x03;
    pub const CSI_NAMESPACE: u8 = 0x05;
    pub const CSI_CONTROLLER: u8 = 0x06;
    pub const CSI_INDEPENDENT_NAMESPACE: u8 = 0x08;
    pub const COMMAND_SET_LIST: u8 = 0x1C;
}

/// CMIC bits (base 2.0 Identify Controller).
mod cmic {
    pub const MULTI_PORT: u8 = 1 << 0;
    pub const MULTI_CONTROLLER: u8 = 1 << 1;
    pub const ANA: u8 = 1 << 3;
}

/// ANATT, in seconds: the longest an ANA transition takes. Ours never change while the
/// process runs; Linux doubles it for its ANA Change timer, which never starts here (Linux's
/// nvmet reports 10 s too).
const ANA_TRANSITION_TIME: u8 = 10;

/// Keep Alive Support granularity we report, in 100 ms units (Linux's nvmet reports 1 s).
pub const KEEP_ALIVE_GRANULARITY: u16 = 10;
/// Asynchronous Event Requests a controller holds at once (AERL + 1).
pub const MAX_HELD_EVENTS: usize = 4;
/// Abort commands at once (ACL + 1).
const ABORT_LIMIT: u8 = 4;

fn put_ascii(out: &mut [u8], text: &str) {
    out.fill(b' ');
    for (o, b) in out
        .iter_mut()
        .zip(text.bytes().filter(u8::is_ascii_graphic))
    {
        *o = b;
    }
}

fn put_nqn(out: &mut [u8], nqn: &str) {
    let n = nqn.len().min(out.len() - 1);
    out[..n].copy_from_slice(&nqn.as_bytes()[..n]);
}

fn put16(out: &mut [u8], at: usize, v: u16) {
    out[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(out: &mut [u8], at: usize, v: u64) {
    out[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// MDTS: log2 of the largest transfer in 4 KiB units (CAP.MPSMIN).
fn mdts(max_transfer: u32) -> u8 {
    (max_transfer / 4096).max(1).ilog2() as u8
}

/// Identify Controller (base 2.0 Identify Controller data structure; NVMe-oF 1.1 for the fabrics fields).
/// `subsystem` is `None` for the discovery controller.
pub fn controller(
    config: &NvmeConfig,
    subsystem: Option<&SubsystemDescriptor>,
    cntlid: u16,
) -> Vec<u8> {
    let mut d = vec![0u8; IDENTIFY_LEN];
    let (serial, model, firmware, nqn) = match subsystem {
        Some(s) => (&*s.serial, &*s.model, &*s.firmware, &*s.nqn),
        None => ("discovery", "iser-target discovery", "0.1", DISCOVERY_NQN),
    };
    put_ascii(&mut d[4..24], serial);
    put_ascii(&mut d[24..64], model);
    put_ascii(&mut d[64..72], firmware);
    d[72] = 6; // RAB
               // CMIC: the subsystem may have several controllers (dynamic model); an NVM subsystem may
               // also be served by several gateways (ports) and reports ANA (see below).
    d[76] = if subsystem.is_some() {
        cmic::MULTI_PORT | cmic::MULTI_CONTROLLER | cmic::ANA
    } else {
        cmic::MULTI_CONTROLLER
    };
    d[77] = mdts(config.max_transfer);
    put16(&mut d, 78, cntlid);
    put32(&mut d, 80, VERSION);
    // OAES, the notices this controller may send: an NVM subsystem's sends namespace attribute
    // and ANA change notices. A discovery controller has no namespaces and no ANA: like Linux's
    // nvmet (drivers/nvme/target/discovery.c nvmet_execute_disc_identify,
    // NVMET_DISC_AEN_CFG_OPTIONAL) it announces Discovery Log Page Change alone, sent when a
    // reload changes the subsystems its host may see (Queue::handle_allowed_hosts_changed).
    let oaes = match subsystem {
        Some(_) => Notice::NamespaceAttribute.enable_bit() | Notice::AnaChange.enable_bit(),
        None => Notice::DiscoveryLogChange.enable_bit(),
    };
    put32(&mut d, 92, oaes);
    put32(&mut d, 96, 1); // CTRATT: 128-bit host identifier
    d[111] = if subsystem.is_some() { 1 } else { 2 }; // CNTRLTYPE: I/O or discovery
    d[258] = ABORT_LIMIT - 1; // ACL
    d[259] = MAX_HELD_EVENTS as u8 - 1; // AERL
    d[260] = 0x03; // FRMW: slot 1 read-only, one slot
    d[261] = 1 << 1 | 1 << 2; // LPA: command effects log, extended data (offsets)
    d[262] = ERROR_LOG_ENTRIES as u8 - 1; // ELPE
    put16(&mut d, 266, 0x157); // WCTEMP, 343 K
    put16(&mut d, 268, 0x175); // CCTEMP, 373 K
    put16(&mut d, 320, KEEP_ALIVE_GRANULARITY); // KAS
    if subsystem.is_some() {
        // ANA reporting (base 2.0 §8.1.1): ANATT, ANACAP (Optimized, Non-optimized and
        // Inaccessible can be reported), ANAGRPMAX and NANAGRPID (this controller has one
        // group, so Linux sizes its ANA log buffer for one descriptor: drivers/nvme/host/
        // multipath.c nvme_mpath_init_identify).
        d[342] = ANA_TRANSITION_TIME;
        d[343] = 0b111;
        put32(&mut d, 344, ANA_GROUP_MAX);
        put32(&mut d, 348, 1);
    }
    d[512] = 0x66; // SQES: 64 bytes
    d[513] = 0x44; // CQES: 16 bytes
    put16(&mut d, 514, config.max_queue_size); // MAXCMD
    if let Some(s) = subsystem {
        let nn = s.namespaces.iter().map(|n| n.nsid).max().unwrap_or(0);
        put32(&mut d, 516, nn); // NN
                                // MNAN: Linux refuses ANA when it is 0 or above NN (drivers/nvme/host/multipath.c
                                // nvme_mpath_init_identify, "Invalid MNAN value") and sizes its ANA log buffer by it.
        put32(&mut d, 540, nn);
        // ONCS: Compare, Dataset Management, Write Zeroes, Reservations.
        put16(&mut d, 520, 1 | 1 << 2 | 1 << 3 | 1 << 5);
        // VWC: a volatile write cache is present; bits 2:1 = 10b, Flush with the broadcast
        // NSID is not supported.
        d[525] = u8::from(s.namespaces.iter().any(|n| n.volatile_write_cache)) | 0b100;
    }
    // SGLS: SGLs supported, and in-capsule data at an offset (Linux
    // drivers/nvme/target/admin-cmd.c sets bit 20 when the port has in-capsule data).
    put32(&mut d, 536, 1 | 1 << 20);
    put_nqn(&mut d[768..1024], nqn);
    // Fabrics: IOCCSZ (SQE + in-capsule data, 16-byte units), IORCSZ, ICDOFF 0, FCATT 0
    // (dynamic model), MSDBD 1, OFCS bit 0 (Disconnect).
    put32(&mut d, 1792, (64 + config.in_capsule_data) / 16);
    put32(&mut d, 1796, 1);
    d[1803] = 1;
    put16(&mut d, 1804, 1);
    d
}

/// Identify Namespace for the NVM command set (NVM Command Set 1.0). `ns.blocks` is its
/// current size; `anagrpid` its ANA group.
pub fn namespace(ns: &NamespaceDescriptor, anagrpid: u32) -> Vec<u8> {
    let mut d = vec![0u8; IDENTIFY_LEN];
    put64(&mut d, 0, ns.blocks); // NSZE
    put64(&mut d, 8, ns.blocks); // NCAP
    put64(&mut d, 16, ns.blocks); // NUSE
    d[24] = u8::from(ns.thin); // NSFEAT: thin provisioning
    d[30] = 1; // NMIC: may be attached to several controllers
    d[31] = rescap(ns);
    // DLFEAT: deallocated blocks read as zeroes; Write Zeroes can deallocate.
    d[33] = 0x01 | 1 << 3;
    let bytes = u128::from(ns.blocks) * u128::from(ns.block_size);
    d[48..64].copy_from_slice(&bytes.to_le_bytes()); // NVMCAP
    put32(&mut d, 92, anagrpid); // ANAGRPID
    d[99] = u8::from(ns.read_only); // NSATTR: write protected
    d[104..120].copy_from_slice(&ns.nguid);
    d[120..128].copy_from_slice(&ns.eui64);
    // LBA format 0: no metadata, LBADS, best relative performance.
    put32(&mut d, 128, ns.lba_shift() << 16);
    d
}

/// RESCAP (Reservation Capabilities): every reservation type, IEKEY as NVMe 1.3 and later define
/// it, and Persist Through Power Loss when the namespace's reservations can persist.
fn rescap(ns: &NamespaceDescriptor) -> u8 {
    0x80 | 0x7E | u8::from(ns.persistent_reservations)
}

/// Active Namespace ID list: NSIDs above `after`, ascending, up to 1024.
pub fn active_namespaces(subsystem: &SubsystemDescriptor, after: u32) -> Vec<u8> {
    let mut ids: Vec<u32> = subsystem
        .namespaces
        .iter()
        .map(|n| n.nsid)
        .filter(|&id| id > after)
        .collect();
    ids.sort_unstable();
    let mut d = vec![0u8; IDENTIFY_LEN];
    for (i, id) in ids.iter().take(IDENTIFY_LEN / 4).enumerate() {
        put32(&mut d, i * 4, *id);
    }
    d
}

/// Namespace Identification Descriptor list (base 2.0): EUI-64, NGUID, UUID and the
/// command set identifier (NVM).
pub fn namespace_descriptors(ns: &NamespaceDescriptor) -> Vec<u8> {
    let mut d = Vec::with_capacity(IDENTIFY_LEN);
    for (nidt, nid) in [
        (1u8, &ns.eui64[..]),
        (2, &ns.nguid[..]),
        (3, &ns.uuid[..]),
        (4, &[0u8][..]),
    ] {
        d.extend_from_slice(&[nidt, nid.len() as u8, 0, 0]);
        d.extend_from_slice(nid);
    }
    d.resize(IDENTIFY_LEN, 0);
    d
}

/// I/O Command Set Independent Identify Namespace (base 2.0; the layout of Linux's struct
/// nvme_id_ns_cs_indep: NSFEAT, NMIC, RESCAP, FPI, ANAGRPID at 4, NSATTR at 8, NSTAT at 14).
pub fn csi_independent_namespace(ns: &NamespaceDescriptor, anagrpid: u32) -> Vec<u8> {
    let mut d = vec![0u8; IDENTIFY_LEN];
    d[0] = u8::from(ns.thin); // NSFEAT
    d[1] = 1; // NMIC: may be attached to several controllers
    d[2] = rescap(ns);
    put32(&mut d, 4, anagrpid); // ANAGRPID
    d[8] = u8::from(ns.read_only); // NSATTR
    d[14] = 1; // NSTAT: ready
    d
}

/// I/O Command Set specific structures of the NVM command set (CNS 05h, 06h): we have no
/// end-to-end protection, extended LBA formats or command size limits beyond MDTS, so every
/// field is zero ("no limit" / "not supported").
pub fn nvm_command_set_specific() -> Vec<u8> {
    vec![0u8; IDENTIFY_LEN]
}

/// The NVM command set's I/O Command Set specific Identify Controller (CNS 06h, NVM Command
/// Set 1.0): WZSL as MDTS (Write Zeroes is bounded like a transfer), DMRL 0 (no limit below
/// the 256 ranges NR can say) and DMRSL
/// [`super::io::DSM_MAX_RANGE_BLOCKS`] blocks per range (each range becomes one UNMAP
/// descriptor). Linux limits its discards and write-zeroes by these
/// (drivers/nvme/host/core.c nvme_init_non_mdts_limits).
pub fn nvm_controller(max_transfer: u32) -> Vec<u8> {
    let mut d = vec![0u8; IDENTIFY_LEN];
    d[1] = mdts(max_transfer); // WZSL
    put32(&mut d, 4, super::io::DSM_MAX_RANGE_BLOCKS); // DMRSL
    d
}

/// Identify I/O Command Set data structure (base 2.0): one combination, NVM only.
pub fn command_set_list() -> Vec<u8> {
    let mut d = vec![0u8; IDENTIFY_LEN];
    put64(&mut d, 0, 1);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> NamespaceDescriptor {
        NamespaceDescriptor {
            nsid: 2,
            block_size: 4096,
            blocks: 1000,
            read_only: true,
            volatile_write_cache: true,
            thin: true,
            nguid: [0x11; 16],
            eui64: [0x22; 8],
            uuid: [0x33; 16],
            persistent_reservations: false,
        }
    }

    #[test]
    fn namespace_fields() {
        let d = namespace(&ns(), 7);
        assert_eq!(&d[0..8], &1000u64.to_le_bytes());
        assert_eq!(d[30], 1, "NMIC: shared");
        assert_eq!(d[31], 0xFE, "RESCAP: every type, IEKEY, no PTPL");
        let persistent = NamespaceDescriptor {
            persistent_reservations: true,
            ..ns()
        };
        assert_eq!(namespace(&persistent, 7)[31], 0xFF, "RESCAP with PTPL");
        assert_eq!(csi_independent_namespace(&persistent, 7)[2], 0xFF);
        assert_eq!(&d[92..96], &7u32.to_le_bytes(), "ANAGRPID");
        assert_eq!(d[99], 1);
        assert_eq!(&d[104..120], &[0x11; 16]);
        assert_eq!(&d[120..128], &[0x22; 8]);
        assert_eq!(d[128 + 2], 12);
    }

    #[test]
    fn descriptors_list_eui_nguid_uuid_csi() {
        let d = namespace_descriptors(&ns());
        assert_eq!(&d[0..4], &[1, 8, 0, 0]);
        assert_eq!(&d[4..12], &[0x22; 8]);
        assert_eq!(&d[12..16], &[2, 16, 0, 0]);
        assert_eq!(&d[32..36], &[3, 16, 0, 0]);
        assert_eq!(&d[52..57], &[4, 1, 0, 0, 0]);
        assert_eq!(d[57..].iter().filter(|&&b| b != 0).count(), 0);
    }

    #[test]
    fn mdts_in_4k_units() {
        assert_eq!(mdts(1 << 20), 8);
        assert_eq!(mdts(4096), 0);
    }
}
