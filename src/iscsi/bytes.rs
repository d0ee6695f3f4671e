//! Short byte strings the core makes for every command, held inline so that they cost no heap
//! allocation: CDBs and PDU headers.

use std::fmt;
use std::ops::Deref;

/// A byte string of up to `N` bytes inline; a longer one (rare by construction: see the aliases)
/// moves to the heap. Reads as `&[u8]`.
#[derive(Clone)]
pub struct InlineBytes<const N: usize>(Storage<N>);

#[derive(Clone)]
enum Storage<const N: usize> {
    Inline { bytes: [u8; N], len: u8 },
    Heap(Vec<u8>),
}

/// A CDB: the 16 bytes of the BHS's CDB field followed by any Extended CDB AHS bytes (RFC 7143
/// §11.3.5, §11.2.2.3). Only variable-length CDBs need the AHS, and the SCSI layer refuses those,
/// so every CDB it serves is inline; a longer one still decodes to exactly what was sent.
pub type CdbBytes = InlineBytes<16>;

/// A PDU header as framed for the stream: BHS, AHS and header digest. Inline for a BHS and its
/// digest, which is every PDU the target sends and every one it receives except a SCSI Command
/// with an AHS.
pub type HeaderBytes = InlineBytes<{ super::pdu::BHS_LEN + 4 }>;

impl<const N: usize> InlineBytes<N> {
    /// `first` followed by `second`.
    pub fn concat(first: &[u8], second: &[u8]) -> Self {
        let len = first.len() + second.len();
        if len <= N && N <= usize::from(u8::MAX) {
            let mut bytes = [0; N];
            bytes[..first.len()].copy_from_slice(first);
            bytes[first.len()..len].copy_from_slice(second);
            InlineBytes(Storage::Inline {
                bytes,
                len: len as u8,
            })
        } else {
            InlineBytes(Storage::Heap([first, second].concat()))
        }
    }

    /// Appends `more`, moving to the heap when it no longer fits inline.
    pub fn extend_from_slice(&mut self, more: &[u8]) {
        match &mut self.0 {
            Storage::Inline { bytes, len } => {
                let start = usize::from(*len);
                if start + more.len() <= N {
                    bytes[start..start + more.len()].copy_from_slice(more);
                    *len = (start + more.len()) as u8;
                } else {
                    *self = InlineBytes::concat(&bytes[..start], more);
                }
            }
            Storage::Heap(bytes) => bytes.extend_from_slice(more),
        }
    }

    /// Keeps the first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        match &mut self.0 {
            Storage::Inline { len: current, .. } => {
                *current = (*current).min(len.min(N) as u8);
            }
            Storage::Heap(bytes) => bytes.truncate(len),
        }
    }
}

impl<const N: usize> Default for InlineBytes<N> {
    /// No bytes.
    fn default() -> Self {
        InlineBytes::concat(&[], &[])
    }
}

impl<const N: usize> Deref for InlineBytes<N> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Storage::Inline { bytes, len } => &bytes[..usize::from(*len)],
            Storage::Heap(bytes) => bytes,
        }
    }
}

impl<const N: usize> PartialEq for InlineBytes<N> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<const N: usize> Eq for InlineBytes<N> {}

impl<const N: usize> From<&[u8]> for InlineBytes<N> {
    fn from(bytes: &[u8]) -> Self {
        InlineBytes::concat(bytes, &[])
    }
}

impl<const N: usize> From<Vec<u8>> for InlineBytes<N> {
    fn from(bytes: Vec<u8>) -> Self {
        InlineBytes::from(bytes.as_slice())
    }
}

impl<const N: usize, const M: usize> From<[u8; M]> for InlineBytes<N> {
    fn from(bytes: [u8; M]) -> Self {
        InlineBytes::from(&bytes[..])
    }
}

impl<const N: usize> fmt::Debug for InlineBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_was_made_of_inline_or_not() {
        let long: Vec<u8> = (0..40).collect();
        for len in [0, 6, 10, 16, 17, 40] {
            let cdb = CdbBytes::from(&long[..len]);
            assert_eq!(&*cdb, &long[..len]);
            assert_eq!(matches!(cdb.0, Storage::Inline { .. }), len <= 16);
        }
        let cdb = CdbBytes::concat(&long[..16], &long[16..]);
        assert_eq!(&*cdb, &long[..]);
        assert!(matches!(cdb.0, Storage::Heap(_)));
    }

    #[test]
    fn grows_past_its_inline_room_and_truncates() {
        let mut header = HeaderBytes::from([1u8; 48]);
        header.extend_from_slice(&[2; 4]);
        assert!(matches!(header.0, Storage::Inline { len: 52, .. }));
        header.extend_from_slice(&[3; 8]);
        assert!(matches!(header.0, Storage::Heap(_)));
        assert_eq!(header.len(), 60);
        assert_eq!(header[51..53], [2, 3]);
        header.truncate(48);
        assert_eq!(&*header, &[1u8; 48][..]);
        let mut inline = HeaderBytes::from([1u8; 48]);
        inline.truncate(4);
        assert_eq!(&*inline, &[1u8; 4][..]);
    }
}
