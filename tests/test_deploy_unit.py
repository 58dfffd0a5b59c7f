"""Deployment pieces that need no running processes: test credentials, a client's own
data file, command lines, CLI errors."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import (
    load_ssh_private_key,
    load_ssh_public_key,
)

from fedsim.cli.app import main
from fedsim.flower import deploy as d
from fedsim.flower.certs import make_credentials
from fedsim.flower.local_data import load_npz


def test_credentials_chain_san_and_node_keys(tmp_path):
    cr = make_credentials(tmp_path / "c", hosts=["127.0.0.1", "10.0.0.7", "fl.example.org"], clients=2)
    ca = x509.load_pem_x509_certificate(cr.ca_cert.read_bytes())
    srv = x509.load_pem_x509_certificate(cr.server_cert.read_bytes())
    # the server certificate is signed by the CA (raises if not) and names every host
    ca.public_key().verify(srv.signature, srv.tbs_certificate_bytes, padding.PKCS1v15(),
                           srv.signature_hash_algorithm)
    assert srv.issuer == ca.subject
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"),
                                                            ipaddress.ip_address("10.0.0.7")}
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # node keys: OpenSSH ECDSA on a NIST curve (what Flower 1.39 accepts), matching pairs
    assert len(cr.client_keys) == 2
    for k in range(2):
        priv = load_ssh_private_key(cr.client_keys[k].read_bytes(), password=None)
        pub = load_ssh_public_key(cr.public_key(k).read_bytes())
        assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp384r1"
        assert priv.public_key().public_numbers() == pub.public_numbers()
        assert cr.client_keys[k].stat().st_mode & 0o077 == 0  # private key not readable by others
    assert cr.server_key.stat().st_mode & 0o077 == 0


def test_credentials_bad_input(tmp_path):
    with pytest.raises(ValueError, match="hosts"):
        make_credentials(tmp_path, hosts=[])
    with pytest.raises(ValueError, match="clients"):
        make_credentials(tmp_path, clients=-1)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_local_npz_becomes_that_clients_partition(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    y = np.array([0, 1, 2, 0, 1, 2])
    p = _npz(tmp_path / "mine.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    data = load_npz(p, client=2, num_clients=4, num_classes=3, input_shape=(2,))
    assert data.num_examples().tolist() == [0, 0, 6, 0]
    sl = data.train_slice(2)
    np.testing.assert_array_equal(data.x_train[sl], x.astype(np.float32))
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.x_val[data.val_slice(2)].shape == (2, 2)
    assert data.val_slice(3) == slice(2, 2)
    # without a local test split
    p2 = _npz(tmp_path / "train_only.npz", x_train=x, y_train=y)
    assert load_npz(p2, 0, 1, 3, (2,)).val_slice(0) == slice(0, 0)


@pytest.mark.parametrize("arrays, msg", [
    (dict(x_train=np.zeros((3, 2))), "missing array 'y_train'"),
    (dict(x_train=np.zeros((3, 5)), y_train=np.zeros(3, int)), r"shape \(5,\), the scenario's model expects \(2,\)"),
    (dict(x_train=np.zeros((3, 2)), y_train=np.array([0, 1, 3])), r"class ids in \[0, 3\)"),
    (dict(x_train=np.full((3, 2), np.nan), y_train=np.zeros(3, int)), "non-finite"),
    (dict(x_train=np.zeros((3, 2)), y_train=np.zeros(3, int), x_test=np.zeros((1, 2))), "both x_test and y_test"),
])
def test_local_npz_errors_name_client_and_file(tmp_path, arrays, msg):
    p = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=msg) as e:
        load_npz(p, client=1, num_clients=2, num_classes=3, input_shape=(2,))
    assert str(e.value).startswith(f"client 1 data {p}")


def test_command_lines_default_to_loopback_grpc():
    sl = d.superlink_argv("127.0.0.1", 9093, "127.0.0.1", 9092, None, node_auth=False)
    assert sl[sl.index("--fleet-api-type") + 1] == "grpc-rere"
    assert sl[sl.index("--fleet-api-address") + 1] == "127.0.0.1:9092"
    assert "--insecure" in sl and "--disable-runtime-dependency-installation" in sl
    with pytest.raises(d.DeployError, match="needs TLS"):
        d.superlink_argv("127.0.0.1", 1, "127.0.0.1", 2, None, node_auth=True)
    sn = d.supernode_argv("127.0.0.1:9092", 9094, {"partition-id": 3, "fedsim-data": "/a b/c.npz"},
                          ca=None, private_key=None)
    assert "--grpc-rere" in sn and sn[sn.index("--host") + 1] == "127.0.0.1"
    # node config survives Flower's own parser (quoted strings with spaces)
    from flwr.common.config import parse_config_args

    assert parse_config_args([sn[sn.index("--node-config") + 1]]) == {"partition-id": 3,
                                                                       "fedsim-data": "/a b/c.npz"}
    assert d.split_address("[::1]:9092") == ("::1", 9092)
    with pytest.raises(d.DeployError, match="HOST:PORT"):
        d.split_address("localhost")


def test_app_bundle_names_fedsim_apps(tmp_path):
    import tomllib

    d.write_app(tmp_path, {"scenario": "/x/s.yaml", "num-nodes": 3, "job-timeout": 2.5})
    cfg = tomllib.loads((tmp_path / "pyproject.toml").read_text())
    assert cfg["tool"]["flwr"]["app"]["components"] == {"serverapp": "fedsim.flower.server_app:app",
                                                        "clientapp": "fedsim.flower.client_app:app"}
    assert cfg["tool"]["flwr"]["app"]["config"] == {"scenario": "/x/s.yaml", "num-nodes": 3, "job-timeout": 2.5}


def test_cli_refuses_plaintext_without_flag(tmp_path, capsys):
    assert main(["deploy", "server", "scenarios/quickstart.yaml", "--out", str(tmp_path)]) == 2
    assert "--insecure" in capsys.readouterr().err
    assert main(["deploy", "client", "--server", "127.0.0.1:9092", "--client-id", "0"]) == 2
    assert "no CA certificate" in capsys.readouterr().err
    assert main(["deploy", "client", "--server", "nohost", "--client-id", "0", "--insecure"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
    assert main(["deploy", "server", "scenarios/quickstart.yaml", "--insecure",
                 "--client-keys", str(tmp_path / "missing.pub")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # attaching to a running SuperLink takes only its CA
    assert main(["deploy", "server", "scenarios/quickstart.yaml", "--superlink", "127.0.0.1:9093",
                 "--cert", "x.pem"]) == 2
    assert "give only --ca" in capsys.readouterr().err
    assert main(["deploy", "server", "scenarios/quickstart.yaml", "--superlink", "127.0.0.1:9093"]) == 2
    assert "--superlink needs --ca" in capsys.readouterr().err


def test_cli_certs(tmp_path, capsys):
    assert main(["deploy", "certs", str(tmp_path / "creds"), "--clients", "1"]) == 0
    assert {p.name for p in (tmp_path / "creds").iterdir()} == {"ca.crt", "ca.key", "server.pem", "server.key",
                                                                "client_0", "client_0.pub"}


def test_injected_faults_are_caught_by_the_engines_validation():
    from fedsim.engine.validation import validate_update
    from fedsim.flower import client_faults as faults
    from fedsim.scenario.schema import ValidationConfig
    from fedsim.types import ClientUpdate, JobResult

    bound = ValidationConfig().max_norm  # the default bound
    ok = JobResult(7, 2, ClientUpdate(2, np.full(4, 0.5, np.float32), 10, 0), None)
    assert validate_update(ok.update, 4, 2, bound) is None
    expected = {"nan": "non-finite", "inf": "non-finite", "shape": "wrong shape", "norm": "exceeds bound"}
    for kind, why in expected.items():
        bad = faults.after(kind, ok, round_index=0)
        assert why in validate_update(bad.update, 4, 2, bound)
        assert validate_update(ok.update, 4, 2, bound) is None  # the original is untouched
    assert faults.after("nan@3", ok, round_index=0) is ok  # only in round 3
    assert "non-finite" in validate_update(faults.after("nan@3", ok, round_index=3).update, 4, 2, bound)
    with pytest.raises(faults.InjectedFault):
        faults.before("crash", 0)
    faults.before("crash@1", 0)  # not this round: no effect
    with pytest.raises(ValueError, match="kind must be one of"):
        faults.parse("explode")


def test_client_app_trains_on_the_clients_own_npz(tmp_path):
    """What a `--data` client's ClientApp does with the server's message config."""
    import hashlib
    import json

    from conftest import TINY

    from fedsim import scenario as scenario_mod
    from fedsim.flower.client_app import SCENARIO, SETUP_KEY, SHAPE, runtime_for
    from fedsim.runner import build_data
    from fedsim.training.flat import initial_params
    from fedsim.types import ClientTask, Job

    sc = scenario_mod.from_mapping(TINY)
    text = scenario_mod.to_yaml(sc)
    data = build_data(sc)  # what the server sends (as in server_app.main)
    config = {SETUP_KEY: hashlib.sha256(text.encode()).hexdigest(), SCENARIO: text,
              SHAPE: json.dumps({"num_clients": data.num_clients, "num_classes": data.num_classes,
                                 "input_shape": list(data.input_shape)})}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, *data.input_shape)).astype(np.float32)
    y = rng.integers(0, data.num_classes, 40)
    path = _npz(tmp_path / "site.npz", x_train=x, y_train=y)
    rt = runtime_for(config, str(path), 4)
    assert rt.data.num_examples().tolist() == [0, 0, 0, 0, 40, 0]
    params = initial_params(sc.model, data.input_shape, data.num_classes, 0)
    res = rt.run(Job(0, ClientTask(4, params, 0, 0, 0, 123), None))
    assert res.error is None and res.update.num_examples == 40 and res.update.delta.shape == params.shape
    # a file that does not fit the model: a failed job naming client and file, not a crash
    bad = _npz(tmp_path / "bad.npz", x_train=np.zeros((3, 7)), y_train=np.zeros(3, int))
    with pytest.raises(ValueError, match=r"client 2 data .*bad.npz"):
        runtime_for(config, str(bad), 2)


@pytest.mark.parametrize("block, line", [
    ({"dp": {"name": "local", "clip": 1.0, "noise_multiplier": 1.0}}, "dp: {name: local} is simulated by the server"),
    ({"compression": {"name": "topk"}}, "compression: simulated on the virtual clock only"),
    ({"secagg": {"name": "secagg"}}, "secagg: simulated only"),
])
def test_deploy_server_refuses_stages_it_would_only_simulate(block, line):
    from conftest import TINY, merge

    from fedsim import scenario as scenario_mod
    from fedsim.flower import serve

    sc = scenario_mod.from_mapping(merge(TINY, **block))
    with pytest.raises(d.DeployError) as info:
        serve.check_deployable_stages(sc)
    assert str(info.value).startswith(line) and "\n" not in str(info.value)
    central = scenario_mod.from_mapping(merge(TINY, dp={"name": "central", "clip": 1.0, "noise_multiplier": 1.0}))
    serve.check_deployable_stages(central)  # the server's own noise: deployable
