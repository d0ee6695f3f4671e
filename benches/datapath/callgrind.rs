//! Instructions per command, counted by `valgrind --tool=callgrind`: the benchmark runs itself
//! under callgrind twice, with 0 and with COUNT commands of a workload (`--callgrind`), one
//! output file per thread. Over TCP and NVMe/TCP, thread 1 is the main thread, which is the initiator; every
//! other thread is the target. In the pair both sides share the main thread, so callgrind counts
//! only inside the pair's `Wire::send` (`--toggle-collect`), which is where the target runs; in the
//! iSER bench likewise inside `IserBench::target_side`. The
//! difference between the two runs divided by COUNT is the cost of one command, without start-up,
//! login, filling the LUN or shutdown.
//!
//! glibc copies large blocks with `rep movsb`, which valgrind counts as one instruction per byte;
//! the runs raise glibc's thresholds for it (and `rep stosb`) so copies execute, and count, as the
//! vector loops they are on CPUs without fast string instructions.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Fabric;

/// The function callgrind counts in, in the pair: the target's side of every exchange.
const PAIR_TARGET: &str = "*PairTarget as *Wire>::send";
/// The same in the iSER bench: the target's part of every command.
const ISER_TARGET: &str = "*IserBench::target_side";

/// glibc tunables that keep memcpy and memset in vector loops at every size.
const NO_REP_STRINGS: &str =
    "glibc.cpu.x86_rep_movsb_threshold=1099511627776:glibc.cpu.x86_rep_stosb_threshold=1099511627776";

/// Instructions executed, per side, in one callgrind run.
#[derive(Debug, Default, Clone, Copy)]
struct Instructions {
    initiator: u64,
    target: u64,
}

/// Runs `datapath --callgrind WORKLOAD COUNT FABRIC` under callgrind (COUNT = 0 and `count`) and
/// prints instructions per command. Exits non-zero when valgrind is missing or a run fails.
pub fn report(fabric: Fabric, workload: &str, count: u64) {
    if count == 0 {
        eprintln!("--callgrind-report needs a command count above 0");
        std::process::exit(2);
    }
    let dir = std::env::temp_dir().join(format!("datapath-callgrind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a directory for callgrind's output");
    let base = run(&dir, fabric, workload, 0);
    let full = run(&dir, fabric, workload, count);
    let _ = std::fs::remove_dir_all(&dir);
    let per_command = |a: u64, b: u64| (a as f64 - b as f64) / count as f64;
    let over = match fabric {
        Fabric::Pair => "the pair",
        Fabric::Tcp => "TCP",
        Fabric::Nvme => "NVMe/TCP",
        Fabric::Iser => "iSER (in process)",
    };
    println!("callgrind, {workload} at queue depth 1 over {over}, {count} commands:");
    println!(
        "  target    {:>10.0} instructions per command ({} in the run, {} without commands)",
        per_command(full.target, base.target),
        full.target,
        base.target
    );
    if !fabric.in_process() {
        println!(
            "  initiator {:>10.0} instructions per command",
            per_command(full.initiator, base.initiator)
        );
    }
}

/// One callgrind run of `count` commands; the instructions of each side (in the pair, only the
/// target's are counted).
fn run(dir: &Path, fabric: Fabric, workload: &str, count: u64) -> Instructions {
    let exe = std::env::current_exe().expect("path of this benchmark");
    let prefix = dir.join(format!("callgrind.{count}"));
    let mut command = Command::new("valgrind");
    command
        .env("GLIBC_TUNABLES", NO_REP_STRINGS)
        // valgrind does not return from an io_uring_enter waiting for completions: the engine
        // threads wait in poll(2) on their rings instead.
        .env("ISER_TARGET_RING_SLEEP", "poll")
        .arg("--tool=callgrind")
        .arg("--separate-threads=yes")
        .arg(format!("--callgrind-out-file={}", prefix.display()))
        .arg("--quiet");
    let fabric_arg = match fabric {
        Fabric::Pair => {
            command.arg(format!("--toggle-collect={PAIR_TARGET}"));
            "pair"
        }
        Fabric::Iser => {
            command.arg(format!("--toggle-collect={ISER_TARGET}"));
            "iser"
        }
        Fabric::Tcp => "tcp",
        Fabric::Nvme => "nvme",
    };
    let status = command
        .arg(&exe)
        .args(["--callgrind", workload, &count.to_string(), fabric_arg])
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("valgrind --tool=callgrind {} failed: {s}", exe.display());
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("cannot run valgrind ({e}); install it: apt-get install valgrind");
            std::process::exit(1);
        }
    }
    let mut sum = Instructions::default();
    for (thread, path) in thread_files(&prefix, fabric) {
        let instructions = totals(&path);
        if thread == 1 && !fabric.in_process() {
            sum.initiator += instructions;
        } else {
            sum.target += instructions;
        }
    }
    sum
}

/// The per-thread output files of a run: `PREFIX-NN`, NN the valgrind thread number.
fn thread_files(prefix: &Path, fabric: Fabric) -> Vec<(u32, PathBuf)> {
    let name = prefix
        .file_name()
        .and_then(|n| n.to_str())
        .expect("prefix has a name")
        .to_string();
    let dir = prefix.parent().expect("prefix has a directory");
    let files: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .expect("read callgrind's output directory")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let thread = path
                .file_name()?
                .to_str()?
                .strip_prefix(&name)?
                .strip_prefix('-')?
                .parse()
                .ok()?;
            Some((thread, path))
        })
        .collect();
    assert!(
        files.iter().any(|(t, _)| *t == 1) && (fabric.in_process() || files.len() > 1),
        "callgrind wrote no per-thread files for {}",
        prefix.display()
    );
    files
}

/// The `totals:` (instructions executed) of one callgrind output file.
fn totals(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).expect("read a callgrind output file");
    text.lines()
        .find_map(|line| line.strip_prefix("totals:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no totals in {}", path.display()))
}
