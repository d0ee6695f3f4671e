//! Random input: random PDUs and wire bytes never panic nor write without a command.

use super::*;

/// A plausible but random initiator PDU.
fn random_pdu(rng: &mut Rng, pair: &Pair) -> Pdu {
    let itt = rng.below(6) as u32;
    let cmd_sn = rng.near(pair.cmd_sn);
    let lun = pdu::encode_lun(rng.below(3));
    let header = match rng.below(12) {
        0..=3 => {
            let mut cdb = match rng.below(3) {
                0 => read10(rng.below(70) as u32, rng.below(20) as u16),
                1 => write10(rng.below(70) as u32, rng.below(20) as u16),
                _ => {
                    let mut c = vec![0u8; 16];
                    c.iter_mut().for_each(|b| *b = rng.next() as u8);
                    c
                }
            };
            cdb.resize(16, 0);
            Header::ScsiCommand(ScsiCommand {
                immediate: rng.chance(20),
                final_flag: rng.chance(70),
                read: rng.chance(50),
                write: rng.chance(50),
                attribute: [
                    TaskAttribute::Simple,
                    TaskAttribute::Ordered,
                    TaskAttribute::HeadOfQueue,
                    TaskAttribute::Untagged,
                ][rng.below(4) as usize],
                lun,
                itt,
                expected_data_length: if rng.chance(10) {
                    rng.next() as u32
                } else {
                    rng.below(12_000) as u32
                },
                cmd_sn,
                exp_stat_sn: 0,
                cdb: cdb.into(),
                bidi_read_length: None,
            })
        }
        4..=6 => Header::DataOut(DataOut {
            final_flag: rng.chance(50),
            lun,
            itt,
            ttt: if rng.chance(30) {
                RESERVED_TAG
            } else {
                rng.below(20) as u32
            },
            exp_stat_sn: 0,
            data_sn: rng.below(4) as u32,
            buffer_offset: (rng.below(24) * 512) as u32,
        }),
        7 => Header::NopOut(NopOut {
            immediate: rng.chance(50),
            lun,
            itt: if rng.chance(30) { RESERVED_TAG } else { itt },
            ttt: if rng.chance(50) {
                RESERVED_TAG
            } else {
                rng.below(20) as u32
            },
            cmd_sn,
            exp_stat_sn: 0,
        }),
        8 => Header::TaskMgmtRequest(TaskMgmtRequest {
            immediate: rng.chance(50),
            // TARGET COLD RESET (7) ends the session: keep it rare.
            function: match rng.below(10) as u8 {
                7 if rng.chance(90) => 6,
                f => f,
            },
            lun,
            itt: itt + 100,
            referenced_task_tag: itt,
            cmd_sn,
            exp_stat_sn: 0,
            ref_cmd_sn: rng.near(pair.cmd_sn),
            exp_data_sn: 0,
        }),
        9 => Header::TextRequest(TextRequest {
            immediate: rng.chance(50),
            final_flag: true,
            continue_flag: rng.chance(10),
            lun,
            itt: itt + 200,
            ttt: if rng.chance(80) {
                RESERVED_TAG
            } else {
                rng.below(20) as u32
            },
            cmd_sn,
            exp_stat_sn: 0,
        }),
        10 => Header::SnackRequest(SnackRequest {
            itt,
            ..Default::default()
        }),
        _ if rng.chance(95) => Header::ScsiCommand(ScsiCommand {
            immediate: false,
            final_flag: true,
            read: false,
            write: true,
            attribute: TaskAttribute::Simple,
            lun,
            itt,
            expected_data_length: 1024,
            cmd_sn: pair.cmd_sn,
            exp_stat_sn: 0,
            cdb: write10(rng.below(60) as u32, 2).into(),
            bidi_read_length: None,
        }),
        _ => Header::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: rng.below(3) as u8,
            itt: itt + 300,
            cid: 0,
            cmd_sn,
            exp_stat_sn: 0,
        }),
    };
    let data = match &header {
        Header::DataOut(_) => {
            let len = (rng.below(9) * 256) as usize;
            vec![0xd0; len]
        }
        Header::ScsiCommand(h) if h.write && rng.chance(50) => vec![0xc0; rng.below(5000) as usize],
        Header::TextRequest(_) => {
            if rng.chance(50) {
                kv(&[("SendTargets", "All"), ("MaxRecvDataSegmentLength", "4096")])
            } else {
                rng.bytes(64)
            }
        }
        Header::NopOut(_) => rng.bytes(32),
        _ => Vec::new(),
    };
    Pdu::with_data(header, data)
}

/// Encodes a PDU and maybe damages it: flipped header bits, or plain garbage.
fn random_wire_bytes(rng: &mut Rng, pair: &Pair) -> Vec<u8> {
    let pdu = random_pdu(rng, pair);
    let mut bytes = framing::encode(&pdu, &pair.settings);
    match rng.below(20) {
        0..=13 => {}
        14..=18 => {
            for _ in 0..=rng.below(3) {
                let at = rng.below(pdu::BHS_LEN as u64) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
            // Keep the data segment length honest most of the time so the stream stays in sync.
            if rng.chance(95) {
                let good = framing::encode(&pdu, &pair.settings);
                bytes[4..8].copy_from_slice(&good[4..8]);
            }
        }
        _ => bytes = rng.bytes(200),
    }
    bytes
}

/// Thousands of random and mutated PDUs into logged-in connections: no panic, every target PDU
/// survives the wire, nothing after Close, and only real WRITE commands ever write.
#[test]
fn random_pdus_never_panic_or_write_without_a_command() {
    for seed in 1..=8u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut pair = logged_in(&[("InitialR2T", "No"), ("MaxRecvDataSegmentLength", "4096")]);
        // (ITT, CDB, EDTL) of every decoded WRITE-flagged SCSI Command the target received.
        let mut write_commands: Vec<(u32, Vec<u8>, u32)> = Vec::new();
        let mut checked = 0;
        let mut sessions = 1;
        let mut writes = 0;
        for _ in 0..1500 {
            if pair.closed.is_some() {
                sessions += 1;
                pair = logged_in(&[("InitialR2T", "No")]);
                write_commands.clear();
                checked = 0;
            }
            pair.auto_complete = rng.chance(60);
            let bytes = random_wire_bytes(&mut rng, &pair);
            let mut reader = PduReader::new();
            reader.push_owned(bytes);
            loop {
                match reader.next_frame(&pair.settings) {
                    Ok(Some(frame)) => {
                        if let Ok(Header::ScsiCommand(h)) = &frame.header {
                            if h.write {
                                write_commands.push((
                                    h.itt,
                                    h.cdb.to_vec(),
                                    h.expected_data_length,
                                ));
                            }
                        }
                        let context = pair.fresh_context(frame.header.as_ref().ok());
                        pair.conn
                            .receive_frame(&mut reader, frame, pair.now, context);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let fatal = e.is_fatal();
                        pair.conn.handle_frame_error(e, pair.now);
                        if fatal {
                            break;
                        }
                    }
                }
                pair.pump();
            }
            pair.pump();
            if rng.chance(20) && !pair.deferred.is_empty() {
                let task = pair
                    .deferred
                    .remove(rng.below(pair.deferred.len() as u64) as usize);
                let outcome = pair.backend.run(&task);
                pair.complete_deferred(task.id, outcome);
            }
            if rng.chance(3) {
                pair.advance(Duration::from_secs(rng.below(40)));
            }
            // The initiator follows the target's ExpCmdSN so commands keep landing in the window.
            for p in pair.take() {
                if !matches!(p.header, Header::Reject(_) | Header::LoginResponse(_)) {
                    pair.cmd_sn = sequence(&p).1;
                }
            }
            for task in &pair.executed[checked..] {
                if task.cdb.first() == Some(&0x2a) && !task.data_out.is_empty() {
                    assert!(
                        write_commands
                            .iter()
                            .any(|(_, cdb, edtl)| **cdb == *task.cdb
                                && task.data_out.len() as u64 <= *edtl as u64),
                        "seed {seed}: write executed without a matching command: {task:?}"
                    );
                }
                assert!(task.data_out.len() as u64 <= task.expected_transfer_length as u64);
                writes += usize::from(task.cdb.first() == Some(&0x2a));
            }
            checked = pair.executed.len();
        }
        // The input must actually exercise the target, not just bounce off.
        assert!(writes > 10, "seed {seed}: only {writes} writes ran");
        assert!(sessions < 100, "seed {seed}: {sessions} sessions");
    }
}
