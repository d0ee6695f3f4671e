//! MODE SENSE (6 and 10) and MODE SELECT.

use super::*;

fn mode_sense6(flags: u8, page: u8, subpage: u8, alloc: u8) -> Vec<u8> {
    vec![0x1A, flags, page, subpage, alloc, 0]
}

fn mode_sense10(flags: u8, page: u8, subpage: u8, alloc: u16) -> Vec<u8> {
    let a = alloc.to_be_bytes();
    vec![0x5A, flags, page, subpage, 0, 0, 0, a[0], a[1], 0]
}

/// Finds page `code` in MODE SENSE data after a header of `hdr` bytes + block descriptors.
fn find_page(d: &[u8], start: usize, code: u8) -> Option<Vec<u8>> {
    let mut pos = start;
    while pos + 2 <= d.len() {
        let len = 2 + usize::from(d[pos + 1]);
        if d[pos] & 0x3F == code {
            return Some(d[pos..pos + len].to_vec());
        }
        pos += len;
    }
    None
}

#[test]
fn mode_sense() {
    let lu = ram_lu(1000, 512);
    let o = exec(&lu, &mode_sense6(0, 0x3F, 0, 255), &[]);
    assert_good(&o);
    let d = &o.data_in.to_vec();
    assert_eq!(usize::from(d[0]), d.len() - 1);
    assert_eq!(d[2], 0x10, "DPOFUA, not WP");
    assert_eq!(d[3], 8);
    assert_eq!(&d[4..8], &1000u32.to_be_bytes());
    assert_eq!(&d[9..12], &[0, 2, 0]);
    for code in [0x01, 0x08, 0x0A, 0x1C] {
        assert!(find_page(d, 12, code).is_some(), "page {code:#x}");
    }
    let caching = find_page(d, 12, 0x08).unwrap();
    assert_eq!(caching.len(), 20);
    assert_eq!(caching[2] & 0x04, 0x04);
    let control = find_page(d, 12, 0x0A).unwrap();
    assert_eq!((control.len(), control[2] & 0x04), (12, 0), "fixed sense");
    // Linux's first probe: 4 bytes of page 3Fh.
    assert_eq!(exec(&lu, &mode_sense6(0, 0x3F, 0, 4), &[]).data_in.len(), 4);
    // DBD, all subpages, a single page.
    let o = exec(&lu, &mode_sense6(0x08, 0x08, 0xFF, 255), &[]);
    assert_eq!(o.data_in.len(), 4 + 20);
    assert_eq!(o.data_in.to_vec()[3], 0);
    // Changeable: only WCE. Default follows the configured WCE.
    let o = exec(&lu, &mode_sense6(0x08, 0x40 | 0x08, 0, 255), &[]);
    assert_eq!(o.data_in.to_vec()[4 + 2], 0x04);
    assert!(o.data_in.to_vec()[4 + 3..].iter().all(|&b| b == 0));
    let o = exec(&lu, &mode_sense6(0x08, 0x40 | 0x0A, 0, 255), &[]);
    assert!(o.data_in.to_vec()[4 + 2..].iter().all(|&b| b == 0));
    assert_good(&exec(&lu, &mode_sense6(0x08, 0x80 | 0x3F, 0, 255), &[]));
    // Saved values: not supported.
    assert_check(
        &exec(&lu, &mode_sense6(0, 0xC0 | 0x08, 0, 255), &[]),
        ILLEGAL_REQUEST,
        SAVING_PARAMETERS_NOT_SUPPORTED,
    );
    assert_check(
        &exec(&lu, &mode_sense6(0, 0x05, 0, 255), &[]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    assert_check(
        &exec(&lu, &mode_sense6(0, 0x08, 1, 255), &[]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    // MODE SENSE(10), short and long (LLBAA) block descriptors.
    let o = exec(&lu, &mode_sense10(0, 0x08, 0, 512), &[]);
    let d = &o.data_in.to_vec();
    assert_eq!(usize::from(u16::from_be_bytes([d[0], d[1]])), d.len() - 2);
    assert_eq!((d[4], d[7]), (0, 8));
    assert_eq!(d.len(), 8 + 8 + 20);
    let o = exec(&lu, &mode_sense10(0x10, 0x08, 0, 512), &[]);
    let d = &o.data_in.to_vec();
    assert_eq!((d[4], d[7]), (1, 16));
    assert_eq!(&d[8..16], &1000u64.to_be_bytes());
    assert_eq!(&d[20..24], &512u32.to_be_bytes());
    assert_eq!(
        exec(&lu, &mode_sense10(0, 0x3F, 0, 10), &[]).data_in.len(),
        10
    );
}

#[test]
fn mode_select_toggles_wce() {
    let lu = ram_lu(100, 512);
    let caching = |lu: &LogicalUnit| {
        let o = exec(lu, &mode_sense6(0x08, 0x08, 0, 255), &[]);
        o.data_in.to_vec()[4..].to_vec()
    };
    // MODE SELECT(6) with the caching page, WCE cleared (as Linux's cache_type does).
    let mut page = caching(&lu);
    page[2] &= !0x04;
    let mut list = vec![0, 0, 0, 0];
    list.extend_from_slice(&page);
    let o = exec(&lu, &[0x15, 0x10, 0, 0, list.len() as u8, 0], &list);
    assert_good(&o);
    assert_eq!(o.data_out_length as usize, list.len());
    assert!(!lu.write_cache_enabled());
    assert_eq!(caching(&lu)[2] & 0x04, 0);
    // MODE SELECT(10) with a block descriptor turns it back on.
    page[2] |= 0x04;
    let mut list = vec![0, 0, 0, 0, 0, 0, 0, 8];
    list.extend_from_slice(&100u32.to_be_bytes());
    list.extend_from_slice(&[0, 0, 2, 0]);
    list.extend_from_slice(&page);
    let l = (list.len() as u16).to_be_bytes();
    assert_good(&exec(
        &lu,
        &[0x55, 0x10, 0, 0, 0, 0, 0, l[0], l[1], 0],
        &list,
    ));
    assert!(lu.write_cache_enabled());
    // Changing a non-changeable field is rejected, and nothing is applied.
    let mut bad = vec![0, 0, 0, 0];
    let mut p = page.clone();
    p[2] = 0x01; // RCD, WCE off
    bad.extend_from_slice(&p);
    let o = exec(&lu, &[0x15, 0x10, 0, 0, bad.len() as u8, 0], &bad);
    assert_check(&o, ILLEGAL_REQUEST, INVALID_FIELD_IN_PARAMETER_LIST);
    assert!(lu.write_cache_enabled());
    // Unknown page, wrong length, wrong block size, SP, short list.
    let mut unk = vec![0, 0, 0, 0, 0x07, 2, 0, 0];
    assert_check(
        &exec(&lu, &[0x15, 0x10, 0, 0, unk.len() as u8, 0], &unk),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_PARAMETER_LIST,
    );
    unk[4] = 0x08;
    assert_check(
        &exec(&lu, &[0x15, 0x10, 0, 0, unk.len() as u8, 0], &unk),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_PARAMETER_LIST,
    );
    let mut bd = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0];
    assert_check(
        &exec(&lu, &[0x15, 0x10, 0, 0, bd.len() as u8, 0], &bd),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_PARAMETER_LIST,
    );
    bd[10] = 0x02;
    assert_good(&exec(&lu, &[0x15, 0x10, 0, 0, bd.len() as u8, 0], &bd));
    assert_check(
        &exec(&lu, &[0x15, 0x11, 0, 0, 4, 0], &[0; 4]),
        ILLEGAL_REQUEST,
        INVALID_FIELD_IN_CDB,
    );
    assert_check(
        &exec(&lu, &[0x15, 0x10, 0, 0, 24, 0], &[0; 4]),
        ILLEGAL_REQUEST,
        PARAMETER_LIST_LENGTH_ERROR,
    );
    assert_good(&exec(&lu, &[0x15, 0x10, 0, 0, 0, 0], &[]));
}

/// SPC-4 5.14: a MODE SELECT that changes WCE leaves MODE PARAMETERS CHANGED for every other
/// I_T nexus the LU knows, once; the sender hears nothing, and a MODE SELECT that changes
/// nothing tells nobody.
#[test]
fn a_wce_change_tells_the_other_nexuses() {
    let lu = ram_lu(100, 512);
    let other = Nexus::iscsi("iqn.2026-11.test:other", [0x80, 0, 0, 0, 0, 9]);
    let tur_as = |n: &Nexus| {
        lu.execute(&ScsiRequest {
            nexus: n,
            ..req(0, &[0; 16], &[])
        })
    };
    assert_good(&tur_as(&other));
    let o = exec(&lu, &mode_sense6(0x08, 0x08, 0, 255), &[]);
    let mut page = o.data_in.to_vec()[4..].to_vec();
    let select = |page: &[u8]| {
        let mut list = vec![0, 0, 0, 0];
        list.extend_from_slice(page);
        assert_good(&exec(&lu, &[0x15, 0x10, 0, 0, list.len() as u8, 0], &list));
    };
    select(&page); // no change
    assert_good(&tur_as(&other));
    page[2] &= !0x04;
    select(&page);
    assert_check(&tur_as(&other), UNIT_ATTENTION, MODE_PARAMETERS_CHANGED);
    assert_good(&tur_as(&other));
    assert_good(&tur_as(&TEST_NEXUS));
}
