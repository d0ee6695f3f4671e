//! MODE SENSE / MODE SELECT (SPC-4 6.11-6.14) with the pages Linux reads. Only WCE in the
//! caching page is changeable.

use super::cdb::Cdb;
use super::sense::{self, Sense};
use super::{op, truncate, CmdResult, LogicalUnit, Nexus};

/// Pages we implement, in the order MODE SENSE page 3Fh returns them.
const PAGES: [u8; 4] = [0x01, 0x08, 0x0A, 0x1C];

/// Page control: which values MODE SENSE reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageControl {
    Current,
    Changeable,
    Default,
}

/// One mode page (page-0 format) for the given page control, or `None` if unknown.
fn page(lu: &LogicalUnit, code: u8, pc: PageControl) -> Option<Vec<u8>> {
    let mut p = match code {
        // Read-Write Error Recovery: all zero (no retries to tune).
        0x01 => vec![0u8; 12],
        // Caching: byte 2 WCE (0x04); RCD = 0 (read cache enabled).
        0x08 => vec![0u8; 20],
        // Control: QUEUE ALGORITHM MODIFIER 1 (unrestricted reordering), D_SENSE 0
        // (fixed sense), BUSY TIMEOUT unlimited.
        0x0A => vec![0u8; 12],
        // Informational Exceptions Control: nothing enabled.
        0x1C => vec![0u8; 12],
        _ => return None,
    };
    p[0] = code;
    p[1] = (p.len() - 2) as u8;
    match (code, pc) {
        (0x08, PageControl::Current) if lu.write_cache_enabled() => p[2] = 0x04,
        (0x08, PageControl::Default) if lu.params().write_cache => p[2] = 0x04,
        (0x08, PageControl::Changeable) => p[2] = 0x04,
        (0x0A, PageControl::Current | PageControl::Default) => {
            p[3] = 0x10;
            p[8] = 0xFF;
            p[9] = 0xFF;
        }
        _ => {}
    }
    Some(p)
}

/// MODE SENSE(6)/(10): header, optional block descriptor, requested page(s).
pub(super) fn mode_sense(lu: &LogicalUnit, cdb: Cdb<'_>) -> CmdResult<Vec<u8>> {
    let ten = cdb.opcode() == op::MODE_SENSE_10;
    let dbd = cdb.byte(1) & 0x08 != 0;
    let llbaa = ten && cdb.byte(1) & 0x10 != 0;
    let pc = match cdb.byte(2) >> 6 {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        _ => {
            return Err(Sense::new(
                sense::ILLEGAL_REQUEST,
                sense::SAVING_PARAMETERS_NOT_SUPPORTED,
            ))
        }
    };
    let code = cdb.byte(2) & 0x3F;
    let subpage = cdb.byte(3);
    let alloc = if ten {
        usize::from(cdb.be16(7))
    } else {
        usize::from(cdb.byte(4))
    };
    // We have no subpages: subpage 0 and FFh (all subpages) both mean the page itself.
    if subpage != 0x00 && subpage != 0xFF {
        return Err(Sense::invalid_cdb_field(3, None));
    }
    let codes: Vec<u8> = if code == 0x3F {
        PAGES.to_vec()
    } else if PAGES.contains(&code) {
        vec![code]
    } else {
        return Err(Sense::invalid_cdb_field(2, Some(5)));
    };
    let mut body = Vec::new();
    for c in codes {
        body.extend(page(lu, c, pc).unwrap_or_default());
    }

    let bs = lu.params().block_size;
    let blocks = lu.num_blocks();
    let desc: Vec<u8> = match (dbd, llbaa) {
        (true, _) => Vec::new(),
        (false, true) => {
            let mut d = blocks.to_be_bytes().to_vec();
            d.extend_from_slice(&[0; 4]);
            d.extend_from_slice(&bs.to_be_bytes());
            d
        }
        (false, false) => {
            // SBC-3 short LBA descriptor: 4-byte block count (saturated), 3-byte length.
            let mut d = u32::try_from(blocks)
                .unwrap_or(u32::MAX)
                .to_be_bytes()
                .to_vec();
            d.push(0);
            d.extend_from_slice(&bs.to_be_bytes()[1..]);
            d
        }
    };
    let device_specific = 0x10 | if lu.params().read_only { 0x80 } else { 0 }; // DPOFUA, WP
    let mut d = if ten {
        let total = 8 + desc.len() + body.len();
        let mut h = ((total - 2) as u16).to_be_bytes().to_vec();
        h.extend_from_slice(&[0, device_specific, u8::from(llbaa && !dbd), 0]);
        h.extend_from_slice(&(desc.len() as u16).to_be_bytes());
        h
    } else {
        let total = 4 + desc.len() + body.len();
        vec![(total - 1) as u8, 0, device_specific, desc.len() as u8]
    };
    d.extend(desc);
    d.extend(body);
    Ok(truncate(d, alloc))
}

/// MODE SELECT(6)/(10): validates the whole parameter list against the current values and
/// the changeable mask, then applies WCE. Returns the parameter list length (Data-Out the
/// command calls for).
pub(super) fn mode_select(
    lu: &LogicalUnit,
    cdb: Cdb<'_>,
    nexus: &Nexus,
    data_out: &[u8],
) -> CmdResult<u32> {
    let ten = cdb.opcode() == op::MODE_SELECT_10;
    if cdb.byte(1) & 0x01 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(0))); // SP: no saved pages
    }
    let plen = if ten {
        usize::from(cdb.be16(7))
    } else {
        usize::from(cdb.byte(4))
    };
    if plen == 0 {
        return Ok(0);
    }
    let list_error = || Sense::new(sense::ILLEGAL_REQUEST, sense::PARAMETER_LIST_LENGTH_ERROR);
    let raw = data_out.get(..plen).ok_or_else(list_error)?;
    let list = Cdb::new(raw);
    let (header_len, medium_at, bdl, long) = if ten {
        (8, 2, usize::from(list.be16(6)), list.byte(4) & 0x01 != 0)
    } else {
        (4, 1, usize::from(list.byte(3)), false)
    };
    if plen < header_len {
        return Err(list_error());
    }
    if list.byte(medium_at) != 0 {
        return Err(Sense::invalid_param_field(medium_at as u16));
    }
    let desc_len = if long { 16 } else { 8 };
    if bdl != 0 && bdl != desc_len {
        return Err(Sense::invalid_param_field(if ten { 6 } else { 3 }));
    }
    if header_len + bdl > plen {
        return Err(list_error());
    }
    if bdl != 0 {
        // Block length must stay ours; capacity cannot be changed (0 = unchanged).
        let (blocks, length, length_at) = if long {
            (
                list.be64(header_len),
                list.be32(header_len + 12),
                header_len + 12,
            )
        } else {
            (
                u64::from(list.be32(header_len)),
                list.be24(header_len + 5),
                header_len + 5,
            )
        };
        if length != lu.params().block_size {
            return Err(Sense::invalid_param_field(length_at as u16));
        }
        let unchanged =
            blocks == 0 || blocks == lu.num_blocks() || (!long && blocks == u64::from(u32::MAX));
        if !unchanged {
            return Err(Sense::invalid_param_field(header_len as u16));
        }
    }
    let mut new_wce = None;
    let mut pos = header_len + bdl;
    while pos < plen {
        let code = list.byte(pos) & 0x3F;
        if list.byte(pos) & 0x40 != 0 {
            return Err(Sense::invalid_param_field(pos as u16)); // no subpages
        }
        if pos + 2 > plen {
            return Err(list_error());
        }
        let len = 2 + usize::from(list.byte(pos + 1));
        let given = raw.get(pos..pos + len).ok_or_else(list_error)?;
        let (Some(current), Some(mask)) = (
            page(lu, code, PageControl::Current),
            page(lu, code, PageControl::Changeable),
        ) else {
            return Err(Sense::invalid_param_field(pos as u16));
        };
        if given.len() != current.len() {
            return Err(Sense::invalid_param_field(pos as u16 + 1));
        }
        let bad = given
            .iter()
            .zip(&current)
            .zip(&mask)
            .skip(2)
            .position(|((g, c), m)| (g ^ c) & !m != 0);
        if let Some(i) = bad {
            return Err(Sense::invalid_param_field((pos + 2 + i) as u16));
        }
        if code == 0x08 {
            new_wce = Some(given[2] & 0x04 != 0);
        }
        pos += len;
    }
    if let Some(wce) = new_wce {
        lu.set_write_cache(wce, nexus);
    }
    Ok(plen as u32)
}
