"""A Spark standalone cluster on loopback, for the cluster test and the benchmark: one master and N workers,
each its own JVM started from the pyspark package's own jars (no separate Spark install), bounded in time and
always torn down (each JVM leads its own process group, which takes its executors and Python workers along).

Not a benchmark module (the leading underscore keeps `python -m bench` from running it).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path


class ClusterError(RuntimeError):
    """The cluster did not come up in time; the message carries the tail of the JVM's log."""


@dataclass
class Cluster:
    master_url: str
    worker_dirs: list[Path]
    pids: list[int] = field(default_factory=list)  # master and workers (each the leader of its process group)


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    exe = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not exe:
        raise ClusterError("java not found (JAVA_HOME or PATH): Spark needs Java 17")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(log: Path, proc: subprocess.Popen[bytes], pattern: str, deadline: float) -> re.Match[str]:
    rx = re.compile(pattern)
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        m = rx.search(text)
        if m:
            return m
        if proc.poll() is not None or time.monotonic() > deadline:
            why = f"exited with {proc.returncode}" if proc.returncode is not None else "timed out"
            raise ClusterError(f"{log.name}: {why} waiting for {pattern!r}; log tail:\n{text[-3000:]}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group (the JVM's shutdown hooks stop its executors), then SIGKILL after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            try:  # the JVM is gone; its executors and Python workers share its group
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def standalone_cluster(workdir: Path, workers: int = 2, cores: int = 1, memory: str = "1g",
                       timeout: float = 90.0) -> Iterator[Cluster]:
    """Start a master and ``workers`` workers on 127.0.0.1 (ports chosen by the OS, web UIs off the fixed
    ports); yield once every worker has registered; stop them all on exit, whatever happened."""
    home = spark_home()
    workdir.mkdir(parents=True, exist_ok=True)
    # What bin/load-spark-env.sh would export: the workers' launcher needs the Scala version to build the
    # executors' command line (the jars are named after it).
    core = next(home.glob("jars/spark-core_*.jar"))
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOCAL_HOSTNAME": "localhost",
           "SPARK_SCALA_VERSION": core.name.split("_")[1].split("-")[0]}
    # Small daemons: C1 only and the serial collector start faster on a busy machine (executors keep defaults).
    base = [java(), "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Dspark.master.rest.enabled=false",
            "-cp", f"{home / 'jars'}/*"]
    deadline = time.monotonic() + timeout
    with ExitStack() as stack:
        def start(name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
            log = workdir / f"{name}.log"
            with open(log, "wb") as fh:
                proc = subprocess.Popen(base + args, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, cwd=workdir, start_new_session=True)
            stack.callback(_stop, proc)
            return proc, log

        # The master's port is chosen here so that the workers start beside it, not after it (JVM start
        # dominates on a busy machine); a worker that finds no master yet retries registering.
        url = f"spark://127.0.0.1:{free_port()}"
        master, mlog = start("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                        "--port", url.rsplit(":", 1)[1], "--webui-port", "0"])
        cluster = Cluster(url, [], [master.pid])
        started = []
        for i in range(workers):
            wdir = workdir / f"worker-{i}"
            wdir.mkdir(exist_ok=True)
            proc, log = start(f"worker-{i}", ["org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                                               "--port", "0", "--webui-port", "0", "--cores", str(cores),
                                               "--memory", memory, "--work-dir", str(wdir)])
            started.append((proc, log))
            cluster.worker_dirs.append(wdir)
            cluster.pids.append(proc.pid)
        _wait_for(mlog, master, r"Starting Spark master at spark://", deadline)
        for proc, log in started:
            _wait_for(log, proc, r"Successfully registered with master", deadline)
        yield cluster
