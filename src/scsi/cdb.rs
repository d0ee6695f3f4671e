//! Bounds-safe CDB field access and CDB lengths.
//!
//! Every accessor returns 0 for bytes beyond the CDB, so decoding a short or truncated CDB
//! can never panic; the dispatcher separately rejects CDBs shorter than their opcode needs.

/// A received CDB (borrowed), read through panic-free big-endian accessors.
#[derive(Debug, Clone, Copy)]
pub struct Cdb<'a> {
    raw: &'a [u8],
}

impl<'a> Cdb<'a> {
    /// Wraps the raw CDB bytes (may be shorter or longer than the opcode's CDB length).
    pub fn new(raw: &'a [u8]) -> Self {
        Cdb { raw }
    }

    /// Operation code (byte 0), 0 for an empty CDB.
    pub fn opcode(&self) -> u8 {
        self.byte(0)
    }

    /// Service action (byte 1 bits 4..0) for 0x9E/0xA3-style opcodes.
    pub fn service_action(&self) -> u8 {
        self.byte(1) & 0x1F
    }

    /// Number of bytes actually received.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// True for an empty CDB (no operation code at all).
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Byte `i`, or 0 if the CDB is shorter.
    pub fn byte(&self, i: usize) -> u8 {
        self.raw.get(i).copied().unwrap_or(0)
    }

    /// Big-endian unsigned integer of `n` (≤ 8) bytes starting at `i`.
    fn be(&self, i: usize, n: usize) -> u64 {
        (i..i + n).fold(0u64, |acc, j| (acc << 8) | u64::from(self.byte(j)))
    }

    /// Big-endian u16 at byte `i`.
    pub fn be16(&self, i: usize) -> u16 {
        self.be(i, 2) as u16
    }

    /// Big-endian 24-bit value at byte `i`.
    pub fn be24(&self, i: usize) -> u32 {
        self.be(i, 3) as u32
    }

    /// Big-endian u32 at byte `i`.
    pub fn be32(&self, i: usize) -> u32 {
        self.be(i, 4) as u32
    }

    /// Big-endian u64 at byte `i`.
    pub fn be64(&self, i: usize) -> u64 {
        self.be(i, 8)
    }
}

/// The CDB length implied by an opcode's group code (SPC-4 4.2.5.1), or `None` for groups
/// we never accept (variable-length 0x7E/0x7F and the vendor-specific groups 6 and 7).
pub fn cdb_length(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        3 => None,
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors_are_panic_free_and_big_endian() {
        let c = Cdb::new(&[0x88, 0x10, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(c.opcode(), 0x88);
        assert_eq!(c.service_action(), 0x10);
        assert_eq!(c.be16(2), 0x0102);
        assert_eq!(c.be24(2), 0x010203);
        assert_eq!(c.be32(2), 0x01020304);
        assert_eq!(c.be64(2), 0x0102030405060708);
        // Beyond the end reads zeroes.
        assert_eq!(c.be32(9), 0x08000000);
        assert_eq!(c.be64(100), 0);
        assert_eq!(Cdb::new(&[]).opcode(), 0);
    }

    #[test]
    fn group_lengths() {
        assert_eq!(cdb_length(0x12), Some(6));
        assert_eq!(cdb_length(0x28), Some(10));
        assert_eq!(cdb_length(0x5A), Some(10));
        assert_eq!(cdb_length(0x7F), None);
        assert_eq!(cdb_length(0x88), Some(16));
        assert_eq!(cdb_length(0xA0), Some(12));
        assert_eq!(cdb_length(0xC0), None);
    }
}
