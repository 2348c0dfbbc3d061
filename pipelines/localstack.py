"""Start and stop the real local components on loopback with free ports.

Used by ``make demo`` and by the test fixtures, so both run the same components the
same way: the Pub/Sub emulator (Google Cloud SDK, Java), bqemulator (DuckDB-backed
BigQuery), and ClickHouse embedded through chDB (in-process, nothing to start).
Every process started here is stopped by ``Service.stop()`` / the context manager,
also on Ctrl-C and on failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator


class ServiceStartError(RuntimeError):
    """A local component did not start (the message carries its log tail)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None
) -> None:
    """Poll ``check`` until true; fail with ``what`` after ``timeout`` s or if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with code {proc.returncode}")
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f}s")


def _tcp_up(host_port: str) -> bool:
    host, _, port = host_port.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


def _http_up(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
        return True
    except urllib.error.HTTPError:
        return True  # the server answered
    except OSError:
        return False


@dataclasses.dataclass
class Service:
    name: str
    proc: subprocess.Popen
    endpoint: str
    log_path: pathlib.Path
    #: host:port of the service's gRPC API where it has one besides ``endpoint`` (bqemulator:
    #: the Storage Write API, for ``--bq_write_endpoint``)
    grpc_endpoint: str = ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _spawn(
    name: str, cmd: list[str], log_dir: pathlib.Path, env: dict | None = None
) -> tuple[subprocess.Popen, pathlib.Path]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
    )
    log.close()
    return proc, log_path


def ensure_duckdb_spatial() -> None:
    """bqemulator's DuckDB otherwise downloads the spatial extension at start (offline: fails)."""
    import duckdb_extensions

    duckdb_extensions.import_extension("spatial")


def start_bqemulator(
    project: str, log_dir: pathlib.Path, port: int | None = None, data_dir: pathlib.Path | None = None
) -> Service:
    """bqemulator on loopback; with ``data_dir`` it persists (a restart keeps tables and rows).

    ``endpoint`` is its REST API (``--bq_endpoint``), ``grpc_endpoint`` its gRPC server with
    the Storage Write API (``--bq_write_endpoint``, what the sink uses by default); the
    service is up when both accept connections.
    """
    ensure_duckdb_spatial()
    port = port or free_port()
    grpc_port = free_port()
    exe = shutil.which("bqemulator") or str(pathlib.Path(sys.executable).with_name("bqemulator"))
    cmd = [exe, "start", "--rest-port", str(port), "--grpc-port", str(grpc_port), "--project", project]
    cmd += ["--log-level", "warning"]
    if data_dir is not None:
        cmd += ["--persistent", "--data-dir", str(data_dir)]
    proc, log = _spawn("bqemulator", cmd, log_dir)
    svc = Service("bqemulator", proc, f"http://127.0.0.1:{port}", log, f"127.0.0.1:{grpc_port}")
    try:
        wait_until(
            lambda: _http_up(svc.endpoint + "/") and _tcp_up(svc.grpc_endpoint), 60, "bqemulator", proc
        )
    except (RuntimeError, TimeoutError):
        svc.stop()
        raise ServiceStartError(f"bqemulator did not start; log:\n{svc.log_tail()}") from None
    return svc


def pubsub_emulator_command(port: int, data_dir: pathlib.Path) -> list[str]:
    """The SDK's emulator launcher (faster than ``gcloud beta emulators pubsub start``)."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise ServiceStartError(
            "gcloud not found: the Google Cloud SDK with the Pub/Sub emulator is required"
        )
    root = subprocess.run(
        [gcloud, "info", "--format=value(installation.sdk_root)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    launcher = pathlib.Path(root) / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    if launcher.exists():
        return [str(launcher), "--host=127.0.0.1", f"--port={port}"]
    return [
        gcloud,
        "beta",
        "emulators",
        "pubsub",
        "start",
        f"--host-port=127.0.0.1:{port}",
        f"--data-dir={data_dir}",
    ]


def start_pubsub_emulator(log_dir: pathlib.Path, port: int | None = None) -> Service:
    port = port or free_port()
    data_dir = pathlib.Path(tempfile.mkdtemp(prefix="pubsub-emu-"))
    proc, log = _spawn("pubsub-emulator", pubsub_emulator_command(port, data_dir), log_dir)
    svc = Service("pubsub-emulator", proc, f"127.0.0.1:{port}", log)
    try:
        wait_until(lambda: _http_up(f"http://127.0.0.1:{port}/"), 90, "pubsub emulator", proc)
    except (RuntimeError, TimeoutError):
        svc.stop()
        raise ServiceStartError(f"Pub/Sub emulator did not start; log:\n{svc.log_tail()}") from None
    return svc


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def services(*starters: Callable[[], Service]) -> Iterator[list[Service]]:
    """Start services in order; stop all that started, whatever happens.

    Ctrl-C raises KeyboardInterrupt; SIGTERM (``timeout``, ``kill``) would end Python without
    running ``finally``, leaving the emulators (own sessions) behind, so it becomes SystemExit.
    """
    started: list[Service] = []
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        for start in starters:
            started.append(start())
        yield started
    finally:
        for svc in reversed(started):
            svc.stop()
