//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS.

use super::*;

/// One identification CSCD descriptor naming the LU with NAA identifier `naa_id`.
fn cscd(naa_id: u64, block_size: u32) -> Vec<u8> {
    let p = LunParams {
        naa_id,
        ..params(0, block_size)
    };
    cscd_descriptor(&p.naa_designator(), block_size)
}

fn xcopy(lu: &LogicalUnit, param: &[u8]) -> ScsiOutcome {
    exec(lu, &extended_copy_cdb(param.len()), param)
}

fn receive_copy_results(lu: &LogicalUnit, sa: u8, list_id: u8) -> ScsiOutcome {
    let mut c = vec![0u8; 16];
    c[0] = 0x84;
    c[1] = sa;
    c[2] = list_id;
    c[10..14].copy_from_slice(&1024u32.to_be_bytes());
    exec(lu, &c, &[])
}

/// `blocks` blocks of 512 bytes, each filled with its own number plus `seed` (32-bit, so no
/// two blocks of a test are alike).
fn numbered(blocks: usize, seed: u32) -> Vec<u8> {
    (0..blocks as u32)
        .flat_map(|b| (b + seed).to_be_bytes().repeat(128))
        .collect()
}

#[test]
fn copies_blocks_within_a_lu() {
    let lu = ram_lu(1024, 512);
    write_blocks(&lu, 0, &numbered(16, 1));
    let naa = lu.params().naa_id;
    let o = xcopy(
        &lu,
        &copy_parameter_list(
            1,
            LIST_ID_NO_HOLD,
            &[cscd(naa, 512)],
            &[segment_descriptor(0, 0, 16, 0, 1000)],
        ),
    );
    assert_good(&o);
    assert_eq!(o.data_out_length, 16 + 32 + 28);
    assert_eq!(read_blocks(&lu, 1000, 16), numbered(16, 1));
}

/// A parameter list length of zero asks for nothing (SPC-4 6.4.1; libiscsi's
/// ExtendedCopy.ParamHdr).
#[test]
fn an_empty_parameter_list_is_good() {
    let lu = ram_lu(64, 512);
    assert_good(&exec(&lu, &extended_copy_cdb(0), &[]));
}

/// Pieces of a segment whose destination overlaps its source from behind go from the end, so
/// every block is read before it is overwritten (the segment spans several 1 MiB pieces).
#[test]
fn an_overlapping_copy_moves_every_block_intact() {
    let lu = ram_lu(16384, 512);
    let blocks = 4096; // 2 MiB
    let before = numbered(blocks, 7);
    write_blocks(&lu, 0, &before);
    let naa = lu.params().naa_id;
    let seg = segment_descriptor(0, 0, blocks as u16, 0, 1024);
    assert_good(&xcopy(
        &lu,
        &copy_parameter_list(0, 0b11, &[cscd(naa, 512)], &[seg]),
    ));
    assert_eq!(read_blocks(&lu, 1024, blocks as u32), before);
}

#[test]
fn copies_between_logical_units_of_one_target() {
    let source = ram_lu(256, 512);
    let destination = Arc::new(LogicalUnit::new(
        params(1, 512),
        Arc::new(RamBackend::new(256 * 512)),
    ));
    write_blocks(&source, 10, &numbered(8, 3));
    let target = ScsiTarget::new(vec![Arc::clone(&source), Arc::clone(&destination)]);
    let param = copy_parameter_list(
        5,
        LIST_ID_NO_HOLD,
        &[
            cscd(source.params().naa_id, 512),
            cscd(destination.params().naa_id, 512),
        ],
        &[segment_descriptor(0, 1, 8, 10, 100)],
    );
    // Sent to LUN 0, the source: the copy manager reaches LUN 1 of the same target.
    let cdb = extended_copy_cdb(param.len());
    assert_good(&target.execute(&req(0, &cdb, &param)));
    assert_eq!(read_blocks(&destination, 100, 8), numbered(8, 3));
}

/// Only the target's own LUs are copy targets: another target's LU (or any other device of
/// the host) is not reachable, whatever its designator.
#[test]
fn a_lu_outside_the_target_is_not_reachable() {
    let lu = ram_lu(64, 512);
    let elsewhere = LogicalUnit::new(params(7, 512), Arc::new(RamBackend::new(64 * 512)));
    let target = ScsiTarget::new(vec![Arc::clone(&lu)]);
    let param = copy_parameter_list(
        1,
        LIST_ID_NO_HOLD,
        &[
            cscd(lu.params().naa_id, 512),
            cscd(elsewhere.params().naa_id, 512),
        ],
        &[segment_descriptor(0, 1, 1, 0, 0)],
    );
    let cdb = extended_copy_cdb(param.len());
    let o = target.execute(&req(0, &cdb, &param));
    assert_check(&o, COPY_ABORTED, COPY_TARGET_DEVICE_NOT_REACHABLE);
}

/// libiscsi's ExtendedCopy.ValidSegDescr: a descriptor index past the list, or blocks past
/// the end, end the copy before it begins with COPY ABORTED.
#[test]
fn a_segment_that_cannot_be_carried_out_is_copy_aborted() {
    let lu = ram_lu(64, 512);
    let naa = lu.params().naa_id;
    for seg in [
        segment_descriptor(0, 1, 1, 0, 0),
        segment_descriptor(0, 0, 2, 0, 63),
    ] {
        let o = xcopy(
            &lu,
            &copy_parameter_list(1, LIST_ID_HOLD, &[cscd(naa, 512)], &[seg]),
        );
        assert_check(&o, COPY_ABORTED, COPY_TARGET_DEVICE_NOT_REACHABLE);
    }
    // Nothing began, so no status is held.
    let o = receive_copy_results(&lu, 0x00, 1);
    assert_check(&o, ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB);
}

/// The parameter list checks libiscsi's ExtendedCopy.ParamHdr, DescrLimits and DescrType
/// make, with the sense each expects.
#[test]
fn malformed_parameter_lists_are_illegal_requests() {
    let lu = ram_lu(4096, 512);
    let naa = lu.params().naa_id;
    let one = || cscd(naa, 512);
    let seg = || segment_descriptor(0, 0, 8, 0, 100);
    let good = copy_parameter_list(1, LIST_ID_HOLD, &[one()], &[seg()]);

    // Cut inside the CSCD descriptor, then inside the segment descriptor.
    for len in [16 + 31, 16 + 32 + 27] {
        let o = exec(&lu, &extended_copy_cdb(len), &good[..len]);
        assert_check(&o, ILLEGAL_REQUEST, PARAMETER_LIST_LENGTH_ERROR);
    }
    let cases: Vec<(Vec<u8>, (u8, u8))> = vec![
        (
            copy_parameter_list(1, LIST_ID_HOLD, &vec![one(); 9], &[seg()]),
            TOO_MANY_TARGET_DESCRIPTORS,
        ),
        (
            copy_parameter_list(1, LIST_ID_HOLD, &[one()], &vec![seg(); 17]),
            TOO_MANY_SEGMENT_DESCRIPTORS,
        ),
        // More descriptor bytes than MAXIMUM DESCRIPTOR LIST LENGTH.
        (
            copy_parameter_list(1, LIST_ID_HOLD, &vec![one(); 9], &vec![seg(); 34]),
            PARAMETER_LIST_LENGTH_ERROR,
        ),
        (
            {
                let mut fc = one();
                fc[0] = 0xE0; // Fibre Channel N_Port_Name
                copy_parameter_list(1, LIST_ID_HOLD, &[fc], &[seg()])
            },
            UNSUPPORTED_TARGET_DESCRIPTOR_TYPE,
        ),
        (
            {
                let mut stream = seg();
                stream[0] = 0x03; // stream to stream
                copy_parameter_list(1, LIST_ID_HOLD, &[one()], &[stream])
            },
            UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE,
        ),
        (
            copy_parameter_list(1, LIST_ID_HOLD, &[cscd(naa, 4096)], &[seg()]),
            INVALID_FIELD_IN_PARAMETER_LIST,
        ),
        // LIST ID USAGE 11b (no list identifier) with one.
        (
            copy_parameter_list(1, 0b11, &[one()], &[seg()]),
            INVALID_FIELD_IN_PARAMETER_LIST,
        ),
    ];
    for (param, expected) in cases {
        assert_check(&xcopy(&lu, &param), ILLEGAL_REQUEST, expected);
    }
}

/// libiscsi's ExtendedCopy.ValidTgtDescr: an SPC-4 copy manager ignores LU ID TYPE.
#[test]
fn lu_id_type_is_ignored() {
    let lu = ram_lu(64, 512);
    let mut d = cscd(lu.params().naa_id, 512);
    d[1] = 0x80; // LU ID TYPE 10b (reserved)
    assert_good(&xcopy(
        &lu,
        &copy_parameter_list(
            1,
            LIST_ID_NO_HOLD,
            &[d],
            &[segment_descriptor(0, 0, 1, 0, 1)],
        ),
    ));
}

#[test]
fn operating_parameters_report_the_limits_and_descriptor_types() {
    let lu = ram_lu(64, 512);
    let o = receive_copy_results(&lu, 0x03, 0);
    assert_good(&o);
    let d = o.data_in.to_vec();
    assert_eq!(
        u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize,
        d.len() - 4
    );
    assert_eq!(u16::from_be_bytes([d[8], d[9]]), 8, "CSCD descriptors");
    assert_eq!(
        u16::from_be_bytes([d[10], d[11]]),
        16,
        "segment descriptors"
    );
    assert_eq!(u32::from_be_bytes(d[12..16].try_into().unwrap()), 1024);
    assert_eq!(u32::from_be_bytes(d[16..20].try_into().unwrap()), 16 << 20);
    assert_eq!(d[37], 9, "data segment granularity: 512-byte blocks");
    assert_eq!(&d[43..], &[2, 0x02, 0xE4]);
}

/// libiscsi's ReceiveCopyResults.CopyStatus: no status before a copy with LIST ID USAGE 00b,
/// one after it (reported once), none for a copy that asked for none.
#[test]
fn copy_status_is_held_when_asked_for_and_reported_once() {
    let lu = ram_lu(4096, 512);
    let naa = lu.params().naa_id;
    let no_status = receive_copy_results(&lu, 0x00, 1);
    assert_check(&no_status, ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB);

    let seg = segment_descriptor(0, 0, 2048, 0, 2048);
    assert_good(&xcopy(
        &lu,
        &copy_parameter_list(
            1,
            LIST_ID_HOLD,
            &[cscd(naa, 512)],
            std::slice::from_ref(&seg),
        ),
    ));
    let o = receive_copy_results(&lu, 0x00, 1);
    assert_good(&o);
    let d = o.data_in.to_vec();
    assert_eq!(d.len(), 12);
    assert_eq!(d[4], 0x01, "completed without errors");
    assert_eq!(u16::from_be_bytes([d[5], d[6]]), 1, "segments processed");
    assert_eq!(d[7], 0, "transfer count in bytes");
    assert_eq!(u32::from_be_bytes(d[8..12].try_into().unwrap()), 2048 * 512);
    let again = receive_copy_results(&lu, 0x00, 1);
    assert_check(&again, ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB);

    assert_good(&xcopy(
        &lu,
        &copy_parameter_list(2, LIST_ID_NO_HOLD, &[cscd(naa, 512)], &[seg]),
    ));
    let none = receive_copy_results(&lu, 0x00, 2);
    assert_check(&none, ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB);
}

/// A copy target is checked as a READ or WRITE from the sender would be: another nexus's
/// WRITE EXCLUSIVE reservation on the destination conflicts, a read-only destination is
/// write protected.
#[test]
fn copy_targets_are_checked_like_reads_and_writes() {
    let lu = ram_lu(64, 512);
    let naa = lu.params().naa_id;
    let param = copy_parameter_list(
        1,
        LIST_ID_NO_HOLD,
        &[cscd(naa, 512)],
        &[segment_descriptor(0, 0, 1, 0, 1)],
    );
    let other = Nexus::iscsi("iqn.2026-11.test:other", [0; 6]);
    // PERSISTENT RESERVE OUT from the other nexus: REGISTER key ABh, then RESERVE WRITE
    // EXCLUSIVE with it. Parameter list: RESERVATION KEY, SERVICE ACTION RESERVATION KEY.
    let as_other = |service_action: u8, rtype: u8, key: u64, sa_key: u64| {
        let mut c = [0u8; 16];
        c[0] = 0x5F;
        c[1] = service_action;
        c[2] = rtype;
        c[8] = 24;
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        lu.execute(&ScsiRequest {
            nexus: &other,
            ..req(0, &c, &p)
        })
    };
    assert_good(&as_other(0x00, 0, 0, 0xAB));
    assert_good(&as_other(0x01, 0x01, 0xAB, 0));
    assert_eq!(xcopy(&lu, &param).status, status::RESERVATION_CONFLICT);

    let read_only = LogicalUnit::new(
        LunParams {
            read_only: true,
            ..params(0, 512)
        },
        Arc::new(RamBackend::new(64 * 512)),
    );
    let o = xcopy(&read_only, &param);
    assert_check(&o, DATA_PROTECT, WRITE_PROTECTED);
}

/// With the destination's write cache off the copy is durable before it is reported done.
#[test]
fn a_write_through_destination_is_flushed() {
    let backend = Arc::new(ProbeBackend::new(64 * 512));
    let lu = LogicalUnit::new(
        LunParams {
            write_cache: false,
            ..params(0, 512)
        },
        Arc::clone(&backend) as Arc<dyn Backend>,
    );
    let param = copy_parameter_list(
        1,
        LIST_ID_NO_HOLD,
        &[cscd(lu.params().naa_id, 512)],
        &[segment_descriptor(0, 0, 4, 0, 8)],
    );
    assert_good(&xcopy(&lu, &param));
    assert_eq!(backend.flushes.load(Ordering::SeqCst), 1);
}

#[test]
fn inquiry_reports_a_copy_manager() {
    let lu = ram_lu(64, 512);
    let o = exec(&lu, &inquiry(false, 0, 96), &[]);
    assert_eq!(o.data_in.to_vec()[5] & 0x08, 0x08, "3PC");
}

/// Parameter lists made by corrupting a valid one (bytes changed, lengths cut or stretched)
/// are answered with a status and well-formed sense, never a panic.
#[test]
fn corrupted_parameter_lists_never_panic() {
    let a = ram_lu(256, 512);
    let b = Arc::new(LogicalUnit::new(
        params(1, 512),
        Arc::new(RamBackend::new(256 * 512)),
    ));
    let target = ScsiTarget::new(vec![Arc::clone(&a), Arc::clone(&b)]);
    let valid = copy_parameter_list(
        3,
        LIST_ID_HOLD,
        &[cscd(a.params().naa_id, 512), cscd(b.params().naa_id, 512)],
        &[
            segment_descriptor(0, 1, 8, 0, 8),
            segment_descriptor(1, 0, 4, 200, 250),
        ],
    );
    let mut rng = Rng(0x00C0_FFEE_1234_5678);
    for _ in 0..20_000 {
        let mut param = valid.clone();
        for _ in 0..=rng.next() % 4 {
            let at = (rng.next() % param.len() as u64) as usize;
            param[at] = match rng.next() % 4 {
                0 => 0,
                1 => 0xFF,
                _ => rng.next() as u8,
            };
        }
        let cut = match rng.next() % 4 {
            0 => (rng.next() % (param.len() as u64 + 1)) as usize,
            _ => param.len(),
        };
        param.truncate(cut);
        let claimed = match rng.next() % 4 {
            0 => rng.next() as u32 as usize,
            _ => param.len(),
        };
        let cdb = extended_copy_cdb(claimed);
        assert_well_formed(&target.execute(&req(rng.next() % 2, &cdb, &param)));
    }
}

/// File LUNs: between two files the kernel copies (copy_file_range); overlapping ranges of one
/// file, which it refuses, go through memory. Both read back what the source held.
#[test]
fn copies_between_and_within_file_luns() {
    let dir = std::env::temp_dir().join(format!("iser-xcopy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let open = |name: &str, lun: u64| {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let backend = FileBackend::open(&path, Some(8 << 20), true, false).unwrap();
        Arc::new(LogicalUnit::new(params(lun, 512), Arc::new(backend)))
    };
    let (a, b) = (open("a.img", 0), open("b.img", 1));
    let target = ScsiTarget::new(vec![Arc::clone(&a), Arc::clone(&b)]);
    let blocks = 4096; // 2 MiB: several pieces when copied through memory
    let data = numbered(blocks, 11);
    write_blocks(&a, 0, &data);
    let cscds = [cscd(a.params().naa_id, 512), cscd(b.params().naa_id, 512)];
    let across = copy_parameter_list(
        1,
        LIST_ID_NO_HOLD,
        &cscds,
        &[segment_descriptor(0, 1, blocks as u16, 0, 100)],
    );
    let within = copy_parameter_list(
        2,
        LIST_ID_NO_HOLD,
        &cscds,
        &[segment_descriptor(0, 0, blocks as u16, 0, 1000)],
    );
    for param in [across, within] {
        let cdb = extended_copy_cdb(param.len());
        assert_good(&target.execute(&req(0, &cdb, &param)));
    }
    assert_eq!(read_blocks(&b, 100, blocks as u32), data);
    assert_eq!(read_blocks(&a, 1000, blocks as u32), data);
    std::fs::remove_dir_all(&dir).unwrap();
}
