//! Helpers shared by the SCSI unit tests.

use super::*;
use crate::backend::RamBackend;
use std::sync::atomic::AtomicUsize;
use std::sync::Condvar;

/// Parameters of a test LU.
pub fn params(lun: u64, block_size: u32) -> LunParams {
    LunParams {
        lun,
        block_size,
        read_only: false,
        write_cache: true,
        serial: format!("SER{lun:05}"),
        naa_id: 0x0012_3456_0000_0000 | lun,
        vendor: "ISERTGT".into(),
        product: "RAMDISK".into(),
        revision: "0001".into(),
        alua: AluaPort::default(),
    }
}

/// A LU over a RAM backend of `blocks` blocks.
pub fn ram_lu(blocks: u64, block_size: u32) -> Arc<LogicalUnit> {
    let be = Arc::new(RamBackend::new(blocks * u64::from(block_size)));
    Arc::new(LogicalUnit::new(params(0, block_size), be))
}

/// The nexus unit tests send from.
pub static TEST_NEXUS: std::sync::LazyLock<Nexus> = std::sync::LazyLock::new(|| {
    Nexus::iscsi("iqn.2026-11.test:initiator", [0x00, 0x02, 0x3d, 0, 0, 1])
});

/// A request to LUN `lun` with Data-Out.
pub fn req<'a>(lun: u64, cdb: &'a [u8], data_out: &'a [u8]) -> ScsiRequest<'a> {
    ScsiRequest {
        nexus: &TEST_NEXUS,
        lun,
        cdb,
        data_out,
        expected_transfer_length: data_out.len() as u32,
        task_attr: TaskAttr::Simple,
    }
}

/// Runs `cdb` (padded to 16 bytes like the BHS) with `data_out` on `lu`.
pub fn exec(lu: &LogicalUnit, cdb: &[u8], data_out: &[u8]) -> ScsiOutcome {
    let mut c = [0u8; 16];
    c[..cdb.len()].copy_from_slice(cdb);
    lu.execute(&req(lu.params().lun, &c, data_out))
}

/// Asserts CHECK CONDITION with the given key and ASC/ASCQ.
#[track_caller]
pub fn assert_check(o: &ScsiOutcome, key: u8, asc_ascq: (u8, u8)) {
    assert_eq!(o.status, status::CHECK_CONDITION, "outcome {o:?}");
    assert_eq!(o.sense_key(), key, "sense {:02x?}", o.sense);
    assert_eq!(o.asc_ascq(), asc_ascq, "sense {:02x?}", o.sense);
}

/// Asserts GOOD status.
#[track_caller]
pub fn assert_good(o: &ScsiOutcome) {
    assert_eq!(o.status, status::GOOD, "sense {:02x?}", o.sense);
    assert!(o.sense.is_empty());
}

/// READ(16) CDB.
pub fn read16(lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x88;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// WRITE(16) CDB with optional FUA.
pub fn write16(lba: u64, blocks: u32, fua: bool) -> Vec<u8> {
    let mut c = read16(lba, blocks);
    c[0] = 0x8A;
    if fua {
        c[1] = 0x08;
    }
    c
}

/// Asserts an outcome is well formed: no sense data without CHECK CONDITION, 18 bytes with it,
/// and only the statuses the SCSI layer answers with.
#[track_caller]
pub fn assert_well_formed(o: &ScsiOutcome) {
    match o.status {
        status::GOOD | status::RESERVATION_CONFLICT => assert!(o.sense.is_empty()),
        status::CHECK_CONDITION => assert_eq!(o.sense.len(), 18),
        s => panic!("unexpected status {s:#x}"),
    }
}

/// A RAM backend that tests watch: it counts flushes (FUA, write-through), and when made
/// [`ProbeBackend::gated`] holds every read until [`ProbeBackend::open`], counting those
/// waiting.
pub struct ProbeBackend {
    inner: RamBackend,
    /// Flushes so far.
    pub flushes: AtomicUsize,
    /// Reads waiting at the gate.
    pub waiting: AtomicUsize,
    /// Whether reads pass, and its signal; `None`: they always do.
    gate: Option<(Mutex<bool>, Condvar)>,
}

impl ProbeBackend {
    /// `size` bytes whose reads always pass.
    pub fn new(size: u64) -> ProbeBackend {
        ProbeBackend {
            inner: RamBackend::new(size),
            flushes: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            gate: None,
        }
    }

    /// `size` bytes whose reads wait until [`ProbeBackend::open`].
    pub fn gated(size: u64) -> ProbeBackend {
        ProbeBackend {
            gate: Some((Mutex::new(false), Condvar::new())),
            ..ProbeBackend::new(size)
        }
    }

    /// Lets every read through from now on.
    pub fn open(&self) {
        if let Some((open, opened)) = &self.gate {
            *open.lock().unwrap() = true;
            opened.notify_all();
        }
    }
}

impl Backend for ProbeBackend {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BackendError> {
        if let Some((open, opened)) = &self.gate {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let mut is_open = open.lock().unwrap();
            while !*is_open {
                is_open = opened.wait(is_open).unwrap();
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, data: &[u8], offset: u64) -> Result<(), BackendError> {
        self.inner.write_at(data, offset)
    }
    fn flush(&self) -> Result<(), BackendError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.inner.discard(offset, len)
    }
    fn supports_discard(&self) -> bool {
        true
    }
    fn kind(&self) -> &'static str {
        "probe"
    }
}

/// LIST ID USAGE of an EXTENDED COPY parameter list: the copy status is held for RECEIVE
/// COPY RESULTS.
pub const LIST_ID_HOLD: u8 = 0b00;
/// LIST ID USAGE: the list identifier is unique, nothing is held.
pub const LIST_ID_NO_HOLD: u8 = 0b10;

/// An identification CSCD descriptor (E4h) naming the LU with NAA `designator` (8 bytes,
/// as VPD page 83h gives it) and `block_size`-byte blocks.
pub fn cscd_descriptor(designator: &[u8], block_size: u32) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[0] = 0xE4;
    d[4] = 0x01; // binary
    d[5] = 0x03; // LU association, NAA
    d[7] = designator.len() as u8;
    d[8..8 + designator.len()].copy_from_slice(designator);
    d[29..32].copy_from_slice(&block_size.to_be_bytes()[1..]);
    d
}

/// A block-to-block segment descriptor (02h): `blocks` blocks from `source_lba` of CSCD
/// descriptor `source` to `dest_lba` of CSCD descriptor `destination`.
pub fn segment_descriptor(
    source: u16,
    destination: u16,
    blocks: u16,
    source_lba: u64,
    dest_lba: u64,
) -> Vec<u8> {
    let mut d = vec![0u8; 28];
    d[0] = 0x02;
    d[2..4].copy_from_slice(&24u16.to_be_bytes());
    d[4..6].copy_from_slice(&source.to_be_bytes());
    d[6..8].copy_from_slice(&destination.to_be_bytes());
    d[10..12].copy_from_slice(&blocks.to_be_bytes());
    d[12..20].copy_from_slice(&source_lba.to_be_bytes());
    d[20..28].copy_from_slice(&dest_lba.to_be_bytes());
    d
}

/// An EXTENDED COPY (LID1) parameter list: the header (LIST ID USAGE `usage`), then the
/// descriptors.
pub fn copy_parameter_list(
    list_id: u8,
    usage: u8,
    cscds: &[Vec<u8>],
    segments: &[Vec<u8>],
) -> Vec<u8> {
    let cscd_bytes: usize = cscds.iter().map(Vec::len).sum();
    let segment_bytes: usize = segments.iter().map(Vec::len).sum();
    let mut d = vec![0u8; 16];
    d[0] = list_id;
    d[1] = usage << 3;
    d[2..4].copy_from_slice(&(cscd_bytes as u16).to_be_bytes());
    d[8..12].copy_from_slice(&(segment_bytes as u32).to_be_bytes());
    d.extend(cscds.concat());
    d.extend(segments.concat());
    d
}

/// EXTENDED COPY (LID1) CDB with a parameter list of `len` bytes.
pub fn extended_copy_cdb(len: usize) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

/// A tiny deterministic PRNG (xorshift64*) for fuzz-style tests.
pub struct Rng(pub u64);

impl Rng {
    /// Next pseudo-random value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
