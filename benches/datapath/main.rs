//! The data path, measured in process: `cargo bench --bench datapath`.
//!
//! One initiator ([`initiator`]) drives 4 KiB and 128 KiB READ(10) and WRITE(10) at queue depth 1
//! and 32 through two fabrics:
//! - `pair`: the sans-IO core, SCSI layer and RAM backend in this thread, every PDU crossing
//!   `framing::encode` and `PduReader` ([`pair`]);
//! - `tcp`: the real `Server` on 127.0.0.1 with a RAM LUN, over a TCP connection ([`loopback`]);
//! - `nvme`: the same over NVMe/TCP, queue depth 1 only, driven by the whole-binary tests' NVMe/TCP
//!   host ([`nvme`]);
//! - `iser`: the sans-IO iSER connection, SCSI layer and RAM backend in this thread with a stand-in
//!   for the RDMA fabric, queue depth 1 only ([`iser`]).
//!
//! Per command it prints wall time, allocations (count and bytes) and payload bytes copied in user
//! space, the last two for the target side only: in the pair and iSER, what the target's code did in this
//! thread; over TCP and NVMe/TCP, the whole process minus this (initiator) thread. Figures are medians of
//! several runs after a warm-up. See docs/benchmarks.md.
//!
//! Usage: `datapath [--runs N] [--scale X] [FILTER...]` (a case runs when its name contains every
//! FILTER); `datapath --callgrind WORKLOAD COUNT [tcp|pair]` runs exactly COUNT commands of
//! WORKLOAD (`4k-read`, `128k-write`, ...) at queue depth 1 over TCP, NVMe/TCP or the pair, for
//! `valgrind --tool=callgrind`; `datapath --callgrind-report WORKLOAD COUNT [tcp|pair|nvme]` runs that
//! under callgrind itself and prints instructions per command.

mod callgrind;
mod initiator;
mod iser;
mod loopback;
mod nvme;
mod pair;

use std::sync::Arc;
use std::time::Instant;

use iser_target::config::Config;
use iser_target::stats::{global_payload_copies, thread_payload_copies, CopyCounts};
use mem_ffi::{AllocCounts, CountingAllocator};

use initiator::{Initiator, Op, Wire};
use iser::IserBench;
use loopback::TcpWire;
use nvme::NvmeBench;
use pair::PairTarget;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

/// The benchmark target's name.
const TARGET: &str = "iqn.2026-11.io.iser-target:bench";

/// One RAM LUN as large as the region the commands cycle through, default limits. The port is
/// replaced by one the OS picks.
fn config() -> Config {
    let yaml = format!(
        "portals:\n  - address: 127.0.0.1\n    port: 3260\n    transport: tcp\n\
         targets:\n  - name: {TARGET}\n    luns:\n      - id: 0\n        \
         backing: {{ type: ram, size: {} }}\n",
        initiator::REGION
    );
    Config::from_yaml_str(&yaml).expect("benchmark configuration")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fabric {
    Pair,
    Tcp,
    Nvme,
    Iser,
}

impl Fabric {
    /// Both sides run in this thread (callgrind counts only inside the target's function).
    fn in_process(self) -> bool {
        matches!(self, Fabric::Pair | Fabric::Iser)
    }
}

/// One measured workload.
#[derive(Debug, Clone, Copy)]
struct Case {
    fabric: Fabric,
    op: Op,
    len: usize,
    queue_depth: usize,
}

impl Case {
    fn name(&self) -> String {
        let fabric = match self.fabric {
            Fabric::Pair => "pair",
            Fabric::Tcp => "tcp",
            Fabric::Nvme => "nvme",
            Fabric::Iser => "iser",
        };
        format!(
            "{fabric} {} qd{}",
            workload_name(self.op, self.len),
            self.queue_depth
        )
    }

    /// Commands per run: enough for a few hundred milliseconds on one core.
    fn commands(&self, scale: f64) -> u64 {
        let base = match (self.fabric, self.len <= 4096) {
            (Fabric::Pair | Fabric::Iser, true) => 20_000.0,
            (Fabric::Pair | Fabric::Iser, false) => 2_000.0,
            (Fabric::Tcp | Fabric::Nvme, true) => 5_000.0,
            (Fabric::Tcp | Fabric::Nvme, false) => 1_000.0,
        };
        ((base * scale) as u64).max(10)
    }
}

fn workload_name(op: Op, len: usize) -> String {
    let op = match op {
        Op::Read => "read",
        Op::Write => "write",
    };
    format!("{}k-{op}", len >> 10)
}

/// [`measure`] for iSER: warms up (checking READ data), then `runs` runs of `commands` commands.
fn measure_iser(bench: &mut IserBench, case: &Case, runs: usize, commands: u64) -> Vec<Figures> {
    let reading = |bench: &IserBench| Reading {
        target_time_ns: Some(bench.cost.time.as_nanos() as f64),
        allocations: bench.cost.allocations,
        copies: bench.cost.copies,
    };
    bench.set_verify(true);
    bench.run(case.op, case.len, (commands / 4).max(64));
    bench.set_verify(false);
    (0..runs)
        .map(|_| {
            let before = reading(bench);
            let started = Instant::now();
            bench.run(case.op, case.len, commands);
            let ns = started.elapsed().as_nanos() as f64;
            let after = reading(bench);
            let n = commands as f64;
            let allocations = after.allocations - before.allocations;
            let copies = after.copies - before.copies;
            Figures {
                ns: ns / n,
                target_ns: after
                    .target_time_ns
                    .zip(before.target_time_ns)
                    .map(|(a, b)| (a - b) / n),
                allocations: allocations.allocations as f64 / n,
                allocated_bytes: allocations.bytes as f64 / n,
                copies: copies.copies as f64 / n,
                copied_bytes: copies.bytes as f64 / n,
            }
        })
        .collect()
}

/// Parses `4k-read`, `128k-write`, ...: sizes that divide 128 KiB.
fn parse_workload(name: &str) -> Option<(Op, usize)> {
    let (size, op) = name.split_once("k-")?;
    let len = size.parse::<usize>().ok()? << 10;
    let op = match op {
        "read" => Op::Read,
        "write" => Op::Write,
        _ => return None,
    };
    (len > 0 && initiator::PATTERN % len == 0).then_some((op, len))
}

/// Target-side counters, cumulative; differences of two readings are what a run cost.
#[derive(Debug, Clone, Copy)]
struct Reading {
    /// Time spent in the target's code (the pair only: over TCP it runs on other threads).
    target_time_ns: Option<f64>,
    allocations: AllocCounts,
    copies: CopyCounts,
}

fn pair_reading(target: &PairTarget) -> Reading {
    Reading {
        target_time_ns: Some(target.cost.time.as_nanos() as f64),
        allocations: target.cost.allocations,
        copies: target.cost.copies,
    }
}

/// Everything the process did except this thread, which runs the initiator.
fn tcp_reading(_: &TcpWire) -> Reading {
    Reading {
        target_time_ns: None,
        allocations: CountingAllocator::global() - CountingAllocator::thread(),
        copies: global_payload_copies() - thread_payload_copies(),
    }
}

/// Per-command figures of one run.
#[derive(Debug, Clone, Copy)]
struct Figures {
    ns: f64,
    target_ns: Option<f64>,
    allocations: f64,
    allocated_bytes: f64,
    copies: f64,
    copied_bytes: f64,
}

/// Warms up, then measures `runs` runs of the case on a logged-in session.
fn measure<W: Wire>(
    wire: &mut W,
    initiator: &mut Initiator,
    case: &Case,
    runs: usize,
    commands: u64,
    reading: fn(&W) -> Reading,
) -> Vec<Figures> {
    initiator.set_verify(true);
    initiator.run(
        wire,
        case.op,
        case.len,
        case.queue_depth,
        (commands / 4).max(64),
    );
    initiator.set_verify(false);
    (0..runs)
        .map(|_| {
            let before = reading(wire);
            let started = Instant::now();
            initiator.run(wire, case.op, case.len, case.queue_depth, commands);
            let ns = started.elapsed().as_nanos() as f64;
            let after = reading(wire);
            let n = commands as f64;
            let allocations = after.allocations - before.allocations;
            let copies = after.copies - before.copies;
            Figures {
                ns: ns / n,
                target_ns: after
                    .target_time_ns
                    .zip(before.target_time_ns)
                    .map(|(a, b)| (a - b) / n),
                allocations: allocations.allocations as f64 / n,
                allocated_bytes: allocations.bytes as f64 / n,
                copies: copies.copies as f64 / n,
                copied_bytes: copies.bytes as f64 / n,
            }
        })
        .collect()
}

/// [`measure`] for NVMe/TCP: warms up, then `runs` runs of `commands` commands.
fn measure_nvme(bench: &mut NvmeBench, case: &Case, runs: usize, commands: u64) -> Vec<Figures> {
    let reading = || Reading {
        target_time_ns: None,
        allocations: CountingAllocator::global() - CountingAllocator::thread(),
        copies: global_payload_copies() - thread_payload_copies(),
    };
    bench.run(case.op, case.len, (commands / 4).max(64));
    (0..runs)
        .map(|_| {
            let before = reading();
            let started = Instant::now();
            bench.run(case.op, case.len, commands);
            let ns = started.elapsed().as_nanos() as f64;
            let after = reading();
            let n = commands as f64;
            let allocations = after.allocations - before.allocations;
            let copies = after.copies - before.copies;
            Figures {
                ns: ns / n,
                target_ns: None,
                allocations: allocations.allocations as f64 / n,
                allocated_bytes: allocations.bytes as f64 / n,
                copies: copies.copies as f64 / n,
                copied_bytes: copies.bytes as f64 / n,
            }
        })
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn print_header(runs: usize) {
    println!(
        "datapath: per command, medians of {runs} runs; allocations and copies on the target side"
    );
    println!(
        "{:<24} {:>10} {:>10} {:>8} {:>12} {:>8} {:>13} {:>8}",
        "case", "ns", "target ns", "allocs", "alloc bytes", "copies", "copied bytes", "payload×"
    );
}

fn print_case(case: &Case, runs: &[Figures]) {
    let of = |f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
    let target_ns = runs
        .iter()
        .map(|r| r.target_ns)
        .collect::<Option<Vec<f64>>>()
        .map_or_else(|| "-".to_string(), |v| format!("{:.0}", median(v)));
    let copied = of(|r| r.copied_bytes);
    println!(
        "{:<24} {:>10.0} {:>10} {:>8.1} {:>12.0} {:>8.1} {:>13.0} {:>8.2}",
        case.name(),
        of(|r| r.ns),
        target_ns,
        of(|r| r.allocations),
        of(|r| r.allocated_bytes),
        of(|r| r.copies),
        copied,
        copied / case.len as f64
    );
}

/// Command-line options of a normal run.
struct Options {
    runs: usize,
    scale: f64,
    filters: Vec<String>,
}

fn cases() -> Vec<Case> {
    let mut all = Vec::new();
    for fabric in [Fabric::Pair, Fabric::Tcp, Fabric::Nvme, Fabric::Iser] {
        for len in [4 << 10, 128 << 10] {
            for op in [Op::Read, Op::Write] {
                for queue_depth in [1, 32] {
                    // The NVMe/TCP host and the iSER bench run one command at a time.
                    if matches!(fabric, Fabric::Nvme | Fabric::Iser) && queue_depth > 1 {
                        continue;
                    }
                    all.push(Case {
                        fabric,
                        op,
                        len,
                        queue_depth,
                    });
                }
            }
        }
    }
    all
}

fn run_benchmarks(options: &Options) {
    let selected: Vec<Case> = cases()
        .into_iter()
        .filter(|c| {
            options
                .filters
                .iter()
                .all(|f| c.name().contains(f.as_str()))
        })
        .collect();
    if selected.is_empty() {
        eprintln!("no case matches {:?}", options.filters);
        std::process::exit(2);
    }
    print_header(options.runs);
    let config = config();
    let pair_cases: Vec<&Case> = selected
        .iter()
        .filter(|c| c.fabric == Fabric::Pair)
        .collect();
    if !pair_cases.is_empty() {
        let core = Arc::new(iser_target::server::tcp_core_config(&config));
        let scsi = iser_target::server::build_scsi_targets(&config)
            .expect("RAM LUN")
            .remove(0);
        let mut target = PairTarget::new(core, scsi);
        let mut initiator = Initiator::login(&mut target, TARGET);
        initiator.fill_region(&mut target);
        for case in pair_cases {
            let commands = case.commands(options.scale);
            let runs = measure(
                &mut target,
                &mut initiator,
                case,
                options.runs,
                commands,
                pair_reading,
            );
            print_case(case, &runs);
        }
        initiator.logout(&mut target);
    }
    let tcp_cases: Vec<&Case> = selected
        .iter()
        .filter(|c| c.fabric == Fabric::Tcp)
        .collect();
    if !tcp_cases.is_empty() {
        let server = loopback::start_server(config.clone());
        let mut wire = TcpWire::connect(&server);
        let mut initiator = Initiator::login(&mut wire, TARGET);
        initiator.fill_region(&mut wire);
        for case in tcp_cases {
            let commands = case.commands(options.scale);
            let runs = measure(
                &mut wire,
                &mut initiator,
                case,
                options.runs,
                commands,
                tcp_reading,
            );
            print_case(case, &runs);
        }
        initiator.logout(&mut wire);
        server.shutdown().expect("clean shutdown");
    }
    let nvme_cases: Vec<&Case> = selected
        .iter()
        .filter(|c| c.fabric == Fabric::Nvme)
        .collect();
    if !nvme_cases.is_empty() {
        let mut bench = NvmeBench::start();
        for case in nvme_cases {
            let runs = measure_nvme(&mut bench, case, options.runs, case.commands(options.scale));
            print_case(case, &runs);
        }
        bench.shutdown();
    }
    let iser_cases: Vec<&Case> = selected
        .iter()
        .filter(|c| c.fabric == Fabric::Iser)
        .collect();
    if !iser_cases.is_empty() {
        let mut bench = iser_bench(&config);
        for case in iser_cases {
            let runs = measure_iser(&mut bench, case, options.runs, case.commands(options.scale));
            print_case(case, &runs);
        }
    }
}

/// A logged-in iSER connection on the benchmark's RAM LUN, configured as an iSER portal.
fn iser_bench(config: &Config) -> IserBench {
    let core = Arc::new(iser_target::server::iser_core_config(config));
    let scsi = iser_target::server::build_scsi_targets(config)
        .expect("RAM LUN")
        .remove(0);
    IserBench::login(core, scsi, TARGET)
}

/// Exactly `count` commands of one workload at queue depth 1 over `fabric`, after login and
/// filling the region: a repeatable instruction count under callgrind.
fn run_fixed(fabric: Fabric, op: Op, len: usize, count: u64) {
    let config = config();
    match fabric {
        Fabric::Pair => {
            let core = Arc::new(iser_target::server::tcp_core_config(&config));
            let scsi = iser_target::server::build_scsi_targets(&config)
                .expect("RAM LUN")
                .remove(0);
            let mut target = PairTarget::new(core, scsi);
            let mut initiator = Initiator::login(&mut target, TARGET);
            initiator.fill_region(&mut target);
            initiator.set_verify(false);
            initiator.run(&mut target, op, len, 1, count);
            initiator.logout(&mut target);
        }
        Fabric::Tcp => {
            let server = loopback::start_server(config);
            let mut wire = TcpWire::connect(&server);
            let mut initiator = Initiator::login(&mut wire, TARGET);
            initiator.fill_region(&mut wire);
            initiator.set_verify(false);
            initiator.run(&mut wire, op, len, 1, count);
            initiator.logout(&mut wire);
            server.shutdown().expect("clean shutdown");
        }
        Fabric::Nvme => {
            let mut bench = NvmeBench::start();
            bench.run(op, len, count);
            bench.shutdown();
        }
        Fabric::Iser => {
            let mut bench = iser_bench(&config);
            bench.set_verify(false);
            bench.run(op, len, count);
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: datapath [--runs N] [--scale X] [FILTER...]\n       \
         datapath --callgrind WORKLOAD COUNT [tcp|pair|nvme|iser]\n       \
         datapath --callgrind-report WORKLOAD COUNT [tcp|pair|nvme|iser]\n\
         WORKLOAD: 4k-read, 4k-write, 128k-read, 128k-write, ...; fabric tcp unless given"
    );
    std::process::exit(2)
}

/// `WORKLOAD COUNT [FABRIC]`, the rest of a `--callgrind` command line.
fn fixed_workload(mut args: impl Iterator<Item = String>) -> (Fabric, Op, usize, u64) {
    let Some((op, len)) = args.next().as_deref().and_then(parse_workload) else {
        usage()
    };
    let Some(count) = args.next().and_then(|c| c.parse().ok()) else {
        usage()
    };
    let fabric = match args.next().as_deref() {
        None | Some("tcp") => Fabric::Tcp,
        Some("pair") => Fabric::Pair,
        Some("nvme") => Fabric::Nvme,
        Some("iser") => Fabric::Iser,
        Some(_) => usage(),
    };
    if args.next().is_some() {
        usage()
    }
    (fabric, op, len, count)
}

fn main() {
    let mut options = Options {
        runs: 5,
        scale: 1.0,
        filters: Vec::new(),
    };
    // `cargo bench` passes --bench to harness-less benchmarks, after the arguments given to it
    // (so it also follows a `--callgrind` workload).
    let mut args = std::env::args().skip(1).filter(|arg| arg != "--bench");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => options.runs = n,
                _ => usage(),
            },
            "--scale" => match args.next().and_then(|n| n.parse().ok()) {
                Some(x) if x > 0.0 => options.scale = x,
                _ => usage(),
            },
            "--callgrind" => {
                let (fabric, op, len, count) = fixed_workload(args);
                run_fixed(fabric, op, len, count);
                return;
            }
            "--callgrind-report" => {
                let (fabric, op, len, count) = fixed_workload(args);
                callgrind::report(fabric, &workload_name(op, len), count);
                return;
            }
            filter if !filter.starts_with('-') => options.filters.push(filter.to_string()),
            _ => usage(),
        }
    }
    run_benchmarks(&options);
}
