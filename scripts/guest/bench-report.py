#!/usr/bin/env python3
"""The report of a scripts/guest/bench.sh run: figures, the markdown table, PNG charts.

    bench-report.py RESULTS [--charts DIR] [--update FILE]

RESULTS is the run's result directory (what softroce-vm.sh names; the guest writes runs.tsv,
fio/ and meta.json there). Writes RESULTS/bench.tsv (every run's figures) and prints the table.
--charts DIR draws one PNG per metric into DIR (python3-matplotlib): the fabrics side by side,
one bar per target, the median with the rounds' range. --update FILE replaces what stands
between the markers <!-- bench-table:begin --> and <!-- bench-table:end --> in FILE with the
table and, with --charts, links to the charts (relative to FILE).

Medians over the rounds. "vs best" is ours / the better reference of the fabric for IOPS and
MiB/s, the better reference's latency / ours for latency: above 1 ours is better.
"""
import argparse
import json
import os
import statistics
import sys

FABRICS = [("iser", "iSER"), ("tcp", "iSCSI/TCP"), ("nvme", "NVMe/TCP")]
REFERENCES = {"iser": ["lio", "tgt"], "tcp": ["lio", "tgt"], "nvme": ["nvmet"]}
TARGET_NAMES = {"ours": "ours", "lio": "LIO", "tgt": "tgt", "nvmet": "nvmet-tcp"}
ALL_TARGETS = ["ours", "lio", "tgt", "nvmet"]
# (file stem, row label, workload, figure, unit, lower is better)
METRICS = [
    ("qd1-latency", "4 KiB rand read QD1, mean latency", "randread-4k-qd1", "lat", "µs", True),
    ("qd1-p99", "4 KiB rand read QD1, p99 latency", "randread-4k-qd1", "p99", "µs", True),
    ("randread-qd32", "4 KiB rand read QD32", "randread-4k-qd32", "iops", "IOPS", False),
    ("randwrite-qd32", "4 KiB rand write QD32", "randwrite-4k-qd32", "iops", "IOPS", False),
    ("read-128k", "128 KiB seq read QD8", "read-128k-qd8", "mib", "MiB/s", False),
    ("write-128k", "128 KiB seq write QD8", "write-128k-qd8", "mib", "MiB/s", False),
]
BEGIN, END = "<!-- bench-table:begin -->", "<!-- bench-table:end -->"


def load(results, meta):
    """Every run's figures, keyed by (target, fabric, workload); writes bench.tsv."""
    hz, runtime, cpus = float(meta["hz"]), float(meta["runtime"]), int(meta["cpus"])
    runs, busy_shares = {}, []
    with open(os.path.join(results, "bench.tsv"), "w") as out:
        out.write("round\ttarget\tfabric\tworkload\tiops\tmib_s\tlat_mean_us\tlat_p99_us\tios\t"
                  "busy_jiffies\tcpu_us_per_io\n")
        for row in open(os.path.join(results, "runs.tsv")):
            rnd, target, fabric, workload, busy, name = row.rstrip("\n").split("\t")
            job = json.load(open(os.path.join(results, "fio", name)))["jobs"][0]
            r, w = job["read"], job["write"]
            d = r if r["total_ios"] else w
            ios = r["total_ios"] + w["total_ios"]
            run = dict(iops=r["iops"] + w["iops"], mib=(r["bw_bytes"] + w["bw_bytes"]) / 2**20,
                       lat=d["lat_ns"]["mean"] / 1000,
                       p99=d["lat_ns"].get("percentile", {}).get("99.000000", 0) / 1000,
                       cpu=float(busy) * 1e6 / hz / max(ios, 1))
            busy_shares.append(float(busy) / (runtime * hz * cpus))
            runs.setdefault((target, fabric, workload), []).append(run)
            out.write(f"{rnd}\t{target}\t{fabric}\t{workload}\t{run['iops']:.0f}\t{run['mib']:.1f}\t"
                      f"{run['lat']:.1f}\t{run['p99']:.0f}\t{ios}\t{busy}\t{run['cpu']:.0f}\n")
    return runs, busy_shares


def med(runs, t, f, w, key):
    """Median of one figure over the rounds, None when that target/fabric was not measured."""
    got = runs.get((t, f, w))
    return statistics.median(r[key] for r in got) if got else None


def table(runs, busy_shares, meta):
    fabrics = [(f, label) for f, label in FABRICS if any(k[1] == f for k in runs)]
    targets = [t for t in ALL_TARGETS if any(k[0] == t for k in runs)]
    lines = [
        f"SoftRoCE guest (TCG), kernel {meta['kernel']}, commit {meta['commit']}, tgt {meta['tgt']}, "
        f"nvme-cli {meta.get('nvme_cli', 'unknown')}; one 256 MiB tmpfs file behind every target, "
        f"write cache on; fio libaio O_DIRECT, medians of {meta['repeats']} rounds of "
        f"{meta['runtime']} s. Idle guest with the targets up: {meta['idle_pct']}% of one CPU; "
        f"during the runs the guest's {meta['cpus']} CPUs were busy "
        f"{statistics.median(busy_shares):.0%} of the time (median): near 100 % the guest is "
        f"saturated and CPU/IO only restates the throughput.",
        "",
        "**vs best**: ours ÷ the better reference of the fabric (LIO or tgt for iSER and iSCSI/TCP, "
        "nvmet-tcp for NVMe/TCP) for IOPS and MiB/s, the better (lower) latency ÷ ours for "
        "latency, so > 1 means ours is better. **CPU/IO**: guest CPU µs per I/O, all CPUs, "
        "initiator included.",
        "",
        "| workload | fabric | " + " | ".join(TARGET_NAMES[t] for t in targets) + " | vs best | "
        + " | ".join(f"CPU/IO {TARGET_NAMES[t]}" for t in targets) + " |",
        "|---|---|" + "---:|" * (2 * len(targets) + 1),
    ]
    for _, label, w, key, unit, lower_better in METRICS:
        for f, flabel in fabrics:
            vals = {t: med(runs, t, f, w, key) for t in targets}
            refs = [vals[t] for t in REFERENCES[f] if vals.get(t) is not None]
            o = vals.get("ours")
            if o and refs:
                ratio = f"{(min(refs) / o if lower_better else o / max(refs)):.2f}"
            else:
                ratio = "–"
            cells = [f"{v:.0f} {unit}" if v is not None else "–" for v in vals.values()]
            cpus = [med(runs, t, f, w, "cpu") for t in targets]
            cpu_cells = [f"{c:.0f}" if c is not None else "–" for c in cpus]
            lines.append(f"| {label} | {flabel} | " + " | ".join(cells) + f" | {ratio} | "
                         + " | ".join(cpu_cells) + " |")
    return "\n".join(lines) + "\n"


def charts(runs, out_dir):
    """One PNG per metric; returns [(stem, title)]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    fabrics = [(f, label) for f, label in FABRICS if any(k[1] == f for k in runs)]
    targets = [t for t in ALL_TARGETS if any(k[0] == t for k in runs)]
    colors = {"ours": "#1f77b4", "lio": "#ff7f0e", "tgt": "#2ca02c", "nvmet": "#d62728"}
    made = []
    for stem, label, w, key, unit, lower_better in METRICS:
        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
        labelled = set()
        for j, (f, _) in enumerate(fabrics):
            present = [t for t in targets if runs.get((t, f, w))]
            width = 0.8 / max(len(present), 1)
            for i, t in enumerate(present):
                vals = [r[key] for r in runs[(t, f, w)]]
                m = statistics.median(vals)
                ax.bar(j + (i - (len(present) - 1) / 2) * width, m, width,
                       yerr=[[m - min(vals)], [max(vals) - m]], capsize=3, color=colors[t],
                       label=None if t in labelled else TARGET_NAMES[t])
                labelled.add(t)
        ax.set_xticks(range(len(fabrics)))
        ax.set_xticklabels([label for _, label in fabrics])
        better = "lower is better" if lower_better else "higher is better"
        ax.set_ylabel(unit)
        ax.set_title(f"{label} ({better}; bars: median, whiskers: range of the rounds)",
                     fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, f"{stem}.png"))
        plt.close(fig)
        made.append((stem, label))
    return made


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results")
    ap.add_argument("--charts", metavar="DIR")
    ap.add_argument("--update", metavar="FILE")
    a = ap.parse_args()
    meta = json.load(open(os.path.join(a.results, "meta.json")))
    runs, busy = load(a.results, meta)
    text = table(runs, busy, meta)
    made = charts(runs, a.charts) if a.charts else []
    if a.update:
        doc = open(a.update).read()
        if BEGIN not in doc or END not in doc:
            sys.exit(f"{a.update}: no {BEGIN} ... {END} markers")
        rel = os.path.relpath(a.charts, os.path.dirname(os.path.abspath(a.update))) if made else ""
        pics = "".join(f"![{label}]({rel}/{stem}.png)\n" for stem, label in made)
        body = text + ("\n" + pics if pics else "")
        head, rest = doc.split(BEGIN, 1)
        doc = head + BEGIN + "\n" + body + END + rest.split(END, 1)[1]
        open(a.update, "w").write(doc)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
