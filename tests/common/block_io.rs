//! A minimal initiator for bulk data: one logged-in session (see [`super::raw_login`]) that
//! writes and reads whole ranges of a LUN with WRITE(16)/READ(16), answering R2Ts with
//! Data-Out, one command at a time. libiscsi's command-line tools do not move arbitrary data.
//!
//! Operational keys are the RFC 7143 defaults (InitialR2T=Yes, 8192-byte data segments both
//! ways), so writes go entirely through R2T/Data-Out.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpStream};

use iser_target::iscsi::framing::{self, FrameSettings, PduReader};
use iser_target::iscsi::pdu::{DataOut, Header, Pdu, ScsiCommand, TaskAttribute};

use super::raw_login::{self, isid, SessionType, RESPONSE_TIMEOUT};

/// Bytes per Data-Out PDU: the RFC 7143 default MaxRecvDataSegmentLength, which the
/// target's own declaration never goes below.
const SEGMENT: usize = 8192;

/// What [`BlockSession::command`] got back.
#[derive(Debug)]
pub struct CommandReply {
    /// SAM status.
    pub status: u8,
    /// Data-In.
    pub data: Vec<u8>,
    /// Sense data (fixed format from this target); empty unless CHECK CONDITION.
    pub sense: Vec<u8>,
}

/// The Data-In of a command that must have ended GOOD (else a panic showing its sense data).
#[track_caller]
pub fn good(reply: CommandReply) -> Vec<u8> {
    assert_eq!(reply.status, 0, "sense {:02x?}", reply.sense);
    reply.data
}

/// A logged-in normal session on LUN `lun` of a target.
pub struct BlockSession {
    stream: TcpStream,
    reader: PduReader,
    settings: FrameSettings,
    lun: [u8; 8],
    itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
}

impl BlockSession {
    /// Logs in to `target` on 127.0.0.1:`port` and addresses LUN `lun` (< 256).
    pub fn login(port: u16, target: &str, lun: u8) -> io::Result<BlockSession> {
        Self::login_as(port, target, lun, 7)
    }

    /// Waits up to `timeout` for each answer from now on (a command the target is known to
    /// hold longer than [`RESPONSE_TIMEOUT`]).
    pub fn set_response_timeout(&mut self, timeout: std::time::Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(timeout))
    }

    /// As [`BlockSession::login`], with ISID number `isid_n` (see [`isid`]): sessions with
    /// different ISIDs are different I_T nexuses; the same ISID reinstates the session.
    pub fn login_as(port: u16, target: &str, lun: u8, isid_n: u16) -> io::Result<BlockSession> {
        let mut stream = raw_login::connect_from(Ipv4Addr::LOCALHOST, port);
        let response = raw_login::login(
            &mut stream,
            "iqn.2026-11.io.iser-target:block-io",
            isid(isid_n),
            SessionType::Normal { target },
        )?;
        if response.status_class != 0 {
            return Err(io::Error::other(format!(
                "login refused: status {}/{}",
                response.status_class, response.status_detail
            )));
        }
        stream.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
        Ok(BlockSession {
            stream,
            reader: PduReader::new(),
            settings: FrameSettings::default(),
            lun: [0, lun, 0, 0, 0, 0, 0, 0],
            itt: 0x100,
            cmd_sn: response.exp_cmd_sn,
            exp_stat_sn: response.stat_sn.wrapping_add(1),
        })
    }

    /// Writes `data` (a whole number of `block_size` blocks) at block `lba`.
    pub fn write(&mut self, lba: u64, data: &[u8], block_size: usize) -> io::Result<()> {
        let itt = self.send_command(0x8A, lba, data.len(), block_size)?;
        let (status, response_data) = self.answer_r2ts(itt, data)?;
        check_status(status, &response_data)
    }

    /// Runs a command with Data-Out (`cdb`, up to 16 bytes; `data` sent as the target asks
    /// for it): returns its status and sense data (without the SenseLength prefix).
    pub fn command_out(&mut self, cdb: &[u8], data: &[u8]) -> io::Result<CommandReply> {
        let mut padded = vec![0u8; 16];
        padded[..cdb.len()].copy_from_slice(cdb);
        let itt = self.send_cdb(padded, data.len(), false, true)?;
        let (status, response_data) = self.answer_r2ts(itt, data)?;
        Ok(CommandReply {
            status,
            data: Vec::new(),
            sense: response_data.get(2..).unwrap_or_default().to_vec(),
        })
    }

    /// Answers the target's R2Ts for command `itt` from `data` until its SCSI Response:
    /// returns the response's status and data segment.
    fn answer_r2ts(&mut self, itt: u32, data: &[u8]) -> io::Result<(u8, Vec<u8>)> {
        loop {
            let pdu = self.next_pdu()?;
            match pdu.header {
                Header::ReadyToTransfer(r2t) => {
                    let start = r2t.buffer_offset as usize;
                    let end = start + r2t.desired_length as usize;
                    let wanted = data.get(start..end).ok_or_else(|| {
                        io::Error::other(format!("R2T for {start}..{end} beyond the data"))
                    })?;
                    for (n, chunk) in wanted.chunks(SEGMENT).enumerate() {
                        let header = Header::DataOut(DataOut {
                            final_flag: start + (n + 1) * SEGMENT >= end,
                            lun: self.lun,
                            itt,
                            ttt: r2t.ttt,
                            exp_stat_sn: self.exp_stat_sn,
                            data_sn: n as u32,
                            buffer_offset: (start + n * SEGMENT) as u32,
                        });
                        self.send(&Pdu::with_data(header, chunk.to_vec()))?;
                    }
                }
                Header::ScsiResponse(r) => {
                    self.exp_stat_sn = r.stat_sn.wrapping_add(1);
                    return Ok((r.status, pdu.data));
                }
                other => return Err(io::Error::other(format!("unexpected {other:?}"))),
            }
        }
    }

    /// Reads `len` bytes (a whole number of `block_size` blocks) from block `lba`.
    pub fn read(&mut self, lba: u64, len: usize, block_size: usize) -> io::Result<Vec<u8>> {
        self.send_command(0x88, lba, len, block_size)?;
        let mut out = vec![0u8; len];
        loop {
            let pdu = self.next_pdu()?;
            match pdu.header {
                Header::DataIn(d) => {
                    let start = d.buffer_offset as usize;
                    out.get_mut(start..start + pdu.data.len())
                        .ok_or_else(|| io::Error::other("Data-In beyond the buffer"))?
                        .copy_from_slice(&pdu.data);
                    if d.status_present {
                        self.exp_stat_sn = d.stat_sn.wrapping_add(1);
                        check_status(d.status, &[])?;
                        return Ok(out);
                    }
                }
                Header::ScsiResponse(r) => {
                    self.exp_stat_sn = r.stat_sn.wrapping_add(1);
                    check_status(r.status, &pdu.data)?;
                    return Ok(out);
                }
                other => return Err(io::Error::other(format!("unexpected {other:?}"))),
            }
        }
    }

    /// Runs a command without Data-Out (`cdb`, up to 16 bytes) expecting up to `data_in`
    /// bytes of Data-In: returns its status, Data-In and sense data (without the iSCSI
    /// SenseLength prefix).
    pub fn command(&mut self, cdb: &[u8], data_in: usize) -> io::Result<CommandReply> {
        let mut padded = vec![0u8; 16];
        padded[..cdb.len()].copy_from_slice(cdb);
        self.send_cdb(padded, data_in, data_in > 0, false)?;
        let mut data = Vec::new();
        loop {
            let pdu = self.next_pdu()?;
            match pdu.header {
                Header::DataIn(d) => {
                    data.extend_from_slice(&pdu.data);
                    if d.status_present {
                        self.exp_stat_sn = d.stat_sn.wrapping_add(1);
                        let status = d.status;
                        let sense = Vec::new();
                        return Ok(CommandReply {
                            status,
                            data,
                            sense,
                        });
                    }
                }
                Header::ScsiResponse(r) => {
                    self.exp_stat_sn = r.stat_sn.wrapping_add(1);
                    let sense = pdu.data.get(2..).unwrap_or_default().to_vec();
                    return Ok(CommandReply {
                        status: r.status,
                        data,
                        sense,
                    });
                }
                other => return Err(io::Error::other(format!("unexpected {other:?}"))),
            }
        }
    }

    /// READ CAPACITY(16): the last LBA.
    pub fn last_lba(&mut self) -> io::Result<u64> {
        let reply = self.command(&[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32], 32)?;
        check_status(reply.status, &reply.sense)?;
        let last = reply
            .data
            .get(..8)
            .ok_or_else(|| io::Error::other("short READ CAPACITY"))?;
        Ok(u64::from_be_bytes(last.try_into().unwrap()))
    }

    /// Sends a READ(16) (0x88) or WRITE(16) (0x8A) command; returns its ITT.
    fn send_command(
        &mut self,
        opcode: u8,
        lba: u64,
        len: usize,
        block_size: usize,
    ) -> io::Result<u32> {
        let blocks = u32::try_from(len / block_size).map_err(io::Error::other)?;
        let mut cdb = vec![0u8; 16];
        cdb[0] = opcode;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        self.send_cdb(cdb, len, opcode == 0x88, opcode == 0x8A)
    }

    /// Sends a command of `len` expected bytes; returns its ITT.
    fn send_cdb(&mut self, cdb: Vec<u8>, len: usize, read: bool, write: bool) -> io::Result<u32> {
        self.itt += 1;
        let command = ScsiCommand {
            immediate: false,
            final_flag: true,
            read,
            write,
            attribute: TaskAttribute::Simple,
            lun: self.lun,
            itt: self.itt,
            expected_data_length: len as u32,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: cdb.into(),
            bidi_read_length: None,
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.send(&Pdu::new(Header::ScsiCommand(command)))?;
        Ok(self.itt)
    }

    fn send(&mut self, pdu: &Pdu) -> io::Result<()> {
        self.stream.write_all(&framing::encode(pdu, &self.settings))
    }

    /// The next PDU from the target, skipping NOP-Ins that ask nothing of us.
    fn next_pdu(&mut self) -> io::Result<Pdu> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let next = self
                .reader
                .next_pdu(&self.settings)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            match next {
                Some(Pdu {
                    header: Header::NopIn(n),
                    ..
                }) if n.ttt == 0xFFFF_FFFF => continue,
                Some(pdu) => return Ok(pdu),
                None => {}
            }
            match self.stream.read(&mut buf)? {
                0 => return Err(io::Error::other("target closed the connection")),
                n => self.reader.push(&buf[..n]),
            }
        }
    }
}

/// GOOD, or an error carrying the status and sense bytes.
fn check_status(status: u8, sense: &[u8]) -> io::Result<()> {
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "SCSI status {status:#04x}, sense {sense:02x?}"
        )))
    }
}
