"""The client link is gRPC, over TLS, and only registered node keys may join.

A real SuperLink (TLS + node authentication) on free 127.0.0.1 ports and SuperNodes as
separate processes; every process is stopped by its PID in the fixture teardown.
"""

from __future__ import annotations

import socket
import ssl
import subprocess

import grpc
import pytest
from packaging.version import Version

from fedsim.flower import deploy as d
from fedsim.flower.certs import make_credentials

pytestmark = [pytest.mark.slow]


def test_pinned_flower_has_grpc_fleet():
    import flwr

    assert Version(flwr.__version__) < Version("1.40"), "flwr 1.40+ moved the SuperNode link to HTTP"
    out = subprocess.run([str(d.bin_dir() / "flower-supernode"), "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    assert "--grpc-rere" in out


@pytest.fixture(scope="module")
def link(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grpc")
    cr = make_credentials(tmp / "creds", clients=2)
    home = tmp / "server"
    sl = d.start_superlink(home, tls=d.ServerTls(cr.ca_cert, cr.server_cert, cr.server_key), node_auth=True)
    procs: list[d.Proc] = []
    try:
        d.write_connection(home, sl.control, cr.ca_cert)
        d.register_node(home, cr.public_key(0))  # client_1's key is never registered
        yield sl, cr, tmp, procs, home
    finally:
        for p in procs:
            p.stop()
        sl.stop()
        assert not sl.proc.alive() and not d._group_alive(sl.proc.pid)
        for p in procs:
            assert not d._group_alive(p.pid)


def test_fleet_link_is_grpc_over_tls(link):
    sl, cr, tmp, procs, home = link
    host, port = d.split_address(sl.fleet)
    assert f"Starting Fleet API (gRPC-rere) on {sl.fleet}" in sl.proc.log_text()

    node = d.start_supernode(tmp / "n0", sl.fleet, {"partition-id": 0}, ca=cr.ca_cert,
                             private_key=cr.client_keys[0], name="client 0")
    procs.append(node)
    d.wait_until(lambda: d.supernode_connected(node), 90, "client 0 to join", node)
    # the SuperNode holds an established TCP connection to the Fleet port
    ss = subprocess.run(["ss", "-tnpH", "state", "established", f"dport = :{port}"], capture_output=True,
                        text=True, timeout=10).stdout
    assert f"pid={node.pid}," in ss or "flower-supernod" in ss
    # TLS on the Fleet port negotiates HTTP/2 (ALPN h2): the gRPC transport
    ctx = ssl.create_default_context(cafile=str(cr.ca_cert))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection((host, port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
        assert s.selected_alpn_protocol() == "h2"
    # ... and a gRPC server answers there: Fleet RPCs demand node signatures, unknown methods are UNIMPLEMENTED
    creds = grpc.ssl_channel_credentials(cr.ca_cert.read_bytes())
    with grpc.secure_channel(sl.fleet, creds) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/flwr.proto.Fleet/GetRun")(b"", timeout=5)
        assert e.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT)
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/no.such.Service/Method")(b"", timeout=5)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # the Control API port is plain HTTPS (HTTP/1.1), not gRPC
    chost, cport = d.split_address(sl.control)
    with socket.create_connection((chost, cport), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=chost) as s:
        assert s.selected_alpn_protocol() != "h2"
    assert {n["status"] for n in d.list_nodes(home)} == {"online"}


def test_unregistered_key_is_refused(link):
    sl, cr, tmp, procs, home = link
    rogue = d.start_supernode(tmp / "n1", sl.fleet, {"partition-id": 1}, ca=cr.ca_cert,
                              private_key=cr.client_keys[1], name="client 1", max_retries=0)
    procs.append(rogue)
    rc = rogue.popen.wait(90)
    assert rc != 0  # Flower maps every fatal error to exit status 1
    assert "Failed to activate SuperNode" in rogue.log_text()
    d.wait_until(lambda: "No SuperNode found with the given public key" in sl.proc.log_text(), 10,
                 "the SuperLink to log the refusal")
    assert "SuperNode ID:" not in rogue.log_text()
