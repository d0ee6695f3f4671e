//! The DH-HMAC-CHAP messages that AUTH_Send and AUTH_Receive carry (NVMe base 2.0 §8.13.5;
//! layouts as Linux's include/linux/nvme.h `nvmf_auth_dhchap_*_data`): the host's are validated
//! byte slices with typed accessors, the controller's are built here.

/// AUTH_Send / AUTH_Receive SECP for DH-HMAC-CHAP; SPSP0 and SPSP1 are both 01h.
pub const SECURITY_PROTOCOL: u8 = 0xE9;
pub const SECURITY_PROTOCOL_SPECIFIC: u8 = 0x01;

/// AUTH_TYPE: the common messages (Negotiate, the failures) and DH-HMAC-CHAP's own.
pub mod auth_type {
    pub const COMMON: u8 = 0x00;
    pub const DHCHAP: u8 = 0x01;
}

/// AUTH_ID: which message.
pub mod auth_id {
    pub const NEGOTIATE: u8 = 0x00;
    pub const CHALLENGE: u8 = 0x01;
    pub const REPLY: u8 = 0x02;
    pub const SUCCESS1: u8 = 0x03;
    pub const SUCCESS2: u8 = 0x04;
    pub const FAILURE2: u8 = 0xF0;
    pub const FAILURE1: u8 = 0xF1;
}

/// The reason code explanations of a Failure1 (NVMe base 2.0 Figure "DH-HMAC-CHAP_Failure1";
/// Linux `NVME_AUTH_DHCHAP_FAILURE_*`).
pub mod failure {
    pub const FAILED: u8 = 0x01;
    pub const NOT_USABLE: u8 = 0x02;
    pub const CONCAT_MISMATCH: u8 = 0x03;
    pub const HASH_UNUSABLE: u8 = 0x04;
    pub const DHGROUP_UNUSABLE: u8 = 0x05;
    pub const INCORRECT_PAYLOAD: u8 = 0x06;
    pub const INCORRECT_MESSAGE: u8 = 0x07;
}

/// The reason code of every failure: "authentication failure".
const REASON_FAILED: u8 = 0x01;

/// The DH-HMAC-CHAP protocol identifier in a Negotiate's protocol descriptor.
const DHCHAP_PROTOCOL: u8 = 0x01;

/// A protocol descriptor's identifier list: hash function identifiers from its start, DH group
/// identifiers from byte 30 (NVMe base 2.0; Linux `NVME_AUTH_DHCHAP_MAX_HASH_IDS` and the DH
/// list at `idlist[30]`).
const ID_LIST_LEN: usize = 60;
const DH_IDS_AT: usize = 30;
const DESCRIPTOR_LEN: usize = 4 + ID_LIST_LEN;

/// The first bytes of every message: its type, its identifier and its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub auth_type: u8,
    pub auth_id: u8,
    pub transaction: u16,
}

impl Header {
    pub const LEN: usize = 6;

    pub fn parse(data: &[u8]) -> Option<Header> {
        (data.len() >= Self::LEN).then(|| Header {
            auth_type: data[0],
            auth_id: data[1],
            transaction: u16::from_le_bytes([data[4], data[5]]),
        })
    }

    fn encode(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.auth_type, self.auth_id, 0, 0]);
        out.extend_from_slice(&self.transaction.to_le_bytes());
    }
}

/// A host's Negotiate, validated: its DH-HMAC-CHAP descriptor is whole.
#[derive(Debug, Clone, Copy)]
pub struct Negotiate<'a> {
    data: &'a [u8],
    descriptor: &'a [u8],
}

impl<'a> Negotiate<'a> {
    const DESCRIPTORS_AT: usize = 8;

    /// The Negotiate in `data`, or the failure explanation for it.
    pub fn parse(data: &'a [u8]) -> Result<Self, u8> {
        if data.len() < Self::DESCRIPTORS_AT + DESCRIPTOR_LEN {
            return Err(failure::INCORRECT_PAYLOAD);
        }
        let count = usize::from(data[7]);
        let descriptor = data[Self::DESCRIPTORS_AT..]
            .chunks_exact(DESCRIPTOR_LEN)
            .take(count)
            .find(|d| d[0] == DHCHAP_PROTOCOL)
            .ok_or(failure::INCORRECT_PAYLOAD)?;
        let (hashes, groups) = (usize::from(descriptor[2]), usize::from(descriptor[3]));
        if hashes > DH_IDS_AT || groups > ID_LIST_LEN - DH_IDS_AT {
            return Err(failure::INCORRECT_PAYLOAD);
        }
        Ok(Negotiate { data, descriptor })
    }

    /// SC_C: secure channel concatenation asked for (0: none).
    pub fn secure_channel(&self) -> u8 {
        self.data[6]
    }

    /// The hash function identifiers the host offers, in its order of preference.
    pub fn hashes(&self) -> &'a [u8] {
        &self.descriptor[4..4 + usize::from(self.descriptor[2])]
    }

    /// The DH group identifiers the host offers.
    pub fn dh_groups(&self) -> &'a [u8] {
        let at = 4 + DH_IDS_AT;
        &self.descriptor[at..at + usize::from(self.descriptor[3])]
    }
}

/// A host's Reply, validated: the response, the host's challenge and its DH value are inside.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    data: &'a [u8],
    hash_len: usize,
}

impl<'a> Reply<'a> {
    const VALUES_AT: usize = 16;

    pub fn parse(data: &'a [u8]) -> Result<Self, u8> {
        if data.len() < Self::VALUES_AT {
            return Err(failure::INCORRECT_PAYLOAD);
        }
        let hash_len = usize::from(data[6]);
        let dh_len = usize::from(u16::from_le_bytes([data[10], data[11]]));
        if Self::VALUES_AT + 2 * hash_len + dh_len > data.len() {
            return Err(failure::INCORRECT_PAYLOAD);
        }
        Ok(Reply { data, hash_len })
    }

    /// HL: the length of the response and of the host's challenge.
    pub fn hash_len(&self) -> usize {
        self.hash_len
    }

    /// The host's response to our challenge.
    pub fn response(&self) -> &'a [u8] {
        &self.data[Self::VALUES_AT..Self::VALUES_AT + self.hash_len]
    }

    /// The host's challenge to the controller, when CVALID says it is there.
    pub fn challenge(&self) -> Option<&'a [u8]> {
        let at = Self::VALUES_AT + self.hash_len;
        (self.data[8] & 1 != 0).then(|| &self.data[at..at + self.hash_len])
    }

    /// SEQNUM: the sequence number of the host's challenge (0: no controller authentication).
    pub fn seqnum(&self) -> u32 {
        u32::from_le_bytes(self.data[12..16].try_into().expect("4 bytes"))
    }

    /// DHVLEN: the length of the host's DH value (0 with the NULL DH group).
    pub fn dh_value_len(&self) -> usize {
        usize::from(u16::from_le_bytes([self.data[10], self.data[11]]))
    }

    /// The host's DH public value, after its challenge.
    pub fn dh_value(&self) -> &'a [u8] {
        let at = Self::VALUES_AT + 2 * self.hash_len;
        &self.data[at..at + self.dh_value_len()]
    }
}

/// A host's Failure2: why it rejected the controller.
pub fn failure2_explanation(data: &[u8]) -> u8 {
    data.get(7).copied().unwrap_or(0)
}

/// The controller's Challenge: hash `hash_id`, the challenge, and DH group `dh_group` with our
/// public value in it (empty with the NULL group).
pub fn challenge(
    transaction: u16,
    hash_id: u8,
    dh_group: u8,
    seqnum: u32,
    challenge: &[u8],
    dh_value: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + challenge.len() + dh_value.len());
    Header {
        auth_type: auth_type::DHCHAP,
        auth_id: auth_id::CHALLENGE,
        transaction,
    }
    .encode(&mut out);
    out.extend_from_slice(&[challenge.len() as u8, 0, hash_id, dh_group]);
    out.extend_from_slice(&(dh_value.len() as u16).to_le_bytes());
    out.extend_from_slice(&seqnum.to_le_bytes());
    out.extend_from_slice(challenge);
    out.extend_from_slice(dh_value);
    out
}

/// The controller's Success1: HL always (Linux's host checks it), and the controller's
/// response when the host asked for one.
pub fn success1(transaction: u16, hash_len: usize, response: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + hash_len);
    Header {
        auth_type: auth_type::DHCHAP,
        auth_id: auth_id::SUCCESS1,
        transaction,
    }
    .encode(&mut out);
    out.extend_from_slice(&[hash_len as u8, 0, u8::from(response.is_some())]);
    out.extend_from_slice(&[0; 7]);
    if let Some(response) = response {
        out.extend_from_slice(response);
    }
    out
}

/// The controller's Failure1 with this explanation.
pub fn failure1(transaction: u16, explanation: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    Header {
        auth_type: auth_type::COMMON,
        auth_id: auth_id::FAILURE1,
        transaction,
    }
    .encode(&mut out);
    out.extend_from_slice(&[REASON_FAILED, explanation]);
    out
}
