//! The CDB of a SCSI Command as the core carries it from the PDU to the backend: inline, so a
//! command costs no heap allocation for it.

use std::fmt;
use std::ops::Deref;

/// Bytes of a CDB held inline: the BHS's CDB field.
const INLINE: usize = 16;

/// A CDB: the 16 bytes of the BHS's CDB field followed by any Extended CDB AHS bytes (RFC 7143
/// §11.3.5, §11.2.2.3). Up to 16 bytes live inline; a longer one (only variable-length CDBs need
/// the AHS, and the SCSI layer refuses those) goes to the heap, so a PDU still decodes to exactly
/// what was sent. Reads as `&[u8]`.
#[derive(Clone, PartialEq, Eq)]
pub struct CdbBytes(Storage);

#[derive(Clone, PartialEq, Eq)]
enum Storage {
    Inline { bytes: [u8; INLINE], len: u8 },
    Extended(Box<[u8]>),
}

impl CdbBytes {
    /// `base` (at most 16 bytes: the BHS's CDB field) followed by `extension` (an Extended CDB
    /// AHS's bytes).
    pub fn new(base: &[u8], extension: &[u8]) -> Self {
        if extension.is_empty() && base.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..base.len()].copy_from_slice(base);
            CdbBytes(Storage::Inline {
                bytes,
                len: base.len() as u8,
            })
        } else {
            CdbBytes(Storage::Extended([base, extension].concat().into()))
        }
    }
}

impl Default for CdbBytes {
    /// An empty CDB.
    fn default() -> Self {
        CdbBytes::new(&[], &[])
    }
}

impl Deref for CdbBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Storage::Inline { bytes, len } => &bytes[..usize::from(*len)],
            Storage::Extended(bytes) => bytes,
        }
    }
}

impl From<&[u8]> for CdbBytes {
    fn from(bytes: &[u8]) -> Self {
        CdbBytes::new(bytes, &[])
    }
}

impl From<Vec<u8>> for CdbBytes {
    fn from(bytes: Vec<u8>) -> Self {
        CdbBytes::from(bytes.as_slice())
    }
}

impl<const N: usize> From<[u8; N]> for CdbBytes {
    fn from(bytes: [u8; N]) -> Self {
        CdbBytes::from(&bytes[..])
    }
}

impl fmt::Debug for CdbBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_was_made_of() {
        let long: Vec<u8> = (0..40).collect();
        for len in [0, 6, 10, 16, 17, 40] {
            let cdb = CdbBytes::from(&long[..len]);
            assert_eq!(&*cdb, &long[..len]);
        }
        let cdb = CdbBytes::new(&long[..16], &long[16..]);
        assert_eq!(&*cdb, &long[..]);
        assert!(matches!(cdb.0, Storage::Extended(_)));
        assert!(matches!(
            CdbBytes::from([0x28; 10]).0,
            Storage::Inline { .. }
        ));
    }
}
