"""A real Ray head started with the `ray` CLI, as a user starts one (used by the cluster and
dashboard tests).

Other processes on this machine run their own Ray at the same time, so the head gets a
private --temp-dir (the address file `ray_current_cluster` goes there, not to /tmp/ray) and
explicit free ports, and it is stopped by process id: `ray stop` would end every Ray on
the machine. `ray start --block` owns the processes it starts and ends them on SIGTERM;
whatever survives that is killed by pid.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def driver_env(**extra: str) -> dict:
    """This process's environment without any Ray address or auth setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(extra)
    return env


class RayHead:
    """`ray start --head --block` with token authentication on (as Ray 2.60 does when a token
    exists), a token of its own, and its dashboard on a free port."""

    def __init__(self, num_cpus: int = 2, dashboard: bool = True):
        self.token = secrets.token_hex(32)
        # Unix socket paths are limited to ~107 bytes: a short folder directly under /tmp.
        self.temp_dir = tempfile.mkdtemp(prefix="rs-", dir="/tmp")
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.log = Path(self.temp_dir) / "head.log"
        cmd = [RAY, "start", "--head", "--block", f"--port={self.port}", f"--temp-dir={self.temp_dir}",
               "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--num-gpus=0",
               f"--include-dashboard={'true' if dashboard else 'false'}", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}", f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               f"--metrics-export-port={free_port()}", f"--ray-client-server-port={free_port()}",
               f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
               "--object-store-memory=200000000", "--disable-usage-stats"]
        env = driver_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        with open(self.log, "w") as fh:
            self.proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.pids: set[int] = set()

    def auth_env(self, **extra: str) -> dict:
        """A driver environment that authenticates to this head."""
        return driver_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, **extra)

    def wait(self, timeout: float = 240) -> "RayHead":
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            self._remember()
            if "Ray runtime started" in self.log.read_text(errors="replace") and self._listening(self.port):
                return self
            time.sleep(0.5)
        raise RuntimeError(f"ray start did not come up in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def _listening(self, port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def _remember(self) -> None:
        try:
            self.pids.update(p.pid for p in psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.Error:
            pass

    def stop(self) -> None:
        self._remember()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in self.pids:
            try:
                p = psutil.Process(pid)
                # Only our own processes: the pid may have been reused since.
                if self.temp_dir in " ".join(p.cmdline()) or p.ppid() in self.pids | {self.proc.pid}:
                    p.kill()
            except psutil.Error:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "RayHead":
        try:
            return self.wait()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
