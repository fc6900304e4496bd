"""A real Prometheus (Debian's `prometheus` package) scraping a server, for
the tests that read /metrics the way an operator's monitoring does.

`find_prometheus` finds the `prometheus` and `promtool` commands.
`Prometheus` starts one on 127.0.0.1 that scrapes one target every second,
its configuration, storage and log in a folder of the test's; it waits until
the server is ready (`/-/ready`), answers PromQL over the HTTP API
(`query`, `scraped_after`) and stops on leaving the `with` block.
`check_metrics` runs `promtool check metrics` on a /metrics body.
Whether a test skips without them or fails is support/required.py's rule
(EIR_REQUIRE_PROMETHEUS=1, which CI sets, makes it fail).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from support.commands import clean_env, run
from support.waiting import HANG, wait_until

JOB = "eirstream"  # the scrape job's name: the `job` label of every series


@dataclass(frozen=True)
class PrometheusTools:
    """The two commands of the `prometheus` package."""

    prometheus: Path
    promtool: Path


def find_prometheus() -> PrometheusTools | None:
    """`prometheus` and `promtool` on PATH (Debian puts both in /usr/bin),
    None unless both are there."""
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        return None
    return PrometheusTools(Path(prometheus), Path(promtool))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape_config(target: str, metrics_path: str) -> str:
    """prometheus.yml: one job scraping `target` (host:port) every second.
    (JSON is YAML.)"""
    job = {
        "job_name": JOB,
        "metrics_path": metrics_path,
        "static_configs": [{"targets": [target]}],
    }
    config = {"global": {"scrape_interval": "1s"}, "scrape_configs": [job]}
    return json.dumps(config, indent=2) + "\n"


class Prometheus:
    """A Prometheus scraping `target` ("127.0.0.1:PORT") at `metrics_path`
    every second; `folder` holds its prometheus.yml, its storage (data/) and
    its log (prometheus.log). The constructor returns once it is ready."""

    def __init__(
        self,
        tools: PrometheusTools,
        target: str,
        folder: Path,
        metrics_path: str = "/metrics",
        timeout: float = HANG,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "prometheus.yml"
        config.write_text(scrape_config(target, metrics_path))
        self.log_path = folder / "prometheus.log"
        self.url = f"http://127.0.0.1:{free_port()}"
        command = [
            str(tools.prometheus),
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address={urllib.parse.urlsplit(self.url).netloc}",
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=folder,
                env=clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(self._ready, f"Prometheus to be ready at {self.url}", timeout)
        except BaseException:
            self.stop()  # never leave a Prometheus running behind a failure
            raise

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"prometheus exited with status {self.process.returncode}:\n"
                + self.log_tail()
            )
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as reply:
                return reply.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def api(self, path: str, **params: str) -> Any:
        """The `data` of a GET /api/v1/<path> answer (its status must be
        "success")."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(
            f"{self.url}/api/v1/{path}?{query}", timeout=HANG
        ) as reply:
            answer = json.load(reply)
        if answer.get("status") != "success":
            raise RuntimeError(f"/api/v1/{path}?{query} answered {answer}")
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant PromQL query, now: one entry per series,
        each {"metric": labels, "value": [time, "text"]} (a range selector
        gives "values", a list of those pairs)."""
        return self.api("query", query=expr)["result"]

    def scraped_after(self, when: float) -> bool:
        """Whether the target was scraped (successfully or not) at a time
        after `when` (Unix seconds): `up` has a sample from every scrape."""
        result = self.query(f'timestamp(up{{job="{JOB}"}})')
        return bool(result) and float(result[0]["value"][1]) > when

    def targets(self) -> list[dict[str, Any]]:
        """The scrape targets as Prometheus sees them (health, lastError)."""
        return self.api("targets")["activeTargets"]

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, SIGKILL if it has not exited within `timeout` s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(HANG)

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def check_metrics(
    tools: PrometheusTools, body: str
) -> subprocess.CompletedProcess[str]:
    """`promtool check metrics` on a /metrics body (its exit status is the
    caller's to check; problems are printed on stdout or stderr)."""
    return run([tools.promtool, "check", "metrics"], stdin=body)
