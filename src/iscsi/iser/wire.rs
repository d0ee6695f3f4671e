//! The iSER wire format (RFC 7145 §9.2; Linux include/scsi/iser.h): the 28-byte header in front
//! of every PDU, the CM private data of the connection exchange, and the bytes of the Sends we
//! post.

use crate::iscsi::pdu::{self, Pdu, BHS_LEN};

/// Length of the iSER control-type header in front of every PDU.
pub const ISER_HEADER_LEN: usize = 28;

/// Data bytes one of our receive buffers holds beyond the headers: the TargetRecvDataSegmentLength
/// we agree to: the RFC 7145 §6.4 default and libiscsi's offer (lib/init.c); the initiators'
/// login buffers hold as much (Linux iscsi_iser.h ISER_RX_LOGIN_SIZE = 76 + 8192 bytes).
pub const RECV_DATA_CAPACITY: usize = 8192;

/// Bytes a receive buffer needs: iSER header, BHS, room for an extended-CDB AHS, data.
pub const RECV_BUFFER_LEN: usize = ISER_HEADER_LEN + BHS_LEN + 64 + RECV_DATA_CAPACITY;

/// iSER opcode (high nibble of byte 0): an iSCSI control-type PDU follows.
pub(super) const ISER_ISCSI_CTRL: u8 = 0x10;

/// iSER opcode of a Hello message, which no initiator we serve sends (optional by RFC 7145 §6.10;
/// ib_isert.c `isert_recv_done` only logs one).
pub(super) const ISER_HELLO: u8 = 0x20;

/// Write STag valid.
pub(super) const ISER_WSV: u8 = 0x08;

/// Read STag valid.
pub(super) const ISER_RSV: u8 = 0x04;

/// The 28-byte iSER header (RFC 7145 §9.2; Linux include/scsi/iser.h `struct iser_ctrl`); all
/// fields big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IserHeader {
    pub flags: u8,
    pub write_stag: u32,
    pub write_va: u64,
    pub read_stag: u32,
    pub read_va: u64,
}

impl IserHeader {
    /// The header of every target-to-initiator Send: control type, no STags.
    pub const CONTROL: IserHeader = IserHeader {
        flags: ISER_ISCSI_CTRL,
        write_stag: 0,
        write_va: 0,
        read_stag: 0,
        read_va: 0,
    };

    /// Parses the first 28 bytes of a received Send.
    pub fn decode(bytes: &[u8]) -> Option<IserHeader> {
        let b = bytes.get(..ISER_HEADER_LEN)?;
        let u32_at = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| (u64::from(u32_at(at)) << 32) | u64::from(u32_at(at + 4));
        Some(IserHeader {
            flags: b[0],
            write_stag: u32_at(4),
            write_va: u64_at(8),
            read_stag: u32_at(16),
            read_va: u64_at(20),
        })
    }

    /// Serialises the header.
    pub fn encode(&self) -> [u8; ISER_HEADER_LEN] {
        let mut b = [0u8; ISER_HEADER_LEN];
        b[0] = self.flags;
        b[4..8].copy_from_slice(&self.write_stag.to_be_bytes());
        b[8..16].copy_from_slice(&self.write_va.to_be_bytes());
        b[16..20].copy_from_slice(&self.read_stag.to_be_bytes());
        b[20..28].copy_from_slice(&self.read_va.to_be_bytes());
        b
    }
}

/// CM private-data flag: zero-based virtual addressing not supported (Linux include/scsi/iser.h
/// ISER_ZBVA_NOT_SUP).
const CM_NO_ZBVA: u8 = 0x80;

/// CM private-data flag: Send-with-Invalidate not supported.
const CM_NO_SEND_WITH_INVALIDATE: u8 = 0x40;

/// Whether the initiator accepts Send-with-Invalidate: its connect request leaves 0x40 clear
/// (ib_iser does by default; libiscsi always sets it). The private data is parsed from its start,
/// whatever its padded length.
pub fn initiator_allows_send_with_invalidate(request_private_data: &[u8]) -> bool {
    request_private_data
        .first()
        .is_some_and(|flags| flags & CM_NO_SEND_WITH_INVALIDATE == 0)
}

/// The 4 bytes of CM private data we answer a connect request with (as LIO's ib_isert.c
/// `isert_rdma_accept` does): no zero-based addressing, and Send-with-Invalidate exactly when the
/// initiator allows it.
pub fn accept_private_data(request_private_data: &[u8]) -> [u8; 4] {
    let mut flags = CM_NO_ZBVA;
    if !initiator_allows_send_with_invalidate(request_private_data) {
        flags |= CM_NO_SEND_WITH_INVALIDATE;
    }
    [flags, 0, 0, 0]
}

/// Zero bytes to pad a data segment with.
const PAD: [u8; 3] = [0; 3];

/// The payload of one Send of ours: the iSER header, the PDU's header (BHS, inline) and its data
/// segment, padded to 4 bytes, kept as parts so that encoding a PDU allocates nothing: the data
/// segment is the PDU's own `Vec`, moved, which is empty (no allocation) for a SCSI Response
/// without sense data, a NOP-In, a TMF Response... The transport copies the parts, in order,
/// into registered memory ([`SendBytes::parts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendBytes {
    header: pdu::HeaderBytes,
    data: Vec<u8>,
}

impl SendBytes {
    /// Encodes a PDU as the payload of one Send.
    pub fn new(pdu: Pdu) -> Self {
        SendBytes {
            header: pdu.header.encode_bytes(pdu.data.len()),
            data: pdu.data,
        }
    }

    /// Bytes of the whole Send.
    pub fn len(&self) -> usize {
        self.parts().iter().map(|part| part.len()).sum()
    }

    /// Always false: a Send carries at least its headers.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The Send's bytes in order: iSER header, BHS (and any AHS), data segment, pad bytes.
    pub fn parts(&self) -> [&[u8]; 4] {
        [
            &CONTROL_HEADER,
            &self.header,
            &self.data,
            &PAD[..pdu::padding(self.data.len())],
        ]
    }

    /// The Send's bytes in one piece (for tests and the fuzz target).
    pub fn to_vec(&self) -> Vec<u8> {
        self.parts().concat()
    }
}

/// [`IserHeader::CONTROL`], encoded.
const CONTROL_HEADER: [u8; ISER_HEADER_LEN] = {
    let mut b = [0u8; ISER_HEADER_LEN];
    b[0] = ISER_ISCSI_CTRL;
    b
};
