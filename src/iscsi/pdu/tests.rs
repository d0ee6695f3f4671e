use super::*;

fn round_trip(header: Header) {
    let bytes = header.encode(0);
    let ahs_len = total_ahs_length(&bytes).unwrap();
    let decoded = Header::decode(&bytes[..BHS_LEN], &bytes[BHS_LEN..BHS_LEN + ahs_len]).unwrap();
    assert_eq!(decoded, header);
}

#[test]
fn every_opcode_round_trips() {
    let lun = encode_lun(3);
    round_trip(Header::NopOut(NopOut {
        immediate: true,
        lun,
        itt: 1,
        ttt: RESERVED_TAG,
        cmd_sn: 5,
        exp_stat_sn: 6,
    }));
    round_trip(Header::ScsiCommand(ScsiCommand {
        immediate: false,
        final_flag: true,
        read: true,
        write: false,
        attribute: TaskAttribute::Ordered,
        lun,
        itt: 0x1000_0001,
        expected_data_length: 4096,
        cmd_sn: 9,
        exp_stat_sn: 10,
        cdb: CdbBytes::from((0..32).collect::<Vec<u8>>()),
        bidi_read_length: Some(512),
    }));
    round_trip(Header::TaskMgmtRequest(TaskMgmtRequest {
        immediate: true,
        function: 1,
        lun,
        itt: 2,
        referenced_task_tag: 3,
        cmd_sn: 4,
        exp_stat_sn: 5,
        ref_cmd_sn: 6,
        exp_data_sn: 7,
    }));
    round_trip(Header::LoginRequest(LoginRequest {
        transit: true,
        continue_flag: false,
        current_stage: Stage::Operational,
        next_stage: Stage::FullFeature,
        version_max: 0,
        version_min: 0,
        isid: [0, 2, 0x3d, 0, 0, 1],
        tsih: 0,
        itt: 0,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
    }));
    round_trip(Header::TextRequest(TextRequest {
        final_flag: true,
        itt: 7,
        ttt: RESERVED_TAG,
        ..Default::default()
    }));
    round_trip(Header::DataOut(DataOut {
        final_flag: true,
        lun,
        itt: 1,
        ttt: 2,
        exp_stat_sn: 3,
        data_sn: 4,
        buffer_offset: 8192,
    }));
    round_trip(Header::LogoutRequest(LogoutRequest {
        immediate: true,
        reason: 0,
        itt: 8,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 2,
    }));
    round_trip(Header::SnackRequest(SnackRequest {
        snack_type: 1,
        itt: 3,
        beg_run: 1,
        run_length: 2,
        ..Default::default()
    }));
    round_trip(Header::NopIn(NopIn {
        itt: RESERVED_TAG,
        ttt: 4,
        stat_sn: 1,
        exp_cmd_sn: 2,
        max_cmd_sn: 3,
        ..Default::default()
    }));
    round_trip(Header::ScsiResponse(ScsiResponse {
        underflow: true,
        status: 2,
        itt: 1,
        residual_count: 10,
        ..Default::default()
    }));
    round_trip(Header::TaskMgmtResponse(TaskMgmtResponse {
        response: 0,
        itt: 1,
        stat_sn: 2,
        exp_cmd_sn: 3,
        max_cmd_sn: 4,
    }));
    round_trip(Header::LoginResponse(LoginResponse {
        transit: true,
        continue_flag: false,
        current_stage: Stage::Security,
        next_stage: Stage::Operational,
        version_max: 0,
        version_active: 0,
        isid: [1, 2, 3, 4, 5, 6],
        tsih: 9,
        itt: 3,
        stat_sn: 1,
        exp_cmd_sn: 2,
        max_cmd_sn: 3,
        status_class: 2,
        status_detail: 1,
    }));
    round_trip(Header::TextResponse(TextResponse {
        final_flag: true,
        itt: 1,
        ttt: RESERVED_TAG,
        ..Default::default()
    }));
    round_trip(Header::DataIn(DataIn {
        final_flag: true,
        status_present: true,
        status: 0,
        underflow: true,
        residual_count: 12,
        itt: 5,
        ttt: RESERVED_TAG,
        buffer_offset: 4096,
        ..Default::default()
    }));
    round_trip(Header::LogoutResponse(LogoutResponse {
        itt: 1,
        time2wait: 2,
        time2retain: 20,
        ..Default::default()
    }));
    round_trip(Header::ReadyToTransfer(ReadyToTransfer {
        itt: 1,
        ttt: 2,
        r2t_sn: 1,
        buffer_offset: 65536,
        desired_length: 65536,
        ..Default::default()
    }));
    round_trip(Header::AsyncMessage(AsyncMessage {
        event: 1,
        parameters: [1, 2, 3],
        ..Default::default()
    }));
    round_trip(Header::Reject(Reject {
        reason: 4,
        stat_sn: 1,
        ..Default::default()
    }));
}

#[test]
fn rejects_unknown_opcode_and_short_headers() {
    let mut bhs = [0u8; BHS_LEN];
    bhs[0] = 0x1c;
    assert_eq!(
        Header::decode(&bhs, &[]),
        Err(DecodeError::UnknownOpcode(0x1c))
    );
    assert_eq!(
        Header::decode(&bhs[..20], &[]),
        Err(DecodeError::ShortHeader(20))
    );
    bhs[0] = 0x80;
    assert!(Header::decode(&bhs, &[]).is_err());
}

#[test]
fn rejects_inconsistent_ahs() {
    let mut bhs = Header::ScsiCommand(ScsiCommand {
        immediate: false,
        final_flag: true,
        read: false,
        write: false,
        attribute: TaskAttribute::Simple,
        lun: [0; 8],
        itt: 1,
        expected_data_length: 0,
        cmd_sn: 1,
        exp_stat_sn: 1,
        cdb: CdbBytes::from([0; 16]),
        bidi_read_length: None,
    })
    .encode(0);
    bhs[4] = 1;
    // Declared one AHS word but none supplied.
    assert!(Header::decode(&bhs, &[]).is_err());
    // An AHS whose own length runs past TotalAHSLength.
    assert!(Header::decode(&bhs, &[0, 9, 1, 0]).is_err());
    // AHS on an opcode that takes none.
    let mut nop = Header::NopOut(NopOut::default()).encode(0);
    nop[4] = 1;
    assert!(Header::decode(&nop, &[0, 1, 1, 0]).is_err());
}

#[test]
fn lun_encoding() {
    for lun in [0u64, 1, 255, 256, 16383] {
        assert_eq!(decode_lun(&encode_lun(lun)), Some(lun));
    }
    assert_eq!(decode_lun(&[0, 0, 1, 0, 0, 0, 0, 0]), None);
    assert_eq!(decode_lun(&[0x80, 0, 0, 0, 0, 0, 0, 0]), None);
}
