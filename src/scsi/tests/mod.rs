//! Command-level tests of the SCSI layer against RAM and file backends.
//!
//! One file per group of commands; helpers shared between them live here.

mod block_commands;
mod execution;
mod identify;
mod mode;
mod other_commands;
mod read_write;
mod xcopy;

use super::sense::*;
use super::testutil::*;
use super::*;
use crate::backend::{FileBackend, RamBackend};

fn inquiry(evpd: bool, page: u8, alloc: u16) -> Vec<u8> {
    let a = alloc.to_be_bytes();
    vec![0x12, u8::from(evpd), page, a[0], a[1], 0]
}

fn write_blocks(lu: &LogicalUnit, lba: u64, data: &[u8]) {
    let blocks = (data.len() / lu.params().block_size as usize) as u32;
    assert_good(&exec(lu, &write16(lba, blocks, false), data));
}

fn read_blocks(lu: &LogicalUnit, lba: u64, blocks: u32) -> Vec<u8> {
    let o = exec(lu, &read16(lba, blocks), &[]);
    assert_good(&o);
    o.data_in.to_vec()
}

fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&((6 + 16 * descs.len()) as u16).to_be_bytes());
    d.extend_from_slice(&((16 * descs.len()) as u16).to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for &(lba, n) in descs {
        d.extend_from_slice(&lba.to_be_bytes());
        d.extend_from_slice(&n.to_be_bytes());
        d.extend_from_slice(&[0; 4]);
    }
    d
}

fn unmap_cdb(len: usize) -> Vec<u8> {
    let l = (len as u16).to_be_bytes();
    vec![0x42, 0, 0, 0, 0, 0, 0, l[0], l[1], 0]
}
