//! Checks shared by the fuzz targets that drive a whole connection (TCP `connection`, `iser`),
//! and the NVMe/TCP host side of `nvme_pdu` and `nvme_queue` ([`nvme`]).

pub mod nvme;

use iser_target::iscsi::pdu::{Header, Stage};
use iser_target::scsi::ScsiOutcome;

/// Serial number arithmetic (RFC 1982, 32 bits): a < b.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

/// The sequencing every target PDU must respect: StatSN goes up by exactly one per response that
/// takes one (RFC 7143 §4.2.2.2), and the CmdSN window (ExpCmdSN, MaxCmdSN) never moves back
/// (§4.2.2.1) nor opens wider than the queue depth.
#[derive(Debug)]
pub struct SequenceCheck {
    queue_depth: u32,
    last_stat_sn: Option<u32>,
    last_window: Option<(u32, u32)>,
}

impl SequenceCheck {
    /// A check for a session whose CmdSN window is at most `queue_depth` wide.
    pub fn new(queue_depth: u32) -> Self {
        SequenceCheck {
            queue_depth,
            last_stat_sn: None,
            last_window: None,
        }
    }

    /// The target's latest ExpCmdSN (0 before the first PDU that carries one).
    pub fn exp_cmd_sn(&self) -> u32 {
        self.last_window.map_or(0, |(exp, _)| exp)
    }

    /// Checks one PDU the target sent; panics on a violation.
    pub fn check(&mut self, header: &Header) {
        let (stat_sn, exp, max, takes) = match header {
            Header::ScsiResponse(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn, true),
            Header::DataIn(h) if h.status_present => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn, true),
            Header::DataIn(h) => {
                self.window(h.exp_cmd_sn, h.max_cmd_sn);
                return;
            }
            // A target-initiated ping (reserved ITT) carries StatSN without taking one.
            Header::NopIn(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn, h.itt != u32::MAX),
            Header::TaskMgmtResponse(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn, true),
            Header::TextResponse(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn, true),
            Header::LogoutResponse(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn, true),
            Header::ReadyToTransfer(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn, false),
            Header::Reject(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn, true),
            Header::LoginResponse(h) => {
                self.last_stat_sn = Some(h.stat_sn);
                if h.transit && h.next_stage == Stage::FullFeature && h.status_class == 0 {
                    self.window(h.exp_cmd_sn, h.max_cmd_sn);
                }
                return;
            }
            other => panic!("the target sent an initiator PDU: {other:?}"),
        };
        if takes {
            if let Some(last) = self.last_stat_sn {
                assert_eq!(stat_sn, last.wrapping_add(1), "StatSN sequence broken");
            }
            self.last_stat_sn = Some(stat_sn);
        } else if let Some(last) = self.last_stat_sn {
            // A PDU that takes no StatSN carries the next one to be taken.
            assert_eq!(stat_sn, last.wrapping_add(1), "StatSN of a non-response");
        }
        self.window(exp, max);
    }

    fn window(&mut self, exp: u32, max: u32) {
        if let Some((last_exp, last_max)) = self.last_window {
            assert!(!sn_lt(exp, last_exp), "ExpCmdSN went back");
            assert!(!sn_lt(max, last_max), "MaxCmdSN went back");
        }
        // MaxCmdSN = ExpCmdSN - 1 is a closed window; it never opens past the queue depth.
        let width = max.wrapping_sub(exp).wrapping_add(1);
        assert!(
            width <= self.queue_depth,
            "window {exp}..={max} wider than the queue depth"
        );
        self.last_window = Some((exp, max));
    }
}

/// A backend's answer to a command, picked by `selector`: GOOD without data, Data-In of about the
/// expected length (sometimes more: overflow), CHECK CONDITION with 18 bytes of sense, or a write
/// that wanted half the data (underflow).
pub fn scsi_outcome(edtl: u32, selector: u8) -> ScsiOutcome {
    match selector % 4 {
        0 => ScsiOutcome::good(),
        1 => ScsiOutcome {
            data_in: iser_target::Buf::copy_from_slice(&vec![
                0xa5;
                (edtl as usize).min(70_000)
                    + selector as usize % 3 * 100
            ])
            .into(),
            ..ScsiOutcome::good()
        },
        2 => ScsiOutcome::check_condition(5, 0x24, 0),
        _ => ScsiOutcome {
            data_out_length: edtl / 2,
            ..ScsiOutcome::good()
        },
    }
}
