"""Start and stop Flower 1.39 deployment processes: a SuperLink, SuperNodes, `flwr run`.

fedsim pins flwr 1.39 because it is the newest line whose SuperNode <-> SuperLink link
(the Fleet API) is gRPC (`--fleet-api-type grpc-rere`); 1.40 moved it to HTTP. The
other links (the `flwr` CLI and the ServerApp talking to the SuperLink, the ClientApp
talking to its SuperNode) are HTTP in 1.39 already.

Every process gets:
  * the Python environment's `bin/` first on PATH - SuperLink and SuperNode start
    `flower-superexec`, `flwr-serverapp` and `flwr-clientapp` by bare name;
  * its own `FLWR_HOME` (connection config, unpacked app bundles), so runs never touch
    the user's `~/.flwr`;
  * run-time dependency installation off (otherwise `flwr run` would `uv sync` the app's
    dependencies - gigabytes of CUDA torch - into FLWR_HOME) and no update check;
  * its own session, so `stop()` can end it and the children it spawned by its PID.

This module starts programs only; it does not import flwr.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Mapping, Sequence

FEDERATION = "fedsim"  # connection name written to $FLWR_HOME/config.toml


class DeployError(Exception):
    """A deployment step failed; str() is one line."""


@dataclass(frozen=True)
class ServerTls:
    """The SuperLink's TLS files (PEM): CA certificate, server certificate, server key."""

    ca: Path
    cert: Path
    key: Path

    def check(self) -> "ServerTls":
        for what, p in (("CA certificate", self.ca), ("server certificate", self.cert), ("server key", self.key)):
            if not Path(p).is_file():
                raise DeployError(f"TLS: {what} {p} does not exist")
        return ServerTls(Path(self.ca).resolve(), Path(self.cert).resolve(), Path(self.key).resolve())


# -- environment ------------------------------------------------------------------------

def bin_dir() -> Path:
    """The running Python environment's scripts folder (where flower-* live)."""
    return Path(sys.executable).parent


def project_root() -> Path:
    """The folder that contains the `fedsim` package (put on PYTHONPATH of child processes
    so a source checkout works without installing)."""
    return Path(__file__).resolve().parents[2]


def flower_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    pp = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{project_root()}{os.pathsep}{pp}" if pp else str(project_root())
    env["FLWR_HOME"] = str(home)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def split_address(address: str) -> tuple[str, int]:
    """'HOST:PORT' or '[v6]:PORT' -> (host, port); one-line error otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeployError(f"address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- processes --------------------------------------------------------------------------

@dataclass
class Proc:
    """A started program, its log file, and how to stop it (by PID)."""

    name: str
    popen: subprocess.Popen
    log: Path
    _fh: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process, then its session (children such as flower-superexec and
        the app processes it spawned; the session id is this process's PID), then SIGKILL
        whatever is left after `grace` seconds."""
        pid = self.popen.pid
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(5)
        # children outlive a SIGTERMed parent by a few seconds; end them by their group id
        deadline = time.monotonic() + grace
        sig = signal.SIGTERM
        while _group_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            if time.monotonic() > deadline:
                sig = signal.SIGKILL
            time.sleep(0.2)
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        return self.popen.returncode


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie group leader still counts; look for any live member
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return not Path("/proc").is_dir()


def spawn(name: str, argv: Sequence[str], env: Mapping[str, str], log: Path,
          cwd: Path | None = None) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log, "ab")
    try:
        popen = subprocess.Popen(list(argv), env=dict(env), stdout=fh, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True)
    except OSError as exc:
        fh.close()
        raise DeployError(f"cannot start {argv[0]}: {exc}") from None
    return Proc(name, popen, log, fh)


def wait_until(check, timeout: float, what: str, proc: Proc | None = None, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and not proc.alive():
            tail = " | ".join(proc.log_text().strip().splitlines()[-3:])
            raise DeployError(f"{proc.name} exited with code {proc.popen.returncode} before {what}: {tail}")
        if check():
            return
        if time.monotonic() > deadline:
            raise DeployError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def http_health(host: str, port: int, ca: Path | None) -> bool:
    """GET /health on the SuperLink's Control/Runtime (HTTP) port."""
    scheme = "https" if ca else "http"
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        with urllib.request.urlopen(f"{scheme}://{join_address(host, port)}/health", timeout=2,
                                    context=ctx) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError, ssl.SSLError):
        return False


# -- SuperLink --------------------------------------------------------------------------

@dataclass
class SuperLink:
    proc: Proc | None  # None when attached to a SuperLink started elsewhere
    control: str  # HOST:PORT of the Control/Runtime API (HTTP(S)), what `flwr` dials
    fleet: str  # HOST:PORT of the Fleet API (gRPC), what SuperNodes dial
    tls: ServerTls | None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def superlink_argv(host: str, control_port: int, fleet_host: str, fleet_port: int, tls: ServerTls | None,
                   node_auth: bool) -> list[str]:
    argv = [str(bin_dir() / "flower-superlink"), "--host", host, "--port", str(control_port),
            "--fleet-api-type", "grpc-rere", "--fleet-api-address", join_address(fleet_host, fleet_port),
            "--disable-runtime-dependency-installation"]
    if tls is None:
        argv.append("--insecure")
    else:
        argv += ["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]
    if node_auth:
        if tls is None:
            raise DeployError("node authentication needs TLS (Flower refuses it with --insecure)")
        argv.append("--enable-supernode-auth")
    return argv


def start_superlink(home: Path, *, host: str = "127.0.0.1", control_port: int | None = None,
                    fleet_host: str | None = None, fleet_port: int | None = None,
                    tls: ServerTls | None, node_auth: bool, timeout: float = 60.0) -> SuperLink:
    """Start a SuperLink and wait until both its HTTP and its gRPC port answer."""
    home.mkdir(parents=True, exist_ok=True)
    fleet_host = fleet_host or host
    control_port = control_port or free_port(host)
    fleet_port = fleet_port or free_port(fleet_host)
    argv = superlink_argv(host, control_port, fleet_host, fleet_port, tls, node_auth)
    proc = spawn("SuperLink", argv, flower_env(home), home / "superlink.log", cwd=home)
    probe_host = "127.0.0.1" if fleet_host in ("0.0.0.0", "::") else fleet_host
    ctl_probe = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    try:
        wait_until(lambda: http_health(ctl_probe, control_port, tls.ca if tls else None)
                   and port_open(probe_host, fleet_port), timeout, "the SuperLink to listen", proc)
    except DeployError:
        proc.stop()
        raise
    return SuperLink(proc, join_address(ctl_probe, control_port), join_address(fleet_host, fleet_port), tls)


def write_connection(home: Path, control: str, ca: Path | None) -> None:
    """Tell the `flwr` CLI (through $FLWR_HOME/config.toml) how to reach the SuperLink."""
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{FEDERATION}"', "", f"[superlink.{FEDERATION}]",
             f"address = {json.dumps(control)}"]
    lines.append(f"root-certificates = {json.dumps(str(Path(ca).resolve()))}" if ca else "insecure = true")
    (home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def flwr_cli(home: Path, args: Sequence[str], timeout: float = 60.0, cwd: Path | None = None
             ) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([str(bin_dir() / "flwr"), *args], env=flower_env(home), capture_output=True,
                              text=True, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DeployError(f"`flwr {' '.join(args[:2])}` did not answer within {timeout:g} s") from None


def register_node(home: Path, public_key: Path) -> int:
    """Register a SuperNode public key with the SuperLink (node authentication); its node id."""
    if not Path(public_key).is_file():
        raise DeployError(f"public key {public_key} does not exist")
    res = flwr_cli(home, ["supernode", "register", str(Path(public_key).resolve()), FEDERATION,
                          "--format", "json"])
    text = (res.stdout or "") + (res.stderr or "")
    try:
        payload = json.loads(res.stdout)
    except json.JSONDecodeError:
        payload = {}
    if res.returncode != 0 or not payload.get("success", False):
        msg = payload.get("error-message") or text.strip().splitlines()[-1:] or ["no output"]
        raise DeployError(f"registering {public_key} failed: {msg if isinstance(msg, str) else msg[0]}")
    return int(payload.get("node-id", payload.get("node_id", 0)))


def list_nodes(home: Path) -> list[dict]:
    res = flwr_cli(home, ["supernode", "list", FEDERATION, "--format", "json"])
    try:
        payload = json.loads(res.stdout)
    except json.JSONDecodeError:
        raise DeployError(f"`flwr supernode list` failed: {(res.stdout + res.stderr).strip()[-200:]}") from None
    return list(payload.get("nodes", []))


# -- SuperNode --------------------------------------------------------------------------

def node_config_arg(values: Mapping[str, object]) -> str:
    """Render node config as Flower's 'k=v k2="s"' string (values are TOML literals)."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def supernode_argv(superlink: str, runtime_port: int, node_config: Mapping[str, object], *,
                   ca: Path | None, private_key: Path | None, max_retries: int | None = None,
                   max_wait: float | None = None) -> list[str]:
    argv = [str(bin_dir() / "flower-supernode"), "--grpc-rere", "--superlink", superlink,
            "--host", "127.0.0.1", "--port", str(runtime_port), "--node-config", node_config_arg(node_config)]
    if ca is None:
        argv.append("--insecure")
    else:
        argv += ["--root-certificates", str(Path(ca).resolve())]
    if private_key is not None:
        if ca is None:
            raise DeployError("a node key needs TLS: pass the CA certificate too")
        argv += ["--auth-supernode-private-key", str(Path(private_key).resolve())]
    if max_retries is not None:
        argv += ["--max-retries", str(max_retries)]
    if max_wait is not None:
        argv += ["--max-wait-time", str(max_wait)]
    return argv


def start_supernode(home: Path, superlink: str, node_config: Mapping[str, object], *, ca: Path | None,
                    private_key: Path | None, runtime_port: int | None = None, name: str = "SuperNode",
                    env: Mapping[str, str] | None = None, max_retries: int | None = None,
                    max_wait: float | None = None) -> Proc:
    """Start a SuperNode (its own FLWR_HOME) that dials the Fleet API at `superlink` over gRPC."""
    home.mkdir(parents=True, exist_ok=True)
    argv = supernode_argv(superlink, runtime_port or free_port(), node_config, ca=ca, private_key=private_key,
                          max_retries=max_retries, max_wait=max_wait)
    return spawn(name, argv, flower_env(home, env), home / "supernode.log", cwd=home)


def supernode_connected(proc: Proc) -> bool:
    """True once the SuperNode has registered with the SuperLink (it logs its node id)."""
    return "SuperNode ID:" in proc.log_text()


# -- the app bundle and `flwr run` ------------------------------------------------------

SERVER_APP = "fedsim.flower.server_app:app"
CLIENT_APP = "fedsim.flower.client_app:app"


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def write_app(app_dir: Path, run_config: Mapping[str, object], server_app: str = SERVER_APP,
              client_app: str = CLIENT_APP) -> Path:
    """Write the Flower app bundle `flwr run` ships: only a pyproject.toml naming fedsim's
    ServerApp and ClientApp (fedsim itself must be installed on the server and on every
    client) and the run config they read."""
    app_dir.mkdir(parents=True, exist_ok=True)
    lines = ["[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
             "[project]", 'name = "fedsim-deploy"', 'version = "1.0.0"', "dependencies = []", "",
             "[tool.flwr.app]", 'publisher = "fedsim"', "", "[tool.flwr.app.components]",
             f'serverapp = "{server_app}"', f'clientapp = "{client_app}"', "", "[tool.flwr.app.config]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in run_config.items()]
    (app_dir / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return app_dir


def flwr_run(home: Path, app_dir: Path, log: Path) -> Proc:
    """Start `flwr run APP fedsim --stream` (returns when the run ends)."""
    argv = [str(bin_dir() / "flwr"), "run", str(app_dir), FEDERATION, "--stream"]
    return spawn("flwr run", argv, flower_env(home), log, cwd=app_dir)
