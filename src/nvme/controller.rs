//! State of one controller: what its admin queue keeps (registers, features, held
//! Asynchronous Event Requests, keep alive) and what all its queues share (counters for the
//! SMART / Health log, the error log).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::command::Status;

/// Counters and the error log every queue of a controller writes to.
#[derive(Debug, Default)]
pub struct ControllerShared {
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    read_commands: AtomicU64,
    write_commands: AtomicU64,
    media_errors: AtomicU64,
    errors: Mutex<ErrorLog>,
}

/// Snapshot of the counters, for the SMART / Health log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub read_commands: u64,
    pub write_commands: u64,
    pub media_errors: u64,
    pub error_entries: u64,
}

/// Entries the error log keeps (Identify Controller ELPE is one less).
pub const ERROR_LOG_ENTRIES: usize = 64;

/// One error information log entry (base 2.0 §5.16.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorEntry {
    /// Unique, increasing error count (1 for the first error).
    pub count: u64,
    pub sqid: u16,
    pub cid: u16,
    pub status: Status,
    pub nsid: u32,
    pub lba: u64,
}

#[derive(Debug, Default)]
struct ErrorLog {
    count: u64,
    entries: VecDeque<ErrorEntry>,
}

impl ControllerShared {
    /// Counts a completed read of `bytes`.
    pub fn count_read(&self, bytes: u64) {
        self.read_commands.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts a completed write of `bytes`.
    pub fn count_write(&self, bytes: u64) {
        self.write_commands.fetch_add(1, Ordering::Relaxed);
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records a failed command in the error log (and a media error when it is one).
    pub fn record_error(&self, sqid: u16, cid: u16, status: Status, nsid: u32, lba: u64) {
        if status.sct == 2 {
            self.media_errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut log = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        log.count += 1;
        let entry = ErrorEntry {
            count: log.count,
            sqid,
            cid,
            status,
            nsid,
            lba,
        };
        if log.entries.len() == ERROR_LOG_ENTRIES {
            log.entries.pop_back();
        }
        log.entries.push_front(entry);
    }

    /// The error log, newest first.
    pub fn errors(&self) -> Vec<ErrorEntry> {
        let log = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        log.entries.iter().copied().collect()
    }

    pub fn counters(&self) -> Counters {
        Counters {
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            read_commands: self.read_commands.load(Ordering::Relaxed),
            write_commands: self.write_commands.load(Ordering::Relaxed),
            media_errors: self.media_errors.load(Ordering::Relaxed),
            error_entries: self.errors.lock().unwrap_or_else(|e| e.into_inner()).count,
        }
    }
}

/// Controller properties (NVMe-oF 1.1 §3.5; base 2.0 §3.1.3).
pub mod property {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1C;
}

/// The version we report: NVMe 1.4 (the namespace identification descriptor list, which
/// Linux asks for from 1.3 on, and the write protected status code exist).
pub const VERSION: u32 = 0x0001_0400;

/// CC fields (base 2.0 §3.1.3.5).
mod cc {
    pub const EN: u32 = 1;
    pub const SHN_MASK: u32 = 3 << 14;
    /// I/O submission / completion queue entry sizes as log2: 64 and 16 bytes.
    pub const IOSQES_SHIFT: u32 = 16;
    pub const IOCQES_SHIFT: u32 = 20;
    pub const CSS_SHIFT: u32 = 4;
    pub const MPS_SHIFT: u32 = 7;
    pub const AMS_SHIFT: u32 = 11;
}

/// CSTS fields.
mod csts {
    pub const RDY: u32 = 1;
    pub const CFS: u32 = 2;
    /// Shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 2 << 2;
}

/// A notice a controller sends through a held Asynchronous Event Request (base 2.0 §5.2:
/// event type 2, Notice), each enabled by its bit of Asynchronous Event Configuration
/// (§5.27.1.7) and announced in Identify Controller OAES.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Namespace Attribute Changed (information 00h): read the Changed Namespace List.
    NamespaceAttribute,
    /// Asymmetric Namespace Access Change (information 03h): read the ANA log. Linux's host
    /// enables it when OAES has it (drivers/nvme/host/core.c nvme_enable_aen,
    /// NVME_AEN_SUPPORTED) and answers it by reading the ANA log again
    /// (nvme_handle_aen_notice, NVME_AER_NOTICE_ANA, which queues ana_work).
    AnaChange,
    /// Reservation Log Page Available (event type 6, I/O command specific; information 00h):
    /// read the Reservation Notification log. No Asynchronous Event Configuration bit: the
    /// Reservation Notification Mask (feature 82h) filters it per namespace instead.
    ReservationLog,
    /// Discovery Log Page Change (information F0h), a discovery controller's only notice: the
    /// subsystems its host may see changed; read the discovery log again. Linux's host
    /// answers it with a uevent on which nvme-cli's autoconnect rules run `nvme connect-all`.
    DiscoveryLogChange,
}

impl Notice {
    /// Every notice, in the order pending ones are delivered.
    pub const ALL: [Notice; 4] = [
        Notice::NamespaceAttribute,
        Notice::AnaChange,
        Notice::ReservationLog,
        Notice::DiscoveryLogChange,
    ];

    /// Its Asynchronous Event Configuration (and OAES) bit; 0 for one that has none.
    pub const fn enable_bit(self) -> u32 {
        match self {
            Notice::NamespaceAttribute => 1 << 8,
            Notice::AnaChange => 1 << 11,
            Notice::ReservationLog => 0,
            Notice::DiscoveryLogChange => 1 << 31,
        }
    }

    /// Whether Asynchronous Event Configuration `config` lets it be sent.
    pub const fn enabled(self, config: u32) -> bool {
        match self {
            Notice::ReservationLog => true,
            _ => config & self.enable_bit() != 0,
        }
    }

    /// The completion's Dword 0: the event type, the information, the log page.
    pub fn result(self) -> u64 {
        use super::logs::lid;
        let (event_type, information, log) = match self {
            Notice::NamespaceAttribute => (2u64, 0x00u64, lid::CHANGED_NAMESPACES),
            Notice::AnaChange => (2, 0x03, lid::ANA),
            Notice::ReservationLog => (6, 0x00, lid::RESERVATION_NOTIFICATION),
            Notice::DiscoveryLogChange => (2, 0xF0, lid::DISCOVERY),
        };
        event_type | information << 8 | u64::from(log) << 16
    }
}

/// Where one notice type stands on a controller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoticeState {
    /// An event happened and waits for an Asynchronous Event Request.
    pub pending: bool,
    /// The notice was reported and its log page not read yet: further notices of the type
    /// wait (base 2.0 §5.2, event masking).
    pub masked: bool,
}

/// The admin queue's view of its controller.
#[derive(Debug, Default)]
pub struct AdminState {
    pub cc: u32,
    pub csts: u32,
    /// Keep alive timeout in milliseconds; 0: none.
    pub kato_ms: u32,
    pub async_event_config: u32,
    /// I/O queues granted by Set Features (Number of Queues); 0 until then.
    pub io_queues: u16,
    /// Asynchronous Event Requests held, by CID.
    pub held_events: Vec<u16>,
    /// Namespaces changed since the Changed Namespace List log was last read.
    pub changed_namespaces: Vec<u32>,
    /// The namespace attribute, ANA change, reservation log and discovery log change notices
    /// (indexed as [`Notice::ALL`]).
    pub notices: [NoticeState; 4],
    /// The namespaces' sizes (NSID, blocks) when this controller last looked: a change is a
    /// namespace attribute change.
    pub namespace_sizes: Vec<(u32, u64)>,
    /// The ANA group and state this controller reports (the ANA log).
    pub ana: super::config::AnaGroup,
    /// Its host's reservation notices and masks.
    pub reservations: super::reservations::ReservationLog,
}

impl AdminState {
    /// The state of `notice`.
    pub fn notice(&mut self, notice: Notice) -> &mut NoticeState {
        &mut self.notices[notice as usize]
    }
}

/// What writing CC did to the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CcChange {
    Nothing,
    Enabled,
    /// Disabled (a controller reset) or shut down: I/O queues go away.
    Disabled,
}

impl AdminState {
    /// Whether CSTS.RDY is set.
    pub fn ready(&self) -> bool {
        self.csts & csts::RDY != 0
    }

    /// Writes CC: enabling checks the queue entry sizes and command set, then sets RDY (or CFS
    /// if they are wrong); clearing EN resets; a shutdown notification completes at once.
    pub fn write_cc(&mut self, value: u32) -> CcChange {
        let was_enabled = self.cc & cc::EN != 0;
        let old_shn = self.cc & cc::SHN_MASK;
        self.cc = value;
        let mut change = CcChange::Nothing;
        if value & cc::EN != 0 && !was_enabled {
            let iosqes = (value >> cc::IOSQES_SHIFT) & 0xF;
            let iocqes = (value >> cc::IOCQES_SHIFT) & 0xF;
            let css = (value >> cc::CSS_SHIFT) & 7;
            let mps = (value >> cc::MPS_SHIFT) & 0xF;
            let ams = (value >> cc::AMS_SHIFT) & 7;
            if iosqes == 6 && iocqes == 4 && css == 0 && mps == 0 && ams == 0 {
                self.csts = csts::RDY;
                change = CcChange::Enabled;
            } else {
                self.csts |= csts::CFS;
            }
        } else if value & cc::EN == 0 && was_enabled {
            self.csts &= !(csts::RDY | csts::CFS);
            self.io_queues = 0;
            change = CcChange::Disabled;
        }
        // A shutdown completes at once and, as a reset does, ends the I/O queues (Linux
        // drivers/nvme/target/core.c nvmet_update_cc clears the controller on SHN too).
        if value & cc::SHN_MASK != 0 && old_shn == 0 {
            if self.ready() {
                change = CcChange::Disabled;
            }
            self.csts = (self.csts & !csts::RDY) | csts::SHST_COMPLETE;
            self.io_queues = 0;
        } else if value & cc::SHN_MASK == 0 {
            self.csts &= !(3 << 2);
        }
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CC as Linux's nvme_enable_ctrl writes it: EN, CSS NVM, MPS 4 KiB, AMS RR, SHN none,
    /// IOSQES 6, IOCQES 4.
    const LINUX_CC: u32 = 1 | 6 << 16 | 4 << 20;

    #[test]
    fn enable_reset_and_shutdown() {
        let mut s = AdminState::default();
        assert_eq!(s.write_cc(LINUX_CC), CcChange::Enabled);
        assert!(s.ready());
        s.io_queues = 4;
        assert_eq!(s.write_cc(LINUX_CC), CcChange::Nothing);
        assert_eq!(s.write_cc(0), CcChange::Disabled);
        assert!(!s.ready());
        assert_eq!(s.io_queues, 0);
        s.write_cc(LINUX_CC);
        assert_eq!(s.write_cc(LINUX_CC | 1 << 14), CcChange::Disabled);
        assert_eq!(s.csts & 0xC, csts::SHST_COMPLETE);
        assert!(!s.ready());
    }

    #[test]
    fn wrong_entry_sizes_are_a_fatal_status() {
        let mut s = AdminState::default();
        assert_eq!(s.write_cc(1 | 7 << 16 | 4 << 20), CcChange::Nothing);
        assert_eq!(s.csts, csts::CFS);
    }

    #[test]
    fn notice_completion_results() {
        // Dword 0 as Linux decodes it: type in bits 2:0, information in 15:8, log in 23:16.
        assert_eq!(Notice::NamespaceAttribute.result(), 0x04_00_02);
        assert_eq!(Notice::AnaChange.result(), 0x0C_03_02);
        // Type 6 (I/O command specific), Reservation Log Page Available, log 80h.
        assert_eq!(Notice::ReservationLog.result(), 0x80_00_06);
        assert_eq!(Notice::DiscoveryLogChange.result(), 0x70_F0_02);
        let mut admin = AdminState::default();
        admin.notice(Notice::AnaChange).pending = true;
        assert_eq!(
            admin.notices,
            [
                NoticeState::default(),
                NoticeState {
                    pending: true,
                    masked: false
                },
                NoticeState::default(),
                NoticeState::default(),
            ]
        );
    }

    #[test]
    fn error_log_keeps_the_newest() {
        let shared = ControllerShared::default();
        for cid in 0..(ERROR_LOG_ENTRIES as u16 + 3) {
            shared.record_error(1, cid, Status::UNRECOVERED_READ_ERROR, 1, 0);
        }
        let errors = shared.errors();
        assert_eq!(errors.len(), ERROR_LOG_ENTRIES);
        assert_eq!(errors[0].count, ERROR_LOG_ENTRIES as u64 + 3);
        assert_eq!(shared.counters().media_errors, ERROR_LOG_ENTRIES as u64 + 3);
    }
}
