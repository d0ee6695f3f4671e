//! What Linux's iSER initiator sends, for the code that plays it against the target: the
//! crate's iSER tests, the datapath bench (`benches/datapath/iser.rs`) and the `iser` fuzz
//! target. The target itself never calls it.

use crate::iscsi::pdu::{Header, LoginRequest, Pdu, Stage};
use crate::iscsi::text;

/// The single operational-stage Login Request of a normal session over ib_iser, without
/// authentication: open-iscsi then goes straight to the operational stage and asks for full
/// feature at once (usr/login.c `iscsi_make_login_pdu`, `fill_op_params_text`). Its keys with
/// iscsid.conf's default burst lengths, and the iSER keys (RFC 7145 §6.3–6.5: RDMAExtensions
/// and the two iSER data segment lengths in place of MaxRecvDataSegmentLength). Keys open-iscsi
/// also offers that our tests do not need (DefaultTime2Wait, DefaultTime2Retain, IFMarker,
/// OFMarker) are left out.
pub fn ib_iser_login(initiator_name: &str, target_name: &str, isid: [u8; 6], cmd_sn: u32) -> Pdu {
    let keys: Vec<text::KeyValue> = [
        ("InitiatorName", initiator_name),
        ("TargetName", target_name),
        ("SessionType", "Normal"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "16776192"),
        ("FirstBurstLength", "262144"),
        ("MaxOutstandingR2T", "1"),
        ("ErrorRecoveryLevel", "0"),
        ("RDMAExtensions", "Yes"),
        ("InitiatorRecvDataSegmentLength", "262144"),
        ("TargetRecvDataSegmentLength", "8192"),
    ]
    .iter()
    .map(|&(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let request = Header::LoginRequest(LoginRequest {
        transit: true,
        continue_flag: false,
        current_stage: Stage::Operational,
        next_stage: Stage::FullFeature,
        version_max: 0,
        version_min: 0,
        isid,
        tsih: 0,
        itt: 0,
        cid: 0,
        cmd_sn,
        exp_stat_sn: 0,
    });
    Pdu::with_data(request, text::encode(&keys))
}
