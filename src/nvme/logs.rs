//! Log pages (base 2.0 §5.16; NVMe-oF 1.1 §5.3 for the discovery log), built whole; Get Log
//! Page cuts the requested window out of them.

use super::command::Status;
use super::config::{AnaGroup, DiscoveryEntry, NvmeConfig};
use super::controller::{Counters, ErrorEntry};

/// Log page identifiers we serve.
pub mod lid {
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NAMESPACES: u8 = 0x04;
    pub const COMMAND_EFFECTS: u8 = 0x05;
    pub const ANA: u8 = 0x0C;
    pub const DISCOVERY: u8 = 0x70;
    pub const RESERVATION_NOTIFICATION: u8 = 0x80;
}

/// The transport type of NVMe/TCP in log entries (NVMe-oF 1.1).
const TRTYPE_TCP: u8 = 3;

/// Error Information log (base 2.0), 64 bytes per entry, newest first.
pub fn error_information(entries: &[ErrorEntry]) -> Vec<u8> {
    let mut d = Vec::with_capacity(entries.len().max(1) * 64);
    for e in entries {
        let mut b = [0u8; 64];
        b[0..8].copy_from_slice(&e.count.to_le_bytes());
        b[8..10].copy_from_slice(&e.sqid.to_le_bytes());
        b[10..12].copy_from_slice(&e.cid.to_le_bytes());
        b[12..14].copy_from_slice(&(e.status.field() << 1).to_le_bytes());
        b[14..16].copy_from_slice(&0xFFFFu16.to_le_bytes()); // parameter location: n/a
        b[16..24].copy_from_slice(&e.lba.to_le_bytes());
        b[24..28].copy_from_slice(&e.nsid.to_le_bytes());
        b[29] = TRTYPE_TCP;
        d.extend_from_slice(&b);
    }
    d
}

/// SMART / Health Information (base 2.0) for the whole controller.
pub fn smart(counters: &Counters) -> Vec<u8> {
    let mut d = vec![0u8; 512];
    // Composite temperature: a room-temperature 300 K; nothing here heats up.
    d[1..3].copy_from_slice(&300u16.to_le_bytes());
    d[3] = 100; // available spare
    d[4] = 10; // available spare threshold
               // Data units are thousands of 512-byte units, rounded up (base 2.0).
    let units = |bytes: u64| u128::from(bytes.div_ceil(512).div_ceil(1000));
    d[32..48].copy_from_slice(&units(counters.bytes_read).to_le_bytes());
    d[48..64].copy_from_slice(&units(counters.bytes_written).to_le_bytes());
    d[64..80].copy_from_slice(&u128::from(counters.read_commands).to_le_bytes());
    d[80..96].copy_from_slice(&u128::from(counters.write_commands).to_le_bytes());
    d[160..176].copy_from_slice(&u128::from(counters.media_errors).to_le_bytes());
    d[176..192].copy_from_slice(&u128::from(counters.error_entries).to_le_bytes());
    d
}

/// Firmware Slot Information (base 2.0): slot 1 active, holding `firmware`.
pub fn firmware_slot(firmware: &str) -> Vec<u8> {
    let mut d = vec![0u8; 512];
    d[0] = 1;
    let rev = &mut d[8..16];
    rev.fill(b' ');
    for (o, b) in rev.iter_mut().zip(firmware.bytes()) {
        *o = b;
    }
    d
}

/// Changed Namespace List (base 2.0): up to 1024 NSIDs, or FFFFFFFFh first when more
/// changed.
pub fn changed_namespaces(changed: &[u32]) -> Vec<u8> {
    let mut d = vec![0u8; 4096];
    if changed.len() > 1024 {
        d[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    } else {
        for (i, id) in changed.iter().enumerate() {
            d[i * 4..i * 4 + 4].copy_from_slice(&id.to_le_bytes());
        }
    }
    d
}

/// Commands Supported and Effects (base 2.0): admin and I/O commands we accept,
/// with Logical Block Content Change on the writing ones.
pub fn command_effects(admin: &[u8], io: &[(u8, bool)]) -> Vec<u8> {
    let mut d = vec![0u8; 4096];
    for &op in admin {
        d[usize::from(op) * 4] = 1; // CSUPP
    }
    for &(op, changes_content) in io {
        let at = 1024 + usize::from(op) * 4;
        d[at] = 1 | u8::from(changes_content) << 1; // CSUPP, LBCC
    }
    d
}

/// Asymmetric Namespace Access log (base 2.0 §5.16.1.12): a header (change count, number of
/// group descriptors) and the one group of this process, with its state and its namespaces'
/// NSIDs in ascending order (Linux drivers/nvme/host/multipath.c nvme_update_ana_state walks
/// them in step with its sorted namespace list). `groups_only` is RGO (Return Groups Only):
/// the descriptor without NSIDs. The change count, in the header and the descriptor, is the
/// group's: how many times its state changed (as Linux's nvmet reports its nvmet_ana_chgcnt
/// in both, drivers/nvme/target/admin-cmd.c nvmet_execute_get_log_page_ana).
pub fn ana(group: AnaGroup, nsids: &[u32], groups_only: bool) -> Vec<u8> {
    let mut listed: Vec<u32> = if groups_only {
        Vec::new()
    } else {
        nsids.to_vec()
    };
    listed.sort_unstable();
    let mut d = vec![0u8; 16 + 32 + 4 * listed.len()];
    d[0..8].copy_from_slice(&group.change_count.to_le_bytes()); // CHGCNT
    d[8..10].copy_from_slice(&1u16.to_le_bytes()); // NGRPS
    let desc = &mut d[16..48];
    desc[0..4].copy_from_slice(&group.id.to_le_bytes()); // ANAGRPID
    desc[4..8].copy_from_slice(&(listed.len() as u32).to_le_bytes()); // NNSIDV
    desc[8..16].copy_from_slice(&group.change_count.to_le_bytes()); // CHGCNT
    desc[16] = group.state as u8; // ANAS
    for (i, id) in listed.iter().enumerate() {
        d[48 + 4 * i..52 + 4 * i].copy_from_slice(&id.to_le_bytes());
    }
    d
}

/// Discovery log entry subtypes (NVMe-oF 1.1 Figure 38, with TP 8013's current discovery
/// subsystem).
mod subtype {
    pub const NVM_SUBSYSTEM: u8 = 2;
    pub const CURRENT_DISCOVERY_SUBSYSTEM: u8 = 3;
}

/// The discovery log page (NVMe-oF 1.1): header and one 1024-byte entry per subsystem port,
/// `current` (the discovery subsystem at the port the host is connected to) first when given.
/// `generation` changes whenever the entries do. nvme-cli's connect-all skips the current
/// discovery subsystem entry (fabrics.c: `if (e->subtype == NVME_NQN_CURR) continue`).
pub fn discovery(
    current: Option<&DiscoveryEntry>,
    entries: &[DiscoveryEntry],
    generation: u64,
) -> Vec<u8> {
    let listed: Vec<(&DiscoveryEntry, u8)> = current
        .map(|c| (c, subtype::CURRENT_DISCOVERY_SUBSYSTEM))
        .into_iter()
        .chain(entries.iter().map(|e| (e, subtype::NVM_SUBSYSTEM)))
        .collect();
    let mut d = vec![0u8; 1024 * (1 + listed.len())];
    d[0..8].copy_from_slice(&generation.to_le_bytes());
    d[8..16].copy_from_slice(&(listed.len() as u64).to_le_bytes());
    for (i, (e, subtype)) in listed.into_iter().enumerate() {
        discovery_entry(&mut d[1024 * (i + 1)..1024 * (i + 2)], e, subtype);
    }
    d
}

/// One 1024-byte Discovery Log Page Entry.
fn discovery_entry(b: &mut [u8], e: &DiscoveryEntry, subtype: u8) {
    b[0] = TRTYPE_TCP;
    b[1] = e.address_family as u8;
    b[2] = subtype;
    // TREQ: secure channel not specified; SQ flow control may be disabled (bit 2), which we
    // support (C2HData SUCCESS).
    b[3] = 1 << 2;
    b[4..6].copy_from_slice(&e.port_id.to_le_bytes());
    b[6..8].copy_from_slice(&0xFFFFu16.to_le_bytes()); // CNTLID: dynamic
    b[8..10].copy_from_slice(&32u16.to_le_bytes()); // ASQSZ
    let svc = &mut b[32..64];
    svc.fill(b' ');
    svc[..e.service_id.len().min(32)]
        .copy_from_slice(&e.service_id.as_bytes()[..e.service_id.len().min(32)]);
    // SUBNQN at bytes 256..511, TRADDR at 512..767 (NVMe-oF 1.1 Discovery Log Page
    // Entry; Linux include/linux/nvme.h struct nvmf_disc_rsp_page_entry: subnqn, then
    // traddr). nvme-cli connects to the TRADDR it finds here.
    let nqn = e.subsystem_nqn.as_bytes();
    let n = nqn.len().min(255);
    b[256..256 + n].copy_from_slice(&nqn[..n]);
    let addr = &mut b[512..768];
    addr.fill(b' ');
    addr[..e.address.len().min(256)]
        .copy_from_slice(&e.address.as_bytes()[..e.address.len().min(256)]);
    // TSAS for TCP: SECTYPE 0, no security.
}

/// The window `offset..offset+len` of a log page, zero-filled past its end. An offset beyond
/// the log is Invalid Field (base 2.0 §5.16: LPO must be within the log).
pub fn window(log: &[u8], offset: u64, len: usize) -> Result<Vec<u8>, Status> {
    let offset = usize::try_from(offset)
        .ok()
        .filter(|&o| o < log.len().max(1) && o % 4 == 0)
        .ok_or(Status::INVALID_FIELD)?;
    let mut d = log.get(offset..).unwrap_or(&[]).to_vec();
    d.resize(len, 0);
    Ok(d)
}

/// The entries of `config`'s discovery log that `host` may see: a subsystem that does not
/// allow it is left out (Linux drivers/nvme/target/discovery.c lists only allowed subsystems).
pub fn visible_entries(config: &NvmeConfig, host: &str) -> Vec<DiscoveryEntry> {
    let allowed = |entry: &&DiscoveryEntry| {
        (config.subsystems.iter())
            .find(|s| s.nqn == entry.subsystem_nqn)
            .map_or(true, |s| s.allows(host))
    };
    config.discovery.iter().filter(allowed).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::super::config::AddressFamily;
    use super::*;

    #[test]
    fn discovery_entry_layout() {
        let e = DiscoveryEntry {
            subsystem_nqn: "nqn.2026-01.test:disk".into(),
            port_id: 1,
            address_family: AddressFamily::Ipv4,
            address: "192.0.2.1".into(),
            service_id: "4420".into(),
        };
        let d = discovery(None, std::slice::from_ref(&e), 7);
        assert_eq!(d.len(), 2048);
        assert_eq!(&d[0..8], &7u64.to_le_bytes());
        assert_eq!(&d[8..16], &1u64.to_le_bytes());
        let b = &d[1024..];
        assert_eq!(&b[0..3], &[3, 1, 2]);
        assert_eq!(&b[32..36], b"4420");
        assert_eq!(b[36], b' ');
        // SUBNQN first, then TRADDR (struct nvmf_disc_rsp_page_entry): swapped, nvme-cli
        // would try to connect to the NQN as an address.
        assert_eq!(&b[256..277], b"nqn.2026-01.test:disk");
        assert_eq!(b[277], 0);
        assert_eq!(&b[512..521], b"192.0.2.1");
        assert_eq!(b[521], b' ');
        assert_eq!(&b[768..1024], &[0u8; 256][..], "TSAS: no security");
    }

    #[test]
    fn the_current_discovery_subsystem_comes_first() {
        let port = |nqn: &str, service_id: &str| DiscoveryEntry {
            subsystem_nqn: nqn.into(),
            port_id: 2,
            address_family: AddressFamily::Ipv4,
            address: "192.0.2.1".into(),
            service_id: service_id.into(),
        };
        let current = port(super::super::DISCOVERY_NQN, "8009");
        let d = discovery(Some(&current), &[port("nqn.2026-01.test:disk", "4420")], 1);
        assert_eq!(d.len(), 3 * 1024);
        assert_eq!(&d[8..16], &2u64.to_le_bytes(), "NUMREC");
        let (first, second) = (&d[1024..2048], &d[2048..]);
        assert_eq!(
            &first[0..6],
            &[3, 1, 3, 4, 2, 0],
            "TCP, IPv4, current discovery, port 2"
        );
        assert_eq!(&first[32..36], b"8009");
        assert_eq!(&first[256..292], b"nqn.2014-08.org.nvmexpress.discovery");
        assert_eq!(&first[512..521], b"192.0.2.1");
        assert_eq!(second[2], 2, "NVM subsystem");
        assert_eq!(&second[32..36], b"4420");
    }

    #[test]
    fn ana_log_layout() {
        use super::super::config::AnaState;
        let group = AnaGroup {
            id: 2,
            state: AnaState::NonOptimized,
            change_count: 3,
        };
        let d = ana(group, &[3, 1], false);
        assert_eq!(d.len(), 16 + 32 + 8);
        assert_eq!(&d[0..8], &3u64.to_le_bytes(), "CHGCNT");
        assert_eq!(&d[24..32], &3u64.to_le_bytes(), "descriptor CHGCNT");
        assert_eq!(&d[8..10], &[1, 0], "NGRPS");
        assert_eq!(&d[16..20], &2u32.to_le_bytes(), "ANAGRPID");
        assert_eq!(&d[20..24], &2u32.to_le_bytes(), "NNSIDV");
        assert_eq!(d[32], 0x02, "ANAS: non-optimized");
        assert_eq!(&d[48..56], &[1, 0, 0, 0, 3, 0, 0, 0], "NSIDs ascending");
        let d = ana(group, &[3, 1], true);
        assert_eq!(d.len(), 48);
        assert_eq!(&d[20..24], &[0; 4], "RGO: no NSIDs");
        assert_eq!(d[32], 0x02);
    }

    #[test]
    fn smart_data_units_round_up() {
        let d = smart(&Counters {
            bytes_read: 512 * 1001,
            bytes_written: 1,
            ..Counters::default()
        });
        assert_eq!(d[32], 2);
        assert_eq!(d[48], 1);
    }

    #[test]
    fn window_pads_and_checks_offset() {
        assert_eq!(window(&[1, 2, 3, 4, 5], 4, 3).unwrap(), vec![5, 0, 0]);
        assert_eq!(window(&[1; 8], 12, 4), Err(Status::INVALID_FIELD));
        assert_eq!(window(&[1; 8], 2, 4), Err(Status::INVALID_FIELD));
    }
}
