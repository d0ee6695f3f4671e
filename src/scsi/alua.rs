//! Asymmetric logical unit access (SPC-4 5.15): several gateways export one LU, each as one
//! target port in a target port group of its own, so an initiator (Linux's scsi_dh_alua and
//! dm-multipath) groups the paths by the LU's identity and ranks them by the group's state.
//!
//! Each gateway process knows only its own port: INQUIRY reports implicit ALUA (TPGS = 01b),
//! VPD 0x83 adds the relative target port and target port group designators, and REPORT TARGET
//! PORT GROUPS describes the one group this gateway is in. The initiator asks RTPG down every
//! path and keeps, per path, the descriptor of the group that path's VPD 0x83 names
//! (drivers/scsi/device_handler/scsi_dh_alua.c, alua_rtpg()). The state is set in the
//! configuration and changes when the gateway reloads it ([`super::LogicalUnit::set_alua_state`],
//! an implicit transition with a unit attention); SET TARGET PORT GROUPS (explicit ALUA) is not
//! supported.

use super::cdb::Cdb;
use super::op;
use super::sense::{self, Sense};
use super::{truncate, CmdResult};

/// MAINTENANCE IN service action: REPORT TARGET PORT GROUPS.
pub const SA_REPORT_TARGET_PORT_GROUPS: u8 = 0x0A;

/// The standard INQUIRY byte 5 TPGS field for implicit ALUA only (01b in bits 5..4).
pub const TPGS_IMPLICIT: u8 = 0x10;

/// NOT READY, LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE (SPC-4 5.15.2.4.4).
const STANDBY: (u8, u8) = (0x04, 0x0B);

/// Protocol identifier of iSCSI (SPC-4 7.6.1), in designators with PIV set.
const PROTOCOL_ISCSI: u8 = 0x5;

/// Asymmetric access state of a target port group (SPC-4 6.37, table 225).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AluaState {
    /// Active/optimized: every command, the preferred path.
    #[default]
    ActiveOptimized,
    /// Active/non-optimized: every command, used when no optimized path is left.
    ActiveNonOptimized,
    /// Standby: only the commands that inspect the LU; media access is NOT READY.
    Standby,
}

impl AluaState {
    /// The ASYMMETRIC ACCESS STATE code of RTPG.
    pub(super) fn code(self) -> u8 {
        match self {
            AluaState::ActiveOptimized => 0x0,
            AluaState::ActiveNonOptimized => 0x1,
            AluaState::Standby => 0x2,
        }
    }

    /// The state of a [`AluaState::code`] (an unknown code cannot be stored: standby).
    pub(super) fn from_code(code: u8) -> AluaState {
        match code {
            0x0 => AluaState::ActiveOptimized,
            0x1 => AluaState::ActiveNonOptimized,
            _ => AluaState::Standby,
        }
    }
}

/// The configuration's spelling (`alua_state:`).
impl std::fmt::Display for AluaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AluaState::ActiveOptimized => "active-optimized",
            AluaState::ActiveNonOptimized => "active-non-optimized",
            AluaState::Standby => "standby",
        })
    }
}

/// This gateway's target port: its group, state and relative port identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AluaPort {
    /// Target port group identifier; also the relative target port identifier (one port per
    /// gateway process) and the iSCSI target portal group tag. 1..=65535 (0 is reserved for
    /// relative port identifiers, SPC-4 7.8.6.7).
    pub group: u16,
    /// The group's asymmetric access state.
    pub state: AluaState,
}

impl Default for AluaPort {
    fn default() -> Self {
        AluaPort {
            group: 1,
            state: AluaState::ActiveOptimized,
        }
    }
}

impl AluaPort {
    /// The VPD 0x83 designators of the port the command came through: relative target port
    /// (type 4) and target port group (type 5), both binary, target port association, PIV set
    /// with the iSCSI protocol identifier.
    pub(super) fn designators(&self) -> Vec<u8> {
        let mut d = Vec::with_capacity(16);
        for kind in [0x04u8, 0x05] {
            d.extend_from_slice(&[PROTOCOL_ISCSI << 4 | 0x01, 0x80 | 0x10 | kind, 0x00, 0x04]);
            d.extend_from_slice(&[0, 0]);
            d.extend_from_slice(&self.group.to_be_bytes());
        }
        d
    }

    /// Refuses media access while the port is in standby. The commands allowed are those of
    /// SPC-4 5.15.2.4.4 that we implement, as LIO allows them
    /// (drivers/target/target_core_alua.c, core_alua_state_standby()): TEST UNIT READY is
    /// not among them, so multipathd's tur checker sees the path as a standby ("ghost") path.
    pub(super) fn check_access(&self, cdb: Cdb<'_>) -> CmdResult<()> {
        if self.state != AluaState::Standby {
            return Ok(());
        }
        let sa = cdb.service_action();
        let allowed = match cdb.opcode() {
            op::INQUIRY
            | op::MODE_SELECT_6
            | op::MODE_SELECT_10
            | op::MODE_SENSE_6
            | op::MODE_SENSE_10
            | op::REPORT_LUNS
            | op::READ_CAPACITY_10
            | op::REQUEST_SENSE
            | op::PERSISTENT_RESERVE_IN
            | op::PERSISTENT_RESERVE_OUT => true,
            op::SERVICE_ACTION_IN_16 => sa == op::SA_READ_CAPACITY_16,
            op::MAINTENANCE_IN => sa == SA_REPORT_TARGET_PORT_GROUPS,
            _ => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(Sense::new(sense::NOT_READY, STANDBY))
        }
    }

    /// REPORT TARGET PORT GROUPS parameter data (SPC-4 6.37): the length-only header or,
    /// with PARAMETER DATA FORMAT 001b, the extended header; then this gateway's group.
    pub(super) fn report_target_port_groups(&self, cdb: Cdb<'_>) -> CmdResult<Vec<u8>> {
        let extended = match cdb.byte(1) >> 5 {
            0b000 => false,
            0b001 => true,
            _ => return Err(Sense::invalid_cdb_field(1, Some(7))),
        };
        let alloc = cdb.be32(6) as usize;
        let mut group = vec![
            self.state.code(),
            // Supported states: S_SUP, AN_SUP, AO_SUP (what `alua_state` can be set to).
            0x04 | 0x02 | 0x01,
        ];
        group.extend_from_slice(&self.group.to_be_bytes());
        // Reserved, status code 0 (no status), vendor specific, one target port.
        group.extend_from_slice(&[0, 0, 0, 1]);
        group.extend_from_slice(&[0, 0]);
        group.extend_from_slice(&self.group.to_be_bytes());
        let mut d = Vec::with_capacity(8 + group.len());
        let header_len = if extended { 8 } else { 4 };
        d.extend_from_slice(&((group.len() + header_len - 4) as u32).to_be_bytes());
        if extended {
            // FORMAT TYPE 001b; IMPLICIT TRANSITION TIME 0: a reload changes the state at once,
            // with no transitioning state in between.
            d.extend_from_slice(&[0x10, 0, 0, 0]);
        }
        d.extend_from_slice(&group);
        Ok(truncate(d, alloc))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;
    use super::*;

    fn lu_with(state: AluaState) -> Arc<LogicalUnit> {
        let mut p = params(0, 512);
        p.alua = AluaPort { group: 7, state };
        let be = Arc::new(crate::backend::RamBackend::new(1 << 20));
        Arc::new(LogicalUnit::new(p, be))
    }

    fn exec(lu: &LogicalUnit, cdb: &[u8]) -> ScsiOutcome {
        lu.execute(&req(0, cdb, &[]))
    }

    fn rtpg(format: u8, alloc: u32) -> Vec<u8> {
        let mut c = vec![0u8; 12];
        c[0] = op::MAINTENANCE_IN;
        c[1] = format << 5 | SA_REPORT_TARGET_PORT_GROUPS;
        c[6..10].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    #[test]
    fn inquiry_reports_implicit_alua_and_port_designators() {
        let lu = lu_with(AluaState::ActiveOptimized);
        let std = exec(&lu, &[0x12, 0, 0, 0, 96, 0]).data_in.to_vec();
        assert_eq!(std[5] & 0x30, 0x10, "TPGS = implicit");
        let page = exec(&lu, &[0x12, 1, 0x83, 1, 0, 0]).data_in.to_vec();
        let mut at = 4;
        let mut found = Vec::new();
        while at + 4 <= page.len() {
            let (kind, len) = (page[at + 1] & 0x0F, usize::from(page[at + 3]));
            found.push((
                page[at] >> 4,
                page[at + 1] & 0xF0,
                kind,
                page[at + 4..at + 4 + len].to_vec(),
            ));
            at += 4 + len;
        }
        assert_eq!(at, page.len());
        assert!(found.contains(&(5, 0x90, 4, vec![0, 0, 0, 7])), "{found:?}");
        assert!(found.contains(&(5, 0x90, 5, vec![0, 0, 0, 7])), "{found:?}");
    }

    #[test]
    fn rtpg_describes_this_gateways_group() {
        let lu = lu_with(AluaState::ActiveNonOptimized);
        let d = exec(&lu, &rtpg(0, 256)).data_in.to_vec();
        assert_eq!(d, [0, 0, 0, 12, 0x01, 0x07, 0, 7, 0, 0, 0, 1, 0, 0, 0, 7]);
        let d = exec(&lu, &rtpg(1, 256)).data_in.to_vec();
        assert_eq!(&d[..8], &[0, 0, 0, 16, 0x10, 0, 0, 0]);
        assert_eq!(&d[8..], &[0x01, 0x07, 0, 7, 0, 0, 0, 1, 0, 0, 0, 7]);
        // Cut to the allocation length; a reserved format is refused.
        assert_eq!(exec(&lu, &rtpg(0, 4)).data_in.to_vec(), [0, 0, 0, 12]);
        let o = exec(&lu, &rtpg(2, 256));
        assert_eq!(
            (o.sense_key(), o.asc_ascq()),
            (sense::ILLEGAL_REQUEST, (0x24, 0))
        );
    }

    #[test]
    fn standby_allows_inspection_and_refuses_media_access() {
        let lu = lu_with(AluaState::Standby);
        let d = exec(&lu, &rtpg(0, 256)).data_in.to_vec();
        assert_eq!(d[4] & 0x0F, 0x02, "standby");
        for cdb in [
            vec![0x12, 0, 0, 0, 96, 0],
            vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
            vec![0x03, 0, 0, 0, 18, 0],
            vec![0x1A, 0, 0x3F, 0, 255, 0],
        ] {
            assert_eq!(exec(&lu, &cdb).status, status::GOOD, "{cdb:02x?}");
        }
        for cdb in [
            vec![0x00, 0, 0, 0, 0, 0],
            vec![0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            vec![0x2A, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        ] {
            let o = exec(&lu, &cdb);
            assert_eq!(
                (o.status, o.sense_key(), o.asc_ascq()),
                (status::CHECK_CONDITION, sense::NOT_READY, (0x04, 0x0B)),
                "{cdb:02x?}"
            );
        }
    }

    #[test]
    fn a_state_change_is_reported_by_rtpg_and_a_unit_attention_per_nexus() {
        let lu = lu_with(AluaState::ActiveOptimized);
        let nexus = |isid: u8| Nexus::iscsi("iqn.2026-12.test:alua", [0, 0, 0, 0, 0, isid]);
        let run = |n: &Nexus, cdb: &[u8]| {
            let mut c = [0u8; 16];
            c[..cdb.len()].copy_from_slice(cdb);
            lu.execute(&ScsiRequest {
                nexus: n,
                lun: 0,
                cdb: &c,
                data_out: &[],
                expected_transfer_length: 512,
                task_attr: TaskAttr::Simple,
            })
        };
        let (one, two, late) = (nexus(1), nexus(2), nexus(3));
        let tur = [0u8; 6];
        assert_eq!(run(&one, &tur).status, status::GOOD);
        assert_eq!(run(&two, &tur).status, status::GOOD);
        assert!(!lu.set_alua_state(AluaState::ActiveOptimized), "no change");
        assert_eq!(run(&one, &tur).status, status::GOOD);

        assert!(lu.set_alua_state(AluaState::Standby));
        assert_eq!(lu.alua_port().state, AluaState::Standby);
        // RTPG reports the UA first (it is not one of INQUIRY, REPORT LUNS, REQUEST SENSE),
        // then the new state; the standby gating follows.
        let o = run(&one, &rtpg(0, 256));
        assert_eq!(
            (o.status, o.sense_key(), o.asc_ascq()),
            (status::CHECK_CONDITION, sense::UNIT_ATTENTION, (0x2A, 0x06))
        );
        let d = run(&one, &rtpg(0, 256)).data_in.to_vec();
        assert_eq!(d[4] & 0x0F, 0x02, "standby");
        let o = run(&one, &tur);
        assert_eq!(
            (o.sense_key(), o.asc_ascq()),
            (sense::NOT_READY, (0x04, 0x0B))
        );
        // The other nexus: the UA, then standby; one that came later has nothing pending.
        let o = run(&two, &tur);
        assert_eq!(
            (o.sense_key(), o.asc_ascq()),
            (sense::UNIT_ATTENTION, (0x2A, 0x06))
        );
        let o = run(&two, &tur);
        assert_eq!(o.asc_ascq(), (0x04, 0x0B));
        let o = run(&late, &tur);
        assert_eq!(o.asc_ascq(), (0x04, 0x0B));

        // Back to active/optimized: a UA again, then media access is served.
        assert!(lu.set_alua_state(AluaState::ActiveOptimized));
        let read = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        let o = run(&late, &read);
        assert_eq!(o.asc_ascq(), (0x2A, 0x06));
        assert_eq!(run(&late, &read).status, status::GOOD);
    }

    #[test]
    fn active_non_optimized_serves_media_access() {
        let lu = lu_with(AluaState::ActiveNonOptimized);
        let o = exec(&lu, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(o.status, status::GOOD);
        assert_eq!(o.data_in.len(), 512);
    }
}
