#!/usr/bin/env python3
"""Writes 4 KiB blocks to a disk and logs each one the disk acknowledged, so a later
check can prove that every acknowledged write survived a target crash.

    ack-writer.py write DEV LOG [--sync-every N] [--blocks N] [--seed S]
    ack-writer.py verify DEV LOG

write: O_DIRECT writes, queue depth 1, each block of a random permutation of the
first --blocks blocks written once, its content derived from (seed, block). After
each write() returns (the target answered GOOD) the block number goes to LOG as
"W <block>". With --sync-every N the writer calls fsync() (a SYNCHRONIZE CACHE on a
disk whose write cache is on) after every N writes and, once it returns, logs
"S <count>": the first <count> writes of the log are durable. Runs until every block
is written or SIGTERM; a write or fsync error is retried (the initiator is
recovering the session), so the log only ever holds acknowledged blocks.

verify: reads back every block the log says must be durable (all "W" lines without
--sync-every; the "W" lines covered by the last "S" with it) and checks its content.
Prints one line per bad block and a summary; exits 1 if any block is wrong.
"""
import argparse
import hashlib
import mmap
import os
import random
import signal
import sys
import time

BLOCK = 4096


def pattern(seed: int, block: int) -> bytes:
    """The 4 KiB a block must hold: a header naming it, then a keyed hash stream."""
    head = f"ack-writer seed={seed} block={block}\n".encode()
    stream = b""
    counter = 0
    while len(head) + len(stream) < BLOCK:
        stream += hashlib.sha256(f"{seed}:{block}:{counter}".encode()).digest()
        counter += 1
    return (head + stream)[:BLOCK]


def write(args) -> int:
    stop = False

    def on_term(_sig, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    fd = os.open(args.dev, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
    order = list(range(args.blocks))
    random.Random(args.seed).shuffle(order)
    written = 0
    with open(args.log, "a", buffering=1) as log:
        log.write(f"# seed {args.seed} blocks {args.blocks} sync_every {args.sync_every}\n")
        for block in order:
            if stop:
                break
            buf.seek(0)
            buf.write(pattern(args.seed, block))
            while not stop:
                try:
                    os.pwrite(fd, buf, block * BLOCK)
                    break
                except OSError as e:
                    print(f"write of block {block} failed ({e}); retrying", file=sys.stderr)
                    time.sleep(0.5)
            else:
                break
            log.write(f"W {block}\n")
            written += 1
            if args.sync_every and written % args.sync_every == 0:
                while not stop:
                    try:
                        os.fsync(fd)
                        log.write(f"S {written}\n")
                        break
                    except OSError as e:
                        print(f"fsync failed ({e}); retrying", file=sys.stderr)
                        time.sleep(0.5)
    os.close(fd)
    print(f"ack-writer: {written} blocks acknowledged", file=sys.stderr)
    return 0


def verify(args) -> int:
    seed = None
    sync_every = 0
    writes = []
    durable = None
    with open(args.log) as log:
        for line in log:
            parts = line.split()
            if line.startswith("#"):
                seed, sync_every = int(parts[2]), int(parts[6])
            elif parts and parts[0] == "W":
                writes.append(int(parts[1]))
            elif parts and parts[0] == "S":
                durable = int(parts[1])
    if seed is None:
        print("ack-writer verify: the log has no header", file=sys.stderr)
        return 1
    must_hold = writes if not sync_every else writes[: durable or 0]
    fd = os.open(args.dev, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, BLOCK)
    bad = 0
    for block in must_hold:
        os.preadv(fd, [buf], block * BLOCK)
        if bytes(buf) != pattern(seed, block):
            bad += 1
            print(f"block {block}: content differs from what was acknowledged")
    os.close(fd)
    print(f"ack-writer verify: {len(must_hold)} durable blocks checked "
          f"({len(writes)} acknowledged), {bad} bad")
    return 1 if bad or not must_hold else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("dev")
    w.add_argument("log")
    w.add_argument("--sync-every", type=int, default=0)
    w.add_argument("--blocks", type=int, default=16384)
    w.add_argument("--seed", type=int, default=int(time.time()))
    v = sub.add_parser("verify")
    v.add_argument("dev")
    v.add_argument("log")
    args = p.parse_args()
    return write(args) if args.cmd == "write" else verify(args)


if __name__ == "__main__":
    sys.exit(main())
