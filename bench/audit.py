"""Batch audit benchmark: end-to-end resources/s and peak memory, beside the parse-only ceiling, in one run.

For each size (default 100k and 1M resources) it generates (once, cached in bench/out/) a synthetic Bulk Data
export, warms the page cache, measures the ceiling of merely reading and parsing the same files with orjson
(one process, and both cores), then runs `ccsvi-cds audit` end to end as a subprocess for each engine,
sampling the memory of the whole process tree (RSS summed, and PSS, which counts pages shared after fork
once). Machines here are shared, so each measurement is repeated (BENCH_AUDIT_REPEAT, default 3; Spark once)
and the best time is kept, for the ceiling and the audit alike; the ratio compares the two from one run.
Results go to stdout and bench/out/audit-results.json.

    make bench BENCH=audit
    BENCH_AUDIT_SIZES=100000 BENCH_AUDIT_ENGINES=embedded make bench BENCH=audit
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out"
SEED = 7
TARGET_RATE = 50_000
TARGET_RATIO = 0.30
TARGET_RSS = 1 << 30


def _export(n: int) -> Path:
    """The generated export for ``n`` resources (regenerated if the generator or its parameters changed)."""
    from bench.generate_export import generate

    d = OUT / f"audit-export-{n}"
    stamp = d / ".stamp"
    key = f"{n}:{SEED}:{(ROOT / 'generate_export.py').stat().st_mtime_ns}"
    if not stamp.exists() or stamp.read_text() != key:
        shutil.rmtree(d, ignore_errors=True)
        t = time.perf_counter()
        info = generate(d, n, seed=SEED)
        stamp.write_text(key)
        print(f"  generated {info['resources']:,} resources in {time.perf_counter() - t:.1f} s -> {d}", flush=True)
    return d


def _files(export: Path) -> list[Path]:
    manifest = orjson.loads((export / "manifest.json").read_bytes())
    return [export / Path(o["url"]).name for o in manifest["output"]]


def _parse_file(path: Path) -> int:
    n = 0
    loads = orjson.loads
    with open(path, "rb") as fh:
        for line in fh:
            loads(line)
            n += 1
    return n


def parse_ceiling(export: Path, processes: int = 1) -> tuple[int, float]:
    """Read and orjson-parse every line of the export's files: nothing else. Returns (resources, seconds)."""
    files = _files(export)
    t = time.perf_counter() if processes > 1 else time.process_time()
    if processes == 1:
        n = sum(_parse_file(p) for p in files)
    else:
        with ProcessPoolExecutor(processes) as pool:  # whole files, largest first, to balance the cores
            n = sum(pool.map(_parse_file, sorted(files, key=lambda p: -p.stat().st_size)))
        return n, time.perf_counter() - t
    return n, time.process_time() - t  # one process: its CPU time is its wall time on an idle core


TICK = os.sysconf("SC_CLK_TCK")


def _tree(root: int) -> dict[int, float]:
    """The process ``root`` and its descendants, each with its own CPU seconds so far (utime + stime)."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    stat = fh.read()
                fields = stat[stat.rindex(b")") + 2:].split()
                children.setdefault(int(fields[1]), []).append(int(entry))
                cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / TICK
            except (OSError, ValueError, IndexError):
                continue
    out: dict[int, float] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        out[pid] = cpu.get(pid, 0.0)
        todo.extend(children.get(pid, ()))
    return out


def _mem(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


class TreeSampler(threading.Thread):
    """Peak memory of a process and all its descendants (workers, Spark's JVM and Python workers)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        self.cpu: dict[int, float] = {}  # last CPU seconds seen per process (Spark's JVM is not waited for)
        self.done = threading.Event()

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())

    def run(self) -> None:
        while not self.done.is_set():
            rss = pss = 0
            for p, c in _tree(self.pid).items():
                self.cpu[p] = max(self.cpu.get(p, 0.0), c)
                r, s = _mem(p)
                rss += r
                pss += s
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.done.wait(self.interval)


def run_audit(export: Path, engine: str) -> dict[str, Any]:
    out = OUT / f"audit-result-{export.name}-{engine}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "ccsvi_cds", "audit", str(export), "--out", str(out), "--engine", engine]
    if engine == "spark":
        cmd += ["--spark-master", "local[2]", "--spark-conf", "spark.ui.enabled=false",
                "--spark-conf", "spark.driver.memory=1g"]
    t = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    _, stderr = proc.communicate()
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the audit and every process it waited for
    sampler.done.set()
    sampler.join()
    # Waited-for children are counted exactly by rusage; processes nobody waits for (Spark's JVM) only by
    # the sampler (to within its 0.1 s interval).
    cpu = max((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), sampler.cpu_seconds)
    if proc.returncode != 0:
        raise RuntimeError(f"audit failed ({engine}): {stderr.decode()[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"engine": engine, "seconds": wall, "cpu_seconds": cpu, "resources": summary["read"]["total"],
            "rate": summary["read"]["total"] / wall, "peak_rss": sampler.peak_rss, "peak_pss": sampler.peak_pss,
            "findings": summary["findings"]["total"], "evaluated": summary["serviceRequestsEvaluated"],
            "findings_sha256": summary["outputs"]["findings.ndjson"]}


def _spark_available() -> bool:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return False
    return shutil.which("java") is not None


def main() -> None:
    sizes = [int(s) for s in os.environ.get("BENCH_AUDIT_SIZES", "100000,1000000").split(",") if s]
    engines = [e for e in os.environ.get("BENCH_AUDIT_ENGINES", "embedded,spark").split(",") if e]
    repeat = max(1, int(os.environ.get("BENCH_AUDIT_REPEAT", "3")))
    if "spark" in engines and not _spark_available():
        print("  spark: skipped (needs pyspark and java)")
        engines.remove("spark")
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"  machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    results: list[dict[str, Any]] = []
    for n in sizes:
        export = _export(n)
        parse_ceiling(export)  # warm the page cache: every run below reads from memory alike
        count, secs = min((parse_ceiling(export, 1) for _ in range(repeat)), key=lambda r: r[1])
        _, secs2 = min((parse_ceiling(export, 2) for _ in range(repeat)), key=lambda r: r[1])
        ceiling, ceiling2 = count / secs, count / secs2
        size_mb = sum(p.stat().st_size for p in _files(export)) / 1e6
        print(f"  {count:,} resources ({size_mb:,.0f} MB): parse-only ceiling {ceiling:,.0f}/s (1 process), "
              f"{ceiling2:,.0f}/s (2 processes)", flush=True)
        for engine in engines:
            runs = [run_audit(export, engine) for _ in range(repeat if engine == "embedded" else 1)]
            r = min(runs, key=lambda x: x["seconds"])
            r["peak_rss"] = max(x["peak_rss"] for x in runs)
            r["peak_pss"] = max(x["peak_pss"] for x in runs)
            r["all_seconds"] = [round(x["seconds"], 2) for x in runs]
            r["cpu_seconds"] = min(x["cpu_seconds"] for x in runs)
            r.update(size=n, ceiling_1p=ceiling, ceiling_2p=ceiling2, ratio_1p=r["rate"] / ceiling,
                     ratio_2p=r["rate"] / ceiling2,
                     # CPU lens, robust to other work on a shared machine: the parse-only loop costs
                     # 1/ceiling CPU-s per resource; the audit costs cpu_seconds/resources.
                     cpu_us_per_resource=r["cpu_seconds"] / r["resources"] * 1e6,
                     ratio_cpu_2cores=(r["resources"] / (r["cpu_seconds"] / 2)) / ceiling)
            results.append(r)
            ok = r["rate"] >= TARGET_RATE and r["ratio_1p"] >= TARGET_RATIO and r["peak_rss"] < TARGET_RSS
            print(f"  {engine:9s} {r['seconds']:7.1f} s  {r['rate']:>9,.0f} resources/s  "
                  f"= {r['ratio_1p']:.0%} of the 1-process ceiling ({r['ratio_2p']:.0%} of 2-process)  "
                  f"peak RSS {r['peak_rss'] / 2**20:,.0f} MiB (PSS {r['peak_pss'] / 2**20:,.0f} MiB)  "
                  f"{r['evaluated']:,} orders, {r['findings']} findings; runs {r['all_seconds']} s"
                  # the targets are set for the 1M-resource export on 2 cores
                  + (f"  [{'meets' if ok else 'MISSES'} targets]" if engine == "embedded" and n >= 1_000_000
                     else ""), flush=True)
            print(f"  {'':9s} CPU {r['cpu_seconds']:.1f} s in all = {r['cpu_us_per_resource']:.1f} us/resource "
                  f"(parse-only {1e6 / ceiling:.1f} us); with 2 cores to itself: {r['ratio_cpu_2cores']:.0%} "
                  f"of the ceiling", flush=True)
    by = {(r["engine"], r["size"]): r for r in results}
    for engine in engines:
        runs = sorted((s, by[(engine, s)]) for s in sizes if (engine, s) in by)
        if len(runs) > 1:
            (s0, r0), (s1, r1) = runs[0], runs[-1]
            print(f"  scaling {engine}: {s0:,} -> {s1:,} resources: throughput x{r1['rate'] / r0['rate']:.2f}, "
                  f"peak RSS x{r1['peak_rss'] / max(r0['peak_rss'], 1):.2f}")
    for s in sizes:
        if ("embedded", s) in by and ("spark", s) in by:
            same = by[("embedded", s)]["findings_sha256"] == by[("spark", s)]["findings_sha256"]
            print(f"  {s:,}: findings.ndjson identical across engines: {same}")
    (OUT / "audit-results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
