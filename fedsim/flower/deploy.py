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
        """Check that the three files exist.

        Returns:
            A copy with absolute paths (child processes run in other folders).

        Raises:
            DeployError: naming the missing file.
        """
        for what, p in (("CA certificate", self.ca), ("server certificate", self.cert), ("server key", self.key)):
            if not Path(p).is_file():
                raise DeployError(f"TLS: {what} {p} does not exist")
        return ServerTls(Path(self.ca).resolve(), Path(self.cert).resolve(), Path(self.key).resolve())


# -- environment ------------------------------------------------------------------------

def bin_dir() -> Path:
    """The running Python environment's scripts folder (where flower-* live)."""
    return Path(sys.executable).parent


def project_root() -> Path:
    """The folder that contains the `fedsim` package.

    It goes on the PYTHONPATH of child processes, so a source checkout works without installing.
    """
    return Path(__file__).resolve().parents[2]


def flower_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a Flower child process (see the module docstring for why each variable).

    Args:
        home: its FLWR_HOME.
        extra: variables set last (override the rest).

    Returns:
        A copy of os.environ with PATH, PYTHONPATH, FLWR_HOME, the Flower switches and
        OMP_NUM_THREADS (default 1) set.
    """
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
    """Parse 'HOST:PORT' or '[v6]:PORT' into (host, port).

    Args:
        address: the address.

    Returns:
        (host without brackets, port).

    Raises:
        DeployError: if it is not HOST:PORT with a port in 1..65535.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeployError(f"address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def join_address(host: str, port: int) -> str:
    """The inverse of `split_address`: 'HOST:PORT', bracketing IPv6 hosts."""
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
        """The process id (also its session and process-group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the process itself is still running (its children are not checked)."""
        return self.popen.poll() is None

    def log_text(self) -> str:
        """Everything it has logged so far ("" if the log cannot be read)."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process, then its session, then SIGKILL whatever is left after `grace` seconds.

        The session holds the children it spawned, such as flower-superexec and the app
        processes; the session id is this process's PID.

        Args:
            grace: seconds to wait after each SIGTERM before killing.

        Returns:
            The process's exit code.
        """
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
    """Start a program in its own session, stdout and stderr appended to `log`.

    Args:
        name: label used in messages.
        argv: the command line.
        env: its environment.
        log: the log file (its folder is created).
        cwd: its working directory.

    Returns:
        The started process.

    Raises:
        DeployError: if the program cannot be started.
    """
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
    """Poll `check()` until it is true.

    Args:
        check: a callable returning bool.
        timeout: seconds before giving up.
        what: what is awaited, for the error message.
        proc: fail early (with its last log lines) if this process exits meanwhile.
        interval: seconds between polls.

    Raises:
        DeployError: on timeout or if `proc` exits.
    """
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
    """Whether a TCP connection to host:port succeeds within one second."""
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
    """A running SuperLink (started here or attached to) and the addresses clients and `flwr` dial."""

    proc: Proc | None  # None when attached to a SuperLink started elsewhere
    control: str  # HOST:PORT of the Control/Runtime API (HTTP(S)), what `flwr` dials
    fleet: str  # HOST:PORT of the Fleet API (gRPC), what SuperNodes dial
    tls: ServerTls | None

    def stop(self) -> None:
        """Stop it if it was started here; an attached SuperLink is left running."""
        if self.proc is not None:
            self.proc.stop()


def superlink_argv(host: str, control_port: int, fleet_host: str, fleet_port: int, tls: ServerTls | None,
                   node_auth: bool) -> list[str]:
    """The `flower-superlink` command line: gRPC Fleet API, TLS or --insecure, optional node auth.

    Args:
        host: interface of the Control/Runtime (HTTP) API.
        control_port: its port.
        fleet_host: interface of the Fleet (gRPC) API.
        fleet_port: its port.
        tls: the TLS files, or None for --insecure.
        node_auth: only registered SuperNode keys may connect.

    Returns:
        argv.

    Raises:
        DeployError: if node authentication is asked for without TLS.
    """
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
    """Start a SuperLink and wait until both its HTTP and its gRPC port answer.

    Args:
        home: its FLWR_HOME and working folder (superlink.log goes here).
        host: Control API interface.
        control_port: Control API port (default: a free one).
        fleet_host: Fleet API interface (default `host`).
        fleet_port: Fleet API port (default: a free one).
        tls: TLS files, or None for an insecure link.
        node_auth: require registered SuperNode keys.
        timeout: seconds to wait for both ports.

    Returns:
        The running SuperLink.

    Raises:
        DeployError: if it does not start or listen in time (it is stopped first).
    """
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
    """Tell the `flwr` CLI (through $FLWR_HOME/config.toml) how to reach the SuperLink.

    Args:
        home: the FLWR_HOME of the `flwr` calls.
        control: HOST:PORT of the Control API.
        ca: the CA certificate, or None for an insecure connection.
    """
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{FEDERATION}"', "", f"[superlink.{FEDERATION}]",
             f"address = {json.dumps(control)}"]
    lines.append(f"root-certificates = {json.dumps(str(Path(ca).resolve()))}" if ca else "insecure = true")
    (home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def flwr_cli(home: Path, args: Sequence[str], timeout: float = 60.0, cwd: Path | None = None
             ) -> subprocess.CompletedProcess:
    """Run the `flwr` CLI and capture its output.

    Args:
        home: its FLWR_HOME (holding the connection config).
        args: arguments after `flwr`.
        timeout: seconds before giving up.
        cwd: its working directory.

    Returns:
        The completed process (the caller checks the return code).

    Raises:
        DeployError: on timeout.
    """
    try:
        return subprocess.run([str(bin_dir() / "flwr"), *args], env=flower_env(home), capture_output=True,
                              text=True, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DeployError(f"`flwr {' '.join(args[:2])}` did not answer within {timeout:g} s") from None


def register_node(home: Path, public_key: Path) -> int:
    """Register a SuperNode public key with the SuperLink (node authentication).

    Args:
        home: FLWR_HOME of the `flwr` CLI (with the connection config).
        public_key: the SuperNode's public key file.

    Returns:
        The node id the SuperLink assigned.

    Raises:
        DeployError: if the key is missing or registration fails.
    """
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
    """The SuperNodes the SuperLink knows, as `flwr supernode list --format json` reports them.

    Raises:
        DeployError: if the CLI output is not JSON.
    """
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
    """The `flower-supernode` command line (gRPC to the Fleet API, ClientAppIo on 127.0.0.1).

    Args:
        superlink: HOST:PORT of the Fleet API.
        runtime_port: local port for the ClientApp link.
        node_config: node config values (e.g. the client id and data path).
        ca: CA certificate, or None for --insecure.
        private_key: the node's authentication key (needs `ca`).
        max_retries: connection retries before giving up (Flower's default when None).
        max_wait: seconds of retrying before giving up (Flower's default when None).

    Returns:
        argv.

    Raises:
        DeployError: if a node key is given without TLS.
    """
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
    """Start a SuperNode (its own FLWR_HOME) that dials the Fleet API at `superlink` over gRPC.

    Args:
        home: its FLWR_HOME and working folder (supernode.log goes here).
        superlink: HOST:PORT of the Fleet API.
        node_config: node config values.
        ca: CA certificate, or None for an insecure link.
        private_key: its authentication key, or None.
        runtime_port: local ClientApp port (default: a free one).
        name: label in messages.
        env: extra environment variables.
        max_retries: see `supernode_argv`.
        max_wait: see `supernode_argv`.

    Returns:
        The started process (not yet connected; see `supernode_connected`).
    """
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
    """Render a bool, number or string as a TOML literal (anything else as a string)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def write_app(app_dir: Path, run_config: Mapping[str, object], server_app: str = SERVER_APP,
              client_app: str = CLIENT_APP, sources: Path | None = None) -> Path:
    """Write the Flower app bundle `flwr run` ships.

    The bundle is a pyproject.toml naming fedsim's ServerApp, the ClientApp and the run
    config they read; fedsim itself must be installed on the server (and, for fedsim's
    ClientApp, on every client). With `sources` (a user's own Flower project), its files go
    into the bundle too, so the nodes import the user's ClientApp from it.

    Args:
        app_dir: the bundle folder (created).
        run_config: [tool.flwr.app.config] values.
        server_app: `module:attribute` of the ServerApp.
        client_app: `module:attribute` of the ClientApp.
        sources: a folder whose files are copied in first (its pyproject.toml is replaced).

    Returns:
        `app_dir`.
    """
    if sources is not None:
        import shutil

        shutil.copytree(sources, app_dir, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", ".flwr"))
    app_dir.mkdir(parents=True, exist_ok=True)
    lines = ["[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
             "[project]", 'name = "fedsim-deploy"', 'version = "1.0.0"', "dependencies = []", "",
             "[tool.flwr.app]", 'publisher = "fedsim"', "", "[tool.flwr.app.components]",
             f'serverapp = "{server_app}"', f'clientapp = "{client_app}"', "", "[tool.flwr.app.config]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in run_config.items()]
    (app_dir / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return app_dir


def flwr_run(home: Path, app_dir: Path, log: Path) -> Proc:
    """Start `flwr run APP fedsim --stream`; the process exits when the run ends.

    Args:
        home: FLWR_HOME with the connection config.
        app_dir: the app bundle.
        log: where its streamed output goes.

    Returns:
        The started process.
    """
    argv = [str(bin_dir() / "flwr"), "run", str(app_dir), FEDERATION, "--stream"]
    return spawn("flwr run", argv, flower_env(home), log, cwd=app_dir)
