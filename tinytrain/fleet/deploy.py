"""A local Flower Deployment Runtime: one SuperLink and N SuperNodes as separate processes on
127.0.0.1 (ports picked free at run time), the fleet app submitted with `flwr run`; every
process is terminated when the run ends or fails."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..compiler.errors import TinytrainError

APP_TOML = """[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "ttfleet"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "tinytrain"

[tool.flwr.app.components]
serverapp = "tinytrain.fleet.app:server_app"
clientapp = "tinytrain.fleet.app:client_app"

[tool.flwr.app.config]
{config}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name):
    p = Path(sys.executable).with_name(name)
    if p.exists():
        return str(p)
    found = shutil.which(name)
    if not found:
        raise TinytrainError(f"{name} not found: install the fleet extra (pip install 'tinytrain[fleet]')")
    return found


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


class LocalDeployment:
    """with LocalDeployment(n, faults) as d: d.run(config) ; d.kill_node(i) kills SuperNode i."""

    def __init__(self, n_nodes, faults=None, workdir=None, log=print):
        self.n, self.faults, self.log = int(n_nodes), faults or {}, log
        self.tmp = Path(tempfile.mkdtemp(prefix="ttfleet-", dir=workdir))
        self.procs, self.nodes = [], {}

    def _env(self):
        # the Flower processes start their helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name
        path = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
        return dict(os.environ, FLWR_HOME=str(self.tmp / "flwr_home"), PYTHONUNBUFFERED="1", PATH=path)

    def _wait_port(self, port, seconds=60):
        t0 = time.time()
        while time.time() - t0 < seconds:
            if self.procs[0].poll() is not None:
                raise TinytrainError(f"flower-superlink exited (log: {self.tmp / 'superlink.log'})")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise TinytrainError(f"flower-superlink did not listen on 127.0.0.1:{port} in {seconds} s")

    def _spawn(self, cmd, name):
        logf = open(self.tmp / f"{name}.log", "wb")
        p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=self._env(), cwd=self.tmp,
                             start_new_session=True)
        logf.close()
        self.procs.append(p)
        return p

    def __enter__(self):
        try:
            self.port = free_port()
            self._spawn([_bin("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
                         "--database", str(self.tmp / "state.db")], "superlink")
            self._wait_port(self.port)
            for i in range(self.n):
                cfg = f"partition-id={i} num-partitions={self.n}"
                if self.faults.get(i):
                    cfg += f' fault="{self.faults[i]}"'
                self.nodes[i] = self._spawn([_bin("flower-supernode"), "--insecure", "--superlink",
                                             f"127.0.0.1:{self.port}", "--host", "127.0.0.1",
                                             "--port", str(free_port()), "--node-config", cfg], f"supernode{i}")
            home = self.tmp / "flwr_home"
            home.mkdir(exist_ok=True)
            (home / "config.toml").write_text(
                f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{self.port}"\n'
                f"insecure = true\n")
        except BaseException:
            self.close()
            raise
        return self

    def kill_node(self, i):
        p = self.nodes[i]
        if p.poll() is None:
            os.killpg(p.pid, 9)

    def run(self, config, timeout=300):
        """Submit the fleet app with this run config and wait for it. -> the history dict"""
        app = self.tmp / "app"
        app.mkdir(exist_ok=True)
        config = dict(config, history=str(self.tmp / "history.json"), **{"min-nodes": self.n})
        (app / "pyproject.toml").write_text(APP_TOML.format(
            config="\n".join(f'"{k}" = {_toml_value(v)}' if "-" in k else f"{k} = {_toml_value(v)}"
                             for k, v in config.items())))
        env = self._env()
        t0 = time.time()
        res = subprocess.run([_bin("flwr"), "run", str(app), "local", "--stream"], capture_output=True, text=True,
                             env=env, cwd=self.tmp, timeout=timeout)
        (self.tmp / "flwr_run.log").write_text(res.stdout + res.stderr)
        hist = self.tmp / "history.json"
        if not hist.exists():
            raise TinytrainError(f"the federation did not finish in {time.time() - t0:.0f} s (flwr run exit "
                                 f"{res.returncode}); logs in {self.tmp}: {(res.stdout + res.stderr)[-800:]}")
        return json.loads(hist.read_text())

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, 15)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait()

    def __exit__(self, *exc):
        self.close()
