"""Load benchmark of the CDS Hooks service: latency p50/p95/p99 and throughput over HTTP on loopback.

A realistic order-sign request (3 draft orders, one of them a jugular angioplasty that fires a card; prefetch
with 5 Conditions) is sent by wrk (Debian package; installed with apt-get if missing) over keep-alive
connections to `ccsvi-cds serve --workers 2` started here. Paced runs hold a request rate (a Lua script
spaces each connection's requests on a wall-clock schedule); an unpaced run finds the maximum throughput.
Every run is bounded in time (RUN_S) and so in count. Also reported: RSS of the service processes, the
in-process cost of evaluation and of full FHIR validation per resource, and the same runs with validation on.

Environment: BENCH_RATES (default "100,200,400,600,800"), BENCH_SECONDS (default 10, at most 60),
BENCH_MAX_REQUESTS (per run, default 60000), BENCH_WORKERS (2).
Results: printed, and written to bench/out/service_load.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
RATES = [int(r) for r in os.environ.get("BENCH_RATES", "100,200,400,600,800").split(",") if r]
RUN_S = min(int(os.environ.get("BENCH_SECONDS", "10")), 60)
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))
CONNECTIONS = 8
MAX_REQUESTS = int(os.environ.get("BENCH_MAX_REQUESTS", "60000"))  # per run, besides the time bound
SIGN = "/cds-services/ccsvi-order-sign"

LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_usec; } timeval_t;
int gettimeofday(timeval_t *tv, void *tz);
]]
local tv = ffi.new("timeval_t")
local function now_ms()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000
end

local f = io.open(os.getenv("BENCH_BODY"), "rb")
local body = f:read("*a")
f:close()
-- each wrk thread (its own Lua state) hands out send slots every `interval` ms to whichever of its
-- connections asks next: the thread's rate is 1000/interval whatever the number of connections
local interval = tonumber(os.getenv("BENCH_INTERVAL_MS") or "0")
local next_at = nil
local counter = 0

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

-- with BENCH_TOKENS, each request carries the next JWT of that file (one per line, never reused)
local tokens = nil
local used = 0
local token_file = os.getenv("BENCH_TOKENS")
if token_file and token_file ~= "" then
  tokens = {}
  for line in io.lines(token_file) do tokens[#tokens + 1] = line end
end

function request()
  if tokens == nil then return wrk.format() end
  used = used + 1
  local headers = {}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  headers["Authorization"] = "Bearer " .. (tokens[used] or "exhausted")
  return wrk.format(nil, nil, headers, nil)
end

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end

function init(args)
  -- threads start staggered so that connections do not fire in lockstep
  next_at = now_ms() + (id or 1) * 0.37
end

function delay()
  if interval <= 0 then return 0 end
  next_at = next_at + interval
  local wait = next_at - now_ms()
  if wait < 0 then return 0 end
  return wait
end

-- a hard bound on the number of requests per thread, besides wrk's duration
local max_requests = tonumber(os.getenv("BENCH_MAX_REQUESTS_PER_THREAD") or "0")
local responses = 0
function response(status, headers, body)
  responses = responses + 1
  if max_requests > 0 and responses >= max_requests then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    "BENCHJSON {\"requests\": %d, \"duration_us\": %d, \"errors\": %d, \"non2xx\": %d, " ..
    "\"p50_us\": %d, \"p95_us\": %d, \"p99_us\": %d, \"max_us\": %d, \"mean_us\": %.1f}\n",
    summary.requests, summary.duration, errors, summary.errors.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, latency.mean))
end
"""


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: installing the Debian package", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"], check=True, env=env)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not available and could not be installed")
    return found


sys.path.insert(0, str(ROOT / "tests" / "service"))  # the test suite's payloads and harness


def request_body() -> bytes:
    import service_payloads

    return json.dumps(service_payloads.order_sign()).encode()


from service_harness import free_port


class ServerProcess:
    """A server started here (its process tree measured from /proc); `start` waits until `ready_path` answers."""

    def __init__(self, tmp: Path, name: str, cmd: list[str], env: dict[str, str], ready_path: str,
                 min_pids: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / f"{name}-{self.port}.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen([*cmd, "--port", str(self.port)], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + ready_path, timeout=1).status_code < 500 and len(self.pids()) >= min_pids:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited during start-up; see its log")
            time.sleep(0.2)
        raise SystemExit(f"{name} did not start")

    def pids(self) -> list[int]:
        """The server process and its children (uvicorn's workers) and grandchildren."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True, check=False)
        children = [int(x) for x in out.stdout.split()]
        workers: list[int] = []
        for child in children:  # multiprocessing may put a resource tracker or spawn helper in between
            sub = subprocess.run(["ps", "-o", "pid=", "--ppid", str(child)], capture_output=True, text=True, check=False)
            workers += [int(x) for x in sub.stdout.split()]
        return [self.proc.pid, *children, *workers]

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60]
            except OSError:
                continue
            match = re.search(r"VmRSS:\s+(\d+) kB", status)
            if match:
                out[f"{pid} {cmdline.strip()}"] = round(int(match.group(1)) / 1024, 1)
        return out

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far by the server's processes."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Server(ServerProcess):
    """`ccsvi-cds serve` with its own database; `workers` 1 is one process, more a supervisor and its workers."""

    def __init__(self, tmp: Path, validation: bool, issuers: list[dict[str, Any]] | None = None,
                 workers: int = WORKERS) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CCSVI_")}
        env.update(CCSVI_DB_PATH=str(tmp / f"bench-{time.monotonic_ns()}.sqlite3"), CCSVI_LOG_LEVEL="info",
                   CCSVI_FHIR_VALIDATION="true" if validation else "false")
        if issuers:
            env["CCSVI_TRUSTED_ISSUERS"] = json.dumps(issuers)
        cmd = [str(Path(sys.executable).parent / "ccsvi-cds"), "serve", "--workers", str(workers)]
        super().__init__(tmp, "service", cmd, env, "/health", min_pids=1 if workers == 1 else workers + 1)


def wrk_run(wrk: str, server: ServerProcess, lua: Path, body: Path, rate: int | None, seconds: int,
            connections: int = CONNECTIONS, threads: int = 1, tokens: Path | None = None) -> dict[str, Any]:
    url = server.url
    load_before = os.getloadavg()[0]
    cpu_before = server.cpu_s()
    interval = threads * 1000.0 / rate if rate else 0.0  # one schedule per wrk thread, shared by its connections
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_INTERVAL_MS": f"{interval:.3f}",
           "BENCH_TOKENS": str(tokens) if tokens else "",
           "BENCH_MAX_REQUESTS_PER_THREAD": str(max(1, MAX_REQUESTS // threads))}
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(lua), url + SIGN]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 30, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {done.stdout}\n{done.stderr}")
    stats = json.loads(line[len("BENCHJSON "):])
    stats["server_cpu_ms_per_request"] = round((server.cpu_s() - cpu_before) * 1000 / max(stats["requests"], 1), 3)
    stats["loadavg_1m_before"] = round(load_before, 2)
    stats["target_rps"] = rate
    stats["achieved_rps"] = round(stats["requests"] / (stats["duration_us"] / 1e6), 1)
    stats["capped"] = stats["requests"] >= MAX_REQUESTS  # stopped by the count bound: achieved_rps understated
    if stats["capped"]:
        print(f"  (run stopped at BENCH_MAX_REQUESTS={MAX_REQUESTS}: its req/s is a lower bound)", flush=True)
    for key in ("p50", "p95", "p99", "max"):
        stats[f"{key}_ms"] = round(stats.pop(f"{key}_us") / 1000, 2)
    return stats


def in_process_costs(body: bytes) -> dict[str, float]:
    """Per-request evaluation cost and per-resource full-validation cost, without HTTP."""
    from ccsvi_cds.evaluate import Evaluator
    from ccsvi_cds.facts.records import flatten, request_items
    from ccsvi_cds.facts.validate import validation_errors
    from ccsvi_cds.rulepack import load_pack

    req = json.loads(body)
    pack = load_pack(ROOT / "rules")
    resources = [item.resource for item in flatten(request_items(req))[0]]

    def per_call(fn: Any, n: int) -> float:
        for _ in range(min(n, 50)):
            fn()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n * 1000

    plain, validating = Evaluator(pack), Evaluator(pack, validate=True)
    return {
        "evaluate_ms": round(per_call(lambda: plain.evaluate_request(req), 2000), 3),
        "evaluate_with_validation_ms": round(
            per_call(lambda: validating.evaluate_request(req), 500), 3),
        "validation_ms_per_resource": round(
            per_call(lambda: [validation_errors(r, "r") for r in resources], 300) / len(resources), 3),
        "resources_per_request": len(resources),
    }


def jwt_setup(tmp: Path) -> tuple[list[dict[str, Any]], Any]:
    """A trusted issuer with a configured ES384 key (no JWKS fetch) and a function minting fresh tokens."""
    import uuid

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    key = ec.generate_private_key(ec.SECP384R1())
    public = {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "bench", "alg": "ES384"}
    issuers = [{"iss": "https://ehr.bench.invalid", "jwks": {"keys": [public]}}]

    def mint(path: Path, aud: str, count: int) -> Path:
        now = int(time.time())
        lines = [jwt.encode({"iss": issuers[0]["iss"], "aud": aud, "iat": now, "exp": now + 600,
                             "jti": str(uuid.uuid4())}, key, algorithm="ES384", headers={"kid": "bench"})
                 for _ in range(count)]
        path.write_text("\n".join(lines) + "\n")
        return path

    return issuers, mint


def series(wrk: str, tmp: Path, lua: Path, body_file: Path, validation: bool, rates: list[int],
           auth: bool = False, unpaced: bool = True) -> dict[str, Any]:
    issuers, mint = jwt_setup(tmp) if auth else (None, None)
    server = Server(tmp, validation, issuers)
    label = "validation " if validation else "JWT " if auth else ""

    def tokens_for(rate: int, seconds: int) -> Path | None:
        if mint is None:
            return None
        return mint(tmp / f"tokens-{rate}.txt", server.url + SIGN, int(rate * seconds * 1.1) + 100)

    try:
        wrk_run(wrk, server, lua, body_file, 200, 2, tokens=tokens_for(200, 2))  # warm-up (both workers)
        runs = []
        for rate in rates:
            stats = wrk_run(wrk, server, lua, body_file, rate, RUN_S, tokens=tokens_for(rate, RUN_S))
            runs.append(stats)
            print(f"  {label}{rate:>5} req/s target: achieved {stats['achieved_rps']:>7} "
                  f"p50 {stats['p50_ms']:>6} ms  p95 {stats['p95_ms']:>6} ms  p99 {stats['p99_ms']:>6} ms  "
                  f"max {stats['max_ms']:>6} ms  errors {stats['errors']}  server CPU {stats['server_cpu_ms_per_request']} ms/req  "
                  f"load {stats['loadavg_1m_before']}", flush=True)
        if not unpaced:
            return {"paced": runs, "rss_mb": server.rss_mb()}
        peak = wrk_run(wrk, server, lua, body_file, None, RUN_S, connections=16, threads=2)
        print(f"  {label}unpaced (16 connections): {peak['achieved_rps']} req/s  "
              f"p50 {peak['p50_ms']} ms  p99 {peak['p99_ms']} ms  errors {peak['errors']}  "
              f"server CPU {peak['server_cpu_ms_per_request']} ms/req  load {peak['loadavg_1m_before']}", flush=True)
        rss = server.rss_mb()
        return {"paced": runs, "max": peak, "rss_mb": rss}
    finally:
        server.stop()


def main() -> None:
    wrk = ensure_wrk()
    OUT.mkdir(parents=True, exist_ok=True)
    body = request_body()
    print(f"service_load: {WORKERS} workers, {os.cpu_count()} cores, request {len(body)} bytes, "
          f"{RUN_S} s per run, {CONNECTIONS} keep-alive connections (paced)", flush=True)
    with tempfile.TemporaryDirectory(prefix="ccsvi-bench-") as tmpdir:
        tmp = Path(tmpdir)
        lua = tmp / "pace.lua"
        lua.write_text(LUA)
        body_file = tmp / "order-sign.json"
        body_file.write_bytes(body)
        costs = in_process_costs(body)
        print(f"  in-process: evaluate {costs['evaluate_ms']} ms/request; full FHIR validation "
              f"{costs['validation_ms_per_resource']} ms/resource x {costs['resources_per_request']} "
              f"(evaluate with validation {costs['evaluate_with_validation_ms']} ms)", flush=True)
        default = series(wrk, tmp, lua, body_file, validation=False, rates=RATES)
        total = sum(default["rss_mb"].values())
        print(f"  RSS after load (MB): {default['rss_mb']}  total {total:.1f}", flush=True)
        with_jwt = series(wrk, tmp, lua, body_file, validation=False, rates=[200, 600], auth=True, unpaced=False)
        validated = series(wrk, tmp, lua, body_file, validation=True, rates=[200])
    result = {"workers": WORKERS, "cores": os.cpu_count(), "seconds_per_run": RUN_S, "request_bytes": len(body),
              "in_process": costs, "default": default, "with_validation": validated, "with_jwt": with_jwt}
    (OUT / "service_load.json").write_text(json.dumps(result, indent=2))
    print(f"  written: {OUT / 'service_load.json'}")


if __name__ == "__main__":
    main()
