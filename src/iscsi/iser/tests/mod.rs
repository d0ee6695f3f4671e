//! Tests of the iSER connection, driven by a scripted initiator and a stand-in for the fabric:
//! the helpers, Send framing and login here; data movement in [`data`], the order of Sends behind
//! RDMA Reads in [`ordering`].

mod data;
mod ordering;

use super::*;
use crate::iscsi::pdu::{
    DataOut, LoginResponse, LogoutRequest, NopIn, NopOut, ScsiCommand, TaskAttribute,
    TaskMgmtRequest, TaskMgmtResponse,
};
use crate::iscsi::text::{self, TargetPolicy};
use crate::iscsi::TargetDescriptor;
use std::time::Duration;

const TARGET: &str = "iqn.2026-11.io.iser-target:t";

fn config() -> Arc<CoreConfig> {
    Arc::new(CoreConfig {
        targets: vec![TargetDescriptor {
            name: TARGET.into(),
            allowed_initiators: vec![],
            luns: vec![0],
            auth: None,
            initiator_auth: vec![],
        }],
        policy: TargetPolicy {
            max_recv_data_segment_length: RECV_DATA_CAPACITY as u32,
            max_burst_length: 512 * 1024,
            first_burst_length: 65536,
            max_outstanding_r2t: 1,
            digests_allowed: false,
            require_initial_r2t: true,
            iser: true,
        },
        queue_depth: 16,
        nop_interval: Some(Duration::from_secs(15)),
        ..CoreConfig::default()
    })
}

fn send_bytes(header: IserHeader, pdu: &Pdu) -> Vec<u8> {
    let mut out = header.encode().to_vec();
    out.extend_from_slice(&pdu.encode_header());
    out.extend_from_slice(&pdu.data);
    out
}

/// The Send of a 12 KiB WRITE with ITT `itt` whose first 4 KiB come as immediate data; the
/// rest is to be fetched from WriteVA 0x9000_1000 (STag 0x77). ReadVA is advertised too.
fn write_with_immediate_data(itt: u32) -> Vec<u8> {
    let mut cmd = command(itt, 100, false, true, 3 * 4096, 0x2a);
    cmd.final_flag = true;
    send_bytes(
        both_stags(),
        &Pdu::with_data(Header::ScsiCommand(cmd), vec![1u8; 4096]),
    )
}

/// An iSER header advertising a write STag (0x77 at 0x9000_1000) and a read STag (0x78 at
/// 0x7000_0000).
fn both_stags() -> IserHeader {
    IserHeader {
        flags: ISER_ISCSI_CTRL | ISER_WSV | ISER_RSV,
        write_stag: 0x77,
        write_va: 0x9000_1000,
        read_stag: 0x78,
        read_va: 0x7000_0000,
    }
}

fn ctrl(pdu: &Pdu) -> Vec<u8> {
    send_bytes(IserHeader::CONTROL, pdu)
}

/// Decodes the PDU inside a Send we emitted.
fn sent_pdu(bytes: &SendBytes) -> Pdu {
    let bytes = &bytes.to_vec()[..];
    assert_eq!(bytes.len(), bytes.len().next_multiple_of(4));
    assert_eq!(IserHeader::decode(bytes), Some(IserHeader::CONTROL));
    let rest = &bytes[ISER_HEADER_LEN..];
    let dl = pdu::data_segment_length(rest).unwrap() as usize;
    assert!(
        rest.len() - BHS_LEN - dl < 4,
        "at most 3 pad bytes (Linux iscsi_iser.c iscsi_iser_recv: \"wrong datalen\")"
    );
    Pdu::decode(&rest[..BHS_LEN], &[], rest[BHS_LEN..BHS_LEN + dl].to_vec()).unwrap()
}

/// The driver's part of a finished RDMA Read: place its bytes, then report it.
fn complete_read(conn: &mut IserConnection, token: u64, data: Vec<u8>, now: Instant) {
    if let Some(destination) = conn.rdma_read_destination(token) {
        destination.copy_from_slice(&data);
    }
    conn.handle_rdma_read_complete(token, now);
}

fn drain(conn: &mut IserConnection) -> Vec<FabricOp> {
    std::iter::from_fn(|| conn.poll_op()).collect()
}

/// Logs in a normal iSER session the way ib_iser does (one operational request) and returns
/// the final Login Response and its keys.
fn login(conn: &mut IserConnection, now: Instant) -> (LoginResponse, Vec<text::KeyValue>) {
    let request =
        initiator::ib_iser_login("iqn.2026-11.test:host", TARGET, [0, 2, 0x3d, 0, 0, 1], 100);
    conn.handle_receive(&ctrl(&request), now);
    let ops = drain(conn);
    assert!(
        matches!(ops.as_slice(), [FabricOp::BindSession(_)]),
        "{ops:?}"
    );
    conn.handle_session_bound(Ok(5));
    let ops = drain(conn);
    // The full-feature buffers are posted before the final Login Response goes out.
    let [FabricOp::EnterFullFeature, FabricOp::Send { bytes, .. }] = ops.as_slice() else {
        panic!("{ops:?}")
    };
    let pdu = sent_pdu(bytes);
    let Header::LoginResponse(resp) = pdu.header else {
        panic!()
    };
    (resp, text::parse(&pdu.data).unwrap())
}

/// A connection logged in as ib_iser does, with Send-with-Invalidate agreed or not.
fn logged_in(send_with_invalidate: bool) -> (IserConnection, Instant) {
    let now = Instant::now();
    let mut conn = IserConnection::new(config(), None, send_with_invalidate, now);
    login(&mut conn, now);
    (conn, now)
}

fn command(itt: u32, cmd_sn: u32, read: bool, write: bool, edtl: u32, cdb0: u8) -> ScsiCommand {
    let mut cdb = vec![0u8; 16];
    cdb[0] = cdb0;
    ScsiCommand {
        immediate: false,
        final_flag: true,
        read,
        write,
        attribute: TaskAttribute::Simple,
        lun: [0; 8],
        itt,
        expected_data_length: edtl,
        cmd_sn,
        exp_stat_sn: 8,
        cdb: cdb.into(),
        bidi_read_length: None,
    }
}

#[test]
fn a_send_is_its_headers_and_data_padded_to_four_bytes() {
    for data_len in [0usize, 1, 3, 4, 18] {
        let pdu = Pdu::with_data(Header::NopIn(NopIn::default()), vec![9; data_len]);
        let header = pdu.encode_header();
        let send = SendBytes::new(pdu);
        let bytes = send.to_vec();
        assert_eq!(send.len(), bytes.len());
        assert_eq!(
            bytes.len(),
            (ISER_HEADER_LEN + BHS_LEN + data_len).next_multiple_of(4)
        );
        assert_eq!(&bytes[..ISER_HEADER_LEN], &IserHeader::CONTROL.encode()[..]);
        assert_eq!(&bytes[ISER_HEADER_LEN..][..BHS_LEN], &header[..]);
        let data = &bytes[ISER_HEADER_LEN + BHS_LEN..];
        assert!(data[..data_len].iter().all(|&b| b == 9));
        assert!(data[data_len..].iter().all(|&b| b == 0));
    }
}

#[test]
fn login_answers_only_keys_open_iscsi_knows() {
    let now = Instant::now();
    let mut conn = IserConnection::new(config(), None, false, now);
    let (resp, keys) = login(&mut conn, now);
    assert!(resp.transit && resp.next_stage == Stage::FullFeature);
    assert_eq!(resp.tsih, 5);
    assert_eq!(resp.exp_cmd_sn, 100);
    assert_eq!(
        resp.max_cmd_sn, 115,
        "window of queue_depth 16 (RFC 7143 §4.2.2.1)"
    );
    let get = |k: &str| {
        keys.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("RDMAExtensions"), Some("Yes"));
    assert_eq!(
        get("InitialR2T"),
        Some("Yes"),
        "forced for iSER (libiscsi lib/iser.c sends Data-Out without its data)"
    );
    assert_eq!(get("TargetRecvDataSegmentLength"), Some("8192"));
    assert_eq!(get("TargetPortalGroupTag"), Some("1"));
    assert_eq!(
        get("MaxRecvDataSegmentLength"),
        None,
        "never over iSER (libiscsi lib/login.c would adopt it as its send limit)"
    );
    // Every key answered is one open-iscsi's usr/login.c get_op_params_text_keys recognises.
    let known = [
        "TargetAlias",
        "TargetAddress",
        "TargetPortalGroupTag",
        "InitialR2T",
        "ImmediateData",
        "MaxRecvDataSegmentLength",
        "FirstBurstLength",
        "MaxBurstLength",
        "HeaderDigest",
        "DataDigest",
        "DefaultTime2Wait",
        "DefaultTime2Retain",
        "OFMarker",
        "OFMarkInt",
        "IFMarker",
        "IFMarkInt",
        "DataPDUInOrder",
        "DataSequenceInOrder",
        "MaxOutstandingR2T",
        "MaxConnections",
        "ErrorRecoveryLevel",
        "RDMAExtensions",
        "InitiatorRecvDataSegmentLength",
        "TargetRecvDataSegmentLength",
    ];
    for (key, _) in &keys {
        assert!(
            known.contains(&key.as_str()),
            "open-iscsi would fail on {key}"
        );
    }
}

/// An immediate Logout Request closing the session (reason 0), with CmdSN 101: the one after
/// the tests' WRITE at CmdSN 100.
fn close_session_request(itt: u32) -> Header {
    Header::LogoutRequest(LogoutRequest {
        immediate: true,
        reason: 0,
        itt,
        cid: 0,
        cmd_sn: 101,
        exp_stat_sn: 8,
    })
}

/// Sends a 4 KiB WRITE whose data the target must RDMA-Read; returns the read's token.
fn write_needing_read(conn: &mut IserConnection, itt: u32, cmd_sn: u32, now: Instant) -> u64 {
    let iser = IserHeader {
        flags: ISER_ISCSI_CTRL | ISER_WSV,
        write_stag: itt,
        write_va: 0x1000,
        ..IserHeader::default()
    };
    let pdu = Pdu::new(Header::ScsiCommand(command(
        itt, cmd_sn, false, true, 4096, 0x2a,
    )));
    conn.handle_receive(&send_bytes(iser, &pdu), now);
    let ops = drain(conn);
    let [FabricOp::RdmaRead { token, .. }] = ops.as_slice() else {
        panic!("{ops:?}")
    };
    *token
}

fn abort_task(itt: u32, rtt: u32, cmd_sn: u32) -> Vec<u8> {
    ctrl(&Pdu::new(Header::TaskMgmtRequest(TaskMgmtRequest {
        immediate: true,
        function: 1,
        lun: [0; 8],
        itt,
        referenced_task_tag: rtt,
        cmd_sn,
        exp_stat_sn: 8,
        ref_cmd_sn: cmd_sn,
        exp_data_sn: 0,
    })))
}

fn sent_headers(ops: &[FabricOp]) -> Vec<Header> {
    ops.iter()
        .filter_map(|op| match op {
            FabricOp::Send { bytes, .. } => Some(sent_pdu(bytes).header),
            _ => None,
        })
        .collect()
}

/// A failed login sets up nothing for full feature phase.
#[test]
fn failed_login_posts_no_full_feature_buffers() {
    let now = Instant::now();
    let mut conn = IserConnection::new(config(), None, false, now);
    // ib_iser's login, to a target the server does not have.
    let request = initiator::ib_iser_login(
        "iqn.2026-11.test:host",
        "iqn.2026-11.test:no-such-target",
        [0, 2, 0x3d, 0, 0, 1],
        1,
    );
    conn.handle_receive(&ctrl(&request), now);
    let ops = drain(&mut conn);
    assert!(
        !ops.iter()
            .any(|op| matches!(op, FabricOp::EnterFullFeature)),
        "{ops:?}"
    );
    let headers = sent_headers(&ops);
    assert!(
        matches!(
            headers.as_slice(),
            [Header::LoginResponse(LoginResponse {
                status_class: 2,
                ..
            })]
        ),
        "{headers:?}"
    );
}

#[test]
fn nop_in_carries_no_data() {
    let (mut conn, now) = logged_in(false);
    let ping = Header::NopOut(NopOut {
        immediate: true,
        lun: [0; 8],
        itt: 9,
        ttt: u32::MAX,
        cmd_sn: 100,
        exp_stat_sn: 8,
    });
    conn.handle_receive(&ctrl(&Pdu::with_data(ping, vec![1; 8])), now);
    let ops = drain(&mut conn);
    let [FabricOp::Send { bytes, .. }] = ops.as_slice() else {
        panic!("{ops:?}")
    };
    let pdu = sent_pdu(bytes);
    assert!(matches!(
        pdu.header,
        Header::NopIn(NopIn {
            itt: 9,
            ttt: u32::MAX,
            ..
        })
    ));
    assert!(
        pdu.data.is_empty(),
        "Linux libiscsi.c __iscsi_complete_pdu: NOP-In data is a protocol error"
    );
}

#[test]
fn bad_sends_close_the_connection() {
    let now = Instant::now();
    let short_login = [0x10u8; 40];
    let mut hello = [0u8; 76];
    hello[0] = 0x20;
    let mut oversized = IserHeader::CONTROL.encode().to_vec();
    let mut bhs = Header::NopOut(NopOut::default()).encode(0);
    bhs[5..8].copy_from_slice(&[0, 0x40, 0]); // 16 KiB data segment
    oversized.extend_from_slice(&bhs);
    for message in [&short_login[..], &hello[..], &oversized[..], &[][..]] {
        let mut conn = IserConnection::new(config(), None, false, now);
        conn.handle_receive(message, now);
        let ops = drain(&mut conn);
        assert!(
            matches!(
                ops.as_slice(),
                [FabricOp::Close(CloseReason::ProtocolError(_))]
            ),
            "{ops:?}"
        );
        assert!(conn.is_closed());
    }
}

#[test]
fn header_round_trip_is_big_endian() {
    let h = IserHeader {
        flags: 0x18,
        write_stag: 0x0102_0304,
        write_va: 0x1112_1314_1516_1718,
        read_stag: 0x2122_2324,
        read_va: 0x3132_3334_3536_3738,
    };
    let bytes = h.encode();
    assert_eq!(&bytes[4..8], &[1, 2, 3, 4]);
    assert_eq!(bytes[8], 0x11);
    assert_eq!(IserHeader::decode(&bytes), Some(h));
    // ib_iser (0x80): we agree to Send-with-Invalidate; libiscsi (0xC0): we decline.
    // The passive side sees padded private data (Linux drivers/infiniband/core/cma.c
    // `cma_set_req_event_data`: the REQ's 92 bytes minus rdma_cm's header): only byte 0 counts.
    let mut padded = [0u8; 56];
    padded[0] = 0x80;
    assert_eq!(accept_private_data(&padded), [0x80, 0, 0, 0]);
    assert_eq!(accept_private_data(&[0xc0, 0, 0, 0]), [0xc0, 0, 0, 0]);
    assert_eq!(accept_private_data(&[]), [0xc0, 0, 0, 0]);
}
