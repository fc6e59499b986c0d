"""W&B online without a network: a bounded probe, then offline with one warning, or a fast error.

Two local stand-ins for an unreachable server, both on 127.0.0.1 only: a closed port (connection
refused) and a black hole (accepts connections, never answers). Nothing here leaves the machine.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from latentbench.tracking import unreachable_reason
from tests.conftest import run_cli

FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 hex characters, the shape of a W&B key
RUN = ["train", "model=pca", "model.n_components=4", "trainer=cpu", "logger=wandb", "data.limit=200"]
BOUND = 30.0  # seconds a missing network may add to a run


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def black_hole():
    """The port of a server on 127.0.0.1 that accepts connections and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop, held = threading.Event(), []

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:  # timeout: look at stop again
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


class NotFound(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:  # noqa: N802 (the name http.server calls)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def answering_server():
    """The port of a plain HTTP server on 127.0.0.1 that answers every request (404)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def baseline_seconds(tmp_path_factory) -> float:
    """Wall time of the same run with W&B offline (no probe): the yardstick for the bound."""
    run_dir = tmp_path_factory.mktemp("baseline")
    start = time.monotonic()
    result = run_cli(*RUN, f"hydra.run.dir={run_dir}", env={"WANDB_MODE": "offline"})
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    return elapsed


def online_env(port: int) -> dict[str, str]:
    return {"WANDB_MODE": "online", "WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": f"http://127.0.0.1:{port}"}


def test_probe_tells_refused_black_hole_and_answering_servers_apart(black_hole, answering_server):
    start = time.monotonic()
    assert unreachable_reason(f"http://127.0.0.1:{closed_port()}", timeout=2.0) == "connection refused"
    assert time.monotonic() - start < 1.5
    start = time.monotonic()
    assert unreachable_reason(f"http://127.0.0.1:{black_hole}", timeout=1.0) == "no answer within 1 s"
    assert time.monotonic() - start < 1.5
    assert unreachable_reason(f"http://127.0.0.1:{answering_server}", timeout=2.0) is None


@pytest.mark.parametrize("server", [pytest.param("refused", marks=pytest.mark.slow), "black_hole"])  # the probe test covers refused
def test_online_without_network_logs_offline(server, request, tmp_path, baseline_seconds):
    port = closed_port() if server == "refused" else request.getfixturevalue("black_hole")
    start = time.monotonic()
    result = run_cli(*RUN, f"hydra.run.dir={tmp_path}", env=online_env(port), timeout=int(baseline_seconds + 120))
    elapsed = time.monotonic() - start
    print(f"{server}: {elapsed:.1f} s, baseline {baseline_seconds:.1f} s")
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "unreachable" in line]
    reason = "connection refused" if server == "refused" else "no answer within 5 s"
    runs = tmp_path / "wandb"
    assert warnings == [f"warning: W&B: http://127.0.0.1:{port} unreachable ({reason}); logging offline to {runs} "
                        f"(upload later with: wandb sync {runs}/offline-run-*)"]
    assert list(runs.glob("offline-run-*"))
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "finished"
    assert elapsed < baseline_seconds + BOUND


def test_online_only_fails_fast_without_network(black_hole, tmp_path, baseline_seconds):
    """The black hole only: a refused connection is the easier case (see the probe's test)."""
    port = black_hole
    start = time.monotonic()
    result = run_cli(*RUN, "logger.wandb.fallback_offline=false", "logger.wandb.connect_timeout=3",
                     f"hydra.run.dir={tmp_path}", env=online_env(port), timeout=int(baseline_seconds + 120))
    elapsed = time.monotonic() - start
    print(f"online only, black hole: {elapsed:.1f} s, baseline {baseline_seconds:.1f} s")
    assert result.returncode == 2, result.stderr[-3000:]
    reason = "no answer within 3 s"
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: logger.wandb.mode: online asked for, but http://127.0.0.1:{port} is unreachable ({reason}); "
        "use logger.wandb.mode=offline or check the network")
    assert "Traceback" not in result.stderr + result.stdout
    assert not list(Path(tmp_path).glob("checkpoints/*"))
    assert elapsed < baseline_seconds + BOUND
