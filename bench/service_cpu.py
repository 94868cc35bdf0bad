"""Server CPU per hook call: the service beside the floor of any uvicorn + Starlette endpoint, in one run.

Two servers are started here, each one process: (a) the floor, bench/_floor_app.py under uvicorn (reads the
same request body, parses it with orjson, answers the service's own response, encoded per request) and
(b) `ccsvi-cds serve --workers 1`. wrk drives each, unpaced, with 8 keep-alive connections for BENCH_SECONDS
(default 5, at most 60) per round, alternating floor and service for BENCH_ROUNDS rounds (default 3; the
median is reported, so a burst of load from elsewhere on the machine moves one round, not the figure); then
one connection (sequential requests) for the latency percentiles. CPU is the user + system time of the
server's process tree read from /proc before and after each wrk run. Also printed: the in-process
evaluation of the same request in a hot loop (once per round), and the load average before each run.

With BENCH_PROFILE=1 the service is also sampled by py-spy (dev extra) during one more 8-connection run,
and the top functions of its event-loop thread are printed (inclusive and self share of the samples).

Targets (issue 11, item 3): service CPU <= 0.35 ms per request, >= 2,800 requests/s on one worker with 8
connections, sequential p99 < 1 ms. Results: printed, and written to bench/out/service_cpu.json.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.service_load import LUA, OUT, ROOT, SIGN, Server, ServerProcess, ensure_wrk, request_body, wrk_run

RUN_S = min(int(os.environ.get("BENCH_SECONDS", "5")), 60)
ROUNDS = max(1, int(os.environ.get("BENCH_ROUNDS", "3")))
PROFILE = os.environ.get("BENCH_PROFILE", "") not in ("", "0")
CONNECTIONS = 8

TARGET_CPU_MS = 0.35
TARGET_RPS = 2800
TARGET_SEQ_P99_MS = 1.0


class Floor(ServerProcess):
    """bench/_floor_app.py under uvicorn: one process, httptools, the default (uv)loop, no access log."""

    def __init__(self, tmp: Path, answer: Path) -> None:
        env = {**os.environ, "BENCH_FLOOR_RESPONSE": str(answer)}
        cmd = [str(Path(sys.executable).parent / "uvicorn"), "bench._floor_app:app", "--workers", "1",
               "--no-access-log", "--log-level", "warning"]
        super().__init__(tmp, "floor", cmd, env, "/")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


class Evaluation:
    """The in-process evaluation of the request (records read + rules + cards) in a hot loop, measured in
    each round beside the servers: the machine's speed drifts between rounds when it is shared."""

    def __init__(self, body: bytes) -> None:
        from ccsvi_cds.evaluate import Evaluator
        from ccsvi_cds.rulepack import load_pack

        self._evaluator, self._request = Evaluator(load_pack(ROOT / "rules")), json.loads(body)
        self.measure(200)

    def measure(self, n: int = 1000) -> float:
        """CPU ms per call."""
        start = time.process_time()
        for _ in range(n):
            self._evaluator.evaluate_request(self._request)
        return (time.process_time() - start) / n * 1000


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median round by CPU per request, with every round's CPU and throughput beside it."""
    ranked = sorted(runs, key=lambda r: r["server_cpu_ms_per_request"])
    median = ranked[len(ranked) // 2]
    return {**median, "rounds_cpu_ms": [r["server_cpu_ms_per_request"] for r in runs],
            "rounds_rps": [r["achieved_rps"] for r in runs]}


def profile(wrk: str, server: Server, lua: Path, body_file: Path, tmp: Path) -> dict[str, Any] | None:
    """py-spy samples of the service's event-loop thread during one more 8-connection run."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        print("  profile: py-spy not found (pip install -e '.[dev]')", flush=True)
        return None
    raw = tmp / "spy.txt"
    sampler = subprocess.Popen([spy, "record", "--pid", str(server.proc.pid), "--duration", str(RUN_S),
                                "--rate", "250", "--function", "--threads", "--format", "raw", "--output", str(raw)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    wrk_run(wrk, server, lua, body_file, None, RUN_S)
    try:
        sampler.wait(timeout=RUN_S + 30)
    except subprocess.TimeoutExpired:
        sampler.kill()
    if not raw.exists():
        print("  profile: py-spy wrote nothing (ptrace not permitted?)", flush=True)
        return None
    return top_functions(raw.read_text())


def top_functions(raw: str, top: int = 25) -> dict[str, Any]:
    """Inclusive and self shares of the main thread's samples, by function (file name without folders)."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or "MainThread" not in frames[0]:
            continue
        names = [re.sub(r"\((?:[^()]*/)?([^/()]+)\)$", r"(\1)", f.strip()) for f in frames[1:]]
        if not names:
            continue
        total += int(count)
        own[names[-1]] += int(count)
        for name in set(names):
            inclusive[name] += int(count)
    share = {name: round(100 * n / total, 1) for name, n in inclusive.most_common()
             if n < 0.995 * total}  # below the frames every sample shares (uvicorn's run loop)
    share = dict(list(share.items())[:top * 2])
    own_share = {name: round(100 * n / total, 1) for name, n in own.most_common(top)} if total else {}
    return {"samples": total, "inclusive_pct": share, "self_pct": own_share}


def main() -> None:
    wrk = ensure_wrk()
    OUT.mkdir(parents=True, exist_ok=True)
    body = request_body()
    print(f"service_cpu: 1 worker, {os.cpu_count()} cores, request {len(body)} bytes, {CONNECTIONS} connections, "
          f"{RUN_S} s x {ROUNDS} rounds each; {uptime()}", flush=True)
    evaluation = Evaluation(body)
    evaluations: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ccsvi-bench-") as tmpdir:
        tmp = Path(tmpdir)
        lua = tmp / "load.lua"
        lua.write_text(LUA)
        body_file = tmp / "order-sign.json"
        body_file.write_bytes(body)
        service = Server(tmp, validation=False, workers=1)
        floor: Floor | None = None
        try:
            answer = httpx.post(service.url + SIGN, content=body, headers={"Content-Type": "application/json"},
                                timeout=30)
            answer.raise_for_status()
            (tmp / "answer.json").write_bytes(answer.content)
            floor = Floor(tmp, tmp / "answer.json")
            servers: dict[str, ServerProcess] = {"floor": floor, "service": service}
            for server in servers.values():  # warm-up
                wrk_run(wrk, server, lua, body_file, None, 1)
            loaded: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
            for _ in range(ROUNDS):
                for name, server in servers.items():
                    stats = wrk_run(wrk, server, lua, body_file, None, RUN_S)
                    loaded[name].append(stats)
                    print(f"  {name:>7} {CONNECTIONS} connections: {stats['achieved_rps']:>7} req/s  server CPU "
                          f"{stats['server_cpu_ms_per_request']} ms/req  p99 {stats['p99_ms']} ms  "
                          f"errors {stats['errors']}  load {stats['loadavg_1m_before']}", flush=True)
                evaluations.append(round(evaluation.measure(), 3))
                print(f"  in-process evaluation (hot loop): {evaluations[-1]} ms/request", flush=True)
            sequential = {name: wrk_run(wrk, server, lua, body_file, None, RUN_S, connections=1)
                          for name, server in servers.items()}
            spied = profile(wrk, service, lua, body_file, tmp) if PROFILE else None
            answer_bytes = len(answer.content)
        finally:
            service.stop()
            if floor is not None:
                floor.stop()
    result = report(sorted(evaluations)[len(evaluations) // 2], {name: summary(runs) for name, runs in loaded.items()},
                    sequential, spied)
    result["evaluation_rounds_ms"] = evaluations
    result.update(request_bytes=len(body), response_bytes=answer_bytes, seconds_per_run=RUN_S, rounds=ROUNDS,
                  cores=os.cpu_count(), uptime_after=uptime())
    (OUT / "service_cpu.json").write_text(json.dumps(result, indent=2))
    print(f"  written: {OUT / 'service_cpu.json'}")


def report(evaluation: float, loaded: dict[str, dict[str, Any]], sequential: dict[str, dict[str, Any]],
           spied: dict[str, Any] | None) -> dict[str, Any]:
    svc, flo = loaded["service"], loaded["floor"]
    cpu, rps, p99 = svc["server_cpu_ms_per_request"], svc["achieved_rps"], sequential["service"]["p99_ms"]
    print(f"  median of {ROUNDS} rounds, {CONNECTIONS} connections (floor beside):", flush=True)
    print(f"    server CPU/request  {cpu:>8} ms  target <= {TARGET_CPU_MS} ms   {verdict(cpu <= TARGET_CPU_MS)}   "
          f"floor {flo['server_cpu_ms_per_request']} ms  (service/floor {cpu / flo['server_cpu_ms_per_request']:.1f}x)")
    print(f"    requests/s          {rps:>8}     target >= {TARGET_RPS}      {verdict(rps >= TARGET_RPS)}   "
          f"floor {flo['achieved_rps']}")
    print(f"    sequential p99      {p99:>8} ms  target < {TARGET_SEQ_P99_MS} ms      {verdict(p99 < TARGET_SEQ_P99_MS)}   "
          f"floor {sequential['floor']['p99_ms']} ms  (p50 {sequential['service']['p50_ms']} ms, "
          f"floor {sequential['floor']['p50_ms']} ms; CPU {sequential['service']['server_cpu_ms_per_request']} "
          f"ms/req, floor {sequential['floor']['server_cpu_ms_per_request']})")
    print(f"    in-process evaluation (median) {evaluation} ms; service - floor - evaluation = "
          f"{cpu - flo['server_cpu_ms_per_request'] - evaluation:.3f} ms/request", flush=True)
    if spied is not None:
        print(f"  profile of the service (py-spy, {spied['samples']} samples of its event-loop thread):")
        for kind in ("inclusive", "self"):
            print(f"    {kind}:")
            for name, pct in spied[f"{kind}_pct"].items():
                print(f"      {pct:5.1f}%  {name}")
        sys.stdout.flush()
    return {"targets": {"cpu_ms_per_request": TARGET_CPU_MS, "requests_per_s": TARGET_RPS,
                        "sequential_p99_ms": TARGET_SEQ_P99_MS},
            "verdicts": {"cpu_ms_per_request": verdict(cpu <= TARGET_CPU_MS), "requests_per_s": verdict(rps >= TARGET_RPS),
                         "sequential_p99_ms": verdict(p99 < TARGET_SEQ_P99_MS)},
            "evaluation_in_process_ms": evaluation, "loaded": loaded, "sequential": sequential, "profile": spied}


if __name__ == "__main__":
    main()
