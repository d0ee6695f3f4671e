//! Placeholder replaced by the SCSI layer at merge: only the types the iSCSI core consumes.

/// SAM task attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAttr {
    Untagged,
    Simple,
    Ordered,
    HeadOfQueue,
    Aca,
}

/// Result of one SCSI command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScsiOutcome {
    pub status: u8,
    pub sense: Vec<u8>,
    pub data_in: Vec<u8>,
    pub data_out_length: u32,
}

impl ScsiOutcome {
    /// GOOD, no data.
    pub fn good() -> Self {
        Self::default()
    }
    /// CHECK CONDITION with fixed-format sense.
    pub fn check_condition(key: u8, asc: u8, ascq: u8) -> Self {
        let mut sense = vec![0u8; 18];
        sense[0] = 0x70;
        sense[2] = key;
        sense[7] = 10;
        sense[12] = asc;
        sense[13] = ascq;
        ScsiOutcome {
            status: 2,
            sense,
            data_in: Vec::new(),
            data_out_length: 0,
        }
    }
}
