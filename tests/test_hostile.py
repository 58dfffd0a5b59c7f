"""Hostile scenario files: every malformed or adversarial input must end with ONE line on
stderr and exit code 2 — never a traceback, never a hang, never a huge allocation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.cli import app as cli

ROOT = Path(__file__).resolve().parents[1]

# A valid, tiny scenario (one round on a 4-client Gaussian mixture) used as the base of
# the hostile files whose problem only shows up when data, model or traces load.
BASE = ("name: hostile\n"
        "data: {dataset: {name: gaussian_mixture, num_samples: 200, num_test: 50, dim: 3}, num_clients: 4}\n"
        "model: {name: logreg, device: cpu}\n"
        "engine: {rounds: 1}\n")


def _bomb(levels: int = 9, width: int = 9) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def _nested_bomb() -> str:
    # Only valid keys; anchors defined inside the value itself; 72 aliases (under the alias
    # limit) that expand to 9^9 values if anything walks the structure naively.
    levels = ["&x0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"&x{i} [{', '.join([f'*x{i - 1}'] * 9)}]" for i in range(1, 9)]
    return BASE + f"participation: {{name: bernoulli, probs: [{', '.join(levels)}]}}\n"


# File name -> contents (bytes or str). Each is rejected before or while the run starts.
LOAD_TIME: dict[str, bytes | str] = {
    "empty.yaml": "",
    # explicit probability lists that are not lists of numbers (used to reach an AttributeError)
    "probs_nested_list.yaml": BASE + "participation: {name: bernoulli, probs: [[0.5, 0.5, 0.5, 0.5]]}\n",
    "probs_strings.yaml": BASE + "participation: {name: markov, probs: [a, b, c, d]}\n",
    "probs_nan.yaml": BASE + "participation: {name: cyclic, probs: [0.5, .nan, 0.5, 0.5]}\n",
    "comment_only.yaml": "# nothing here\n",
    "top_list.yaml": "- 1\n- 2\n",
    "top_scalar.yaml": "42\n",
    "top_string.yaml": "just a string\n",
    "non_utf8.yaml": b"name: caf\xe9\ndata: {dataset: {name: digits}}\n",
    "utf16.yaml": "name: x\n".encode("utf-16"),
    "binary_junk.yaml": bytes(range(256)) * 8,
    "nul_bytes.yaml": b"name: a\x00b\n",
    "invalid_yaml.yaml": "data: {dataset: [unclosed\n",
    "tabs.yaml": "data:\n\t dataset: x\n",
    "duplicate_keys.yaml": BASE + "engine: {rounds: 2}\n",
    "multi_document.yaml": BASE + "---\nname: other\n",
    "python_tag.yaml": "!!python/object/apply:os.system ['echo pwned']\n",
    "python_tag_nested.yaml": "name: !!python/name:os.system\n",
    "binary_tag.yaml": "data: !!binary aGVsbG8=\n",
    "alias_bomb.yaml": _bomb(),
    "alias_bomb_nested.yaml": _nested_bomb(),
    "recursive_alias.yaml": "data: &d {dataset: {name: digits}, partition: *d}\n",
    "recursive_list.yaml": "model: &m {name: mlp, hidden: &h [1, *h]}\n",
    "deep_flow.yaml": "data: " + "[" * 5000 + "]" * 5000 + "\n",
    "deep_mapping.yaml": "data: " + "{a: " * 200 + "1" + "}" * 200 + "\n",
    "deep_but_parseable.yaml": BASE + "metrics: " + "{a: " * 40 + "1" + "}" * 40 + "\n",
    "huge_file.yaml": "name: x\n" + "# padding\n" * 150_000,
    "wrong_type_clients.yaml": BASE.replace("num_clients: 4", "num_clients: four"),
    "float_clients.yaml": BASE.replace("num_clients: 4", "num_clients: 4.5"),
    "bool_clients.yaml": BASE.replace("num_clients: 4", "num_clients: true"),
    "negative_clients.yaml": BASE.replace("num_clients: 4", "num_clients: -3"),
    "zero_clients.yaml": BASE.replace("num_clients: 4", "num_clients: 0"),
    "huge_int.yaml": BASE.replace("num_clients: 4", "num_clients: 123456789012345678901234567890"),
    "huge_float.yaml": BASE.replace("num_clients: 4", "num_clients: 1e400"),
    "nan_value.yaml": BASE + "client: {lr: .nan}\n",
    "inf_value.yaml": BASE + "client: {lr: .inf}\n",
    "negative_size.yaml": BASE + "client: {batch_size: -16}\n",
    "negative_rounds.yaml": BASE.replace("rounds: 1", "rounds: -1"),
    "date_seed.yaml": BASE + "seed: 2024-01-01\n",
    "negative_seed.yaml": BASE + "seed: -7\n",
    "list_for_mapping.yaml": BASE + "client: [1, 2, 3]\n",
    "mapping_for_list.yaml": BASE.replace("model: {name: logreg, device: cpu}", "model: {name: mlp, hidden: {a: 1}}"),
    "unknown_top_key.yaml": BASE + "optimiser: sgd\n",
    "unknown_nested_key.yaml": BASE + "client: {learning_rate: 0.1}\n",
    "non_string_key.yaml": BASE + "1: 2\n",
    "complex_key.yaml": BASE + "? [a, b]\n: 1\n",
    "unknown_dataset.yaml": BASE.replace("gaussian_mixture", "imagenet22k"),
    "unknown_strategy.yaml": BASE + "strategy: {name: fedavgg}\n",
    "unknown_model.yaml": BASE.replace("logreg", "transformer"),
    "unknown_executor.yaml": BASE + "executor: {name: kubernetes}\n",
    "plugin_without_name.yaml": BASE.replace("{name: gaussian_mixture, ", "{"),  # no default dataset
    "plugin_name_not_string.yaml": BASE + "strategy: {name: [fedavg]}\n",
    "plugin_is_function.yaml": BASE + "strategy: {name: 'os:system'}\n",
    "plugin_missing_module.yaml": BASE + "strategy: {name: 'no_such_module_xyz:Thing'}\n",
    "bad_literal.yaml": BASE.replace("rounds: 1", "rounds: 1, mode: sideways"),
    "probability_above_one.yaml": BASE + "system: {dropout_prob: 1.5}\n",
    "low_above_high.yaml": BASE + "system: {compute: {name: uniform, low: 2.0, high: 1.0}}\n",
    "path_in_name.yaml": BASE.replace("name: hostile", "name: ../../etc"),
    "directory.yaml": None,  # a directory, created by the test
    "missing.yaml": None,  # never created
}

# Problems only visible once data, model or participation traces load (`fedsim run`).
RUN_TIME: dict[str, str] = {
    "cnn_on_vectors.yaml": BASE.replace("logreg", "cnn"),
    "cuda_without_gpu.yaml": BASE.replace("device: cpu", "device: cuda"),
    "more_clients_than_examples.yaml": BASE.replace("num_clients: 4", "num_clients: 1000"),
    "dirichlet_impossible.yaml": BASE.replace(
        "num_clients: 4", "num_clients: 20, partition: {name: dirichlet, alpha: 0.01, min_size: 9}"),
    "shards_impossible.yaml": BASE.replace("num_clients: 4", "num_clients: 4, partition: {name: shards, "
                                           "shards_per_client: 1000}"),
    "pathological_impossible.yaml": BASE.replace("num_clients: 4", "num_clients: 4, partition: {name: "
                                                 "pathological, classes_per_client: 50}"),
    "quantity_skew_overflow.yaml": BASE.replace("num_samples: 200", "num_samples: 2000").replace(
        "num_clients: 4", "num_clients: 1000, partition: {name: quantity_skew, distribution: exponential}"),
    "uniform_k_too_large.yaml": BASE + "participation: {name: uniform, k: 50}\n",
    "probs_wrong_length.yaml": BASE + "participation: {name: bernoulli, probs: [0.5, 0.5]}\n",
    "trace_missing.yaml": BASE + "participation: {name: trace, path: no_such_trace.csv}\n",
    "trace_bad_row.yaml": BASE + "participation: {name: trace, path: bad_row.csv}\n",
    "trace_bad_client.yaml": BASE + "participation: {name: trace, path: bad_client.csv}\n",
    "trace_non_utf8.yaml": BASE + "participation: {name: trace, path: latin1.csv}\n",
    "trace_no_header.yaml": BASE + "participation: {name: trace, path: no_header.csv}\n",
    "trace_device_file.yaml": BASE + "participation: {name: trace, path: /dev/zero}\n",
    "model_too_large.yaml": BASE.replace("logreg, device: cpu", "mlp, device: cpu, hidden: [1000000, 1000000]"),
    "data_too_large.yaml": BASE.replace("num_samples: 200, num_test: 50, dim: 3",
                                        "num_samples: 50000000, num_test: 50, dim: 100000"),
}

TRACES = {
    "bad_row.csv": "client,start,end\n0,0,1\n1,zero,2\n",
    "bad_client.csv": "client,start,end\n0,0,1\n99,0,2\n",
    "latin1.csv": b"client,start,end\n0,0,1\n\xe9\xe8,0,1\n",
    "no_header.csv": "0,0,1\n1,0,2\n",
}

# Overrides (`key.path=value`) with junk, applied to the valid BASE scenario.
BAD_OVERRIDES = [
    "=5", "a..b=1", "data=5", "engine=5", "engine.rounds=many", "engine.rounds=1e400",
    "client.lr=-1", "seed=&a [*a]", "engine.rounds=" + _bomb(8, 9),
    "model.hidden.0=5", "strategy.name=nosuch", "data.num_clients=[[[[", "x=" + "[" * 3000 + "]" * 3000,
    "name=a/b", "engine.deadline=.nan",
]


def _write(folder: Path, name: str, content: bytes | str | None) -> Path:
    path = folder / name
    if name == "directory.yaml":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _assert_one_line_error(rc: int, err: str, what: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note: ")]
    assert rc == 2, f"{what}: exit code {rc}, stderr: {err[-2000:]}"
    assert len(lines) == 1, f"{what}: expected one error line, got {len(lines)}:\n{err[-2000:]}"
    assert lines[0].startswith("error: "), f"{what}: {lines[0]!r}"
    assert "Traceback" not in err and len(lines[0]) < 2000, what


@pytest.fixture
def hostile_dir(tmp_path: Path) -> Path:
    for name, content in TRACES.items():
        _write(tmp_path, name, content)
    return tmp_path


@pytest.mark.parametrize("name", sorted(LOAD_TIME))
def test_validate_rejects_with_one_line(name, hostile_dir, capsys):
    path = _write(hostile_dir, name, LOAD_TIME[name])
    rc = cli.main(["validate", str(path)])
    out = capsys.readouterr()
    _assert_one_line_error(rc, out.err, name)
    assert str(path) in out.err  # names the file


@pytest.mark.parametrize("name", sorted(RUN_TIME))
def test_run_rejects_with_one_line(name, hostile_dir, capsys):
    path = _write(hostile_dir, name, RUN_TIME[name])
    rc = cli.main(["run", str(path), "--quiet", "--out", str(hostile_dir / "out" / name)])
    out = capsys.readouterr()
    _assert_one_line_error(rc, out.err, name)
    assert not (hostile_dir / "out" / name / "metrics.jsonl").exists()  # failed before training


@pytest.mark.parametrize("override", BAD_OVERRIDES, ids=range(len(BAD_OVERRIDES)))
def test_bad_overrides_rejected(override, hostile_dir, capsys):
    path = _write(hostile_dir, "base.yaml", BASE)
    rc = cli.main(["run", str(path), "--quiet", "--out", str(hostile_dir / "out"), override])
    _assert_one_line_error(rc, capsys.readouterr().err, override[:60])


def test_results_folder_that_is_a_file(hostile_dir, capsys):
    path = _write(hostile_dir, "base.yaml", BASE)
    blocker = _write(hostile_dir, "blocker", "not a folder")
    rc = cli.main(["run", str(path), "--quiet", "--out", str(blocker)])
    _assert_one_line_error(rc, capsys.readouterr().err, "--out is a file")


def test_yaml_12_numbers_and_top_level_name_override(hostile_dir, capsys):
    """`1e-3` is a number (PyYAML alone reads it as a string); `name=...` only renames."""
    from fedsim.scenario.loading import load

    path = _write(hostile_dir, "base.yaml", BASE + "client: {lr: 1e-3}\n")
    sc = load(path, ["name=renamed", "engine.deadline=2.5e1"])
    assert sc.client.lr == 0.001 and sc.engine.deadline == 25.0
    assert sc.name == "renamed" and sc.data.num_clients == 4  # nothing else dropped


def test_real_cli_subprocess_no_traceback_no_hang(hostile_dir):
    """The real entry point, as a user runs it: one `validate` over many hostile files
    prints exactly one line per file; a few `run`s end quickly with exit code 2."""
    names = ["alias_bomb.yaml", "alias_bomb_nested.yaml", "recursive_alias.yaml", "deep_flow.yaml",
             "non_utf8.yaml", "binary_junk.yaml", "empty.yaml", "directory.yaml", "top_list.yaml",
             "huge_int.yaml", "negative_size.yaml", "unknown_strategy.yaml", "duplicate_keys.yaml"]
    paths = [_write(hostile_dir, n, LOAD_TIME[n]) for n in names]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "fedsim", "validate", *map(str, paths)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == len(paths), res.stderr
    for p, line in zip(paths, lines, strict=True):
        assert line.startswith(f"error: {p}"), line
    # A data-time failure (bad trace row) through `run`; per-client data, so no partitioner import.
    path = _write(hostile_dir, "linreg_bad_trace.yaml",
                  "data: {dataset: {name: linear_regression}, partition: {name: natural}, num_clients: 4}\n"
                  "model: {name: linear, device: cpu}\nengine: {rounds: 1}\n"
                  "participation: {name: trace, path: bad_row.csv}\n")
    res = subprocess.run([sys.executable, "-m", "fedsim", "run", str(path), "--quiet", "--out",
                          str(hostile_dir / "out")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    _assert_one_line_error(res.returncode, res.stderr, "linreg_bad_trace.yaml")
    assert "bad_row.csv:3" in res.stderr  # names the file and line


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_validate_refuses_files_that_are_not_regular(kind, tmp_path, capsys):
    """A FIFO used to block forever in open(); /dev/zero used to end in MemoryError."""
    import os
    import threading

    if kind == "fifo":
        path = tmp_path / "scenario.yaml"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
        if not path.exists():
            pytest.skip("no /dev/zero on this system")
    result: dict[str, int] = {}
    worker = threading.Thread(target=lambda: result.update(rc=cli.main(["validate", str(path)])), daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive() and kind == "fifo":  # unblock the reader so the test process can exit
        with open(path, "w") as fh:
            fh.write("name: x\n")
        worker.join(5)
    assert "rc" in result, f"fedsim validate {kind} did not return"
    out = capsys.readouterr()
    _assert_one_line_error(result["rc"], out.err, kind)
    assert "not a regular file" in out.err


def test_validate_reports_every_problem_at_once(tmp_path, capsys):
    """Key errors of every block, then (once those are fixed) every cross-field error: one line
    each, all in one run of `fedsim validate`, like torchtune's config validator."""
    keys = _write(tmp_path, "keys.yaml", "name: m\ndata: {dataset: {name: digits}, num_clients: -3, "
                  "test_fracton: 0.2}\nclient: {lr: -1, batch_size: 0}\nengine: {rounds: 0}\n")
    assert cli.main(["validate", str(keys)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(": ")[2] for ln in lines] == ["data.num_clients", "data.test_fracton", "client.lr",
                                                   "client.batch_size", "engine.rounds"]
    assert all(ln.startswith(f"error: {keys}: ") for ln in lines)
    cross = _write(tmp_path, "cross.yaml", BASE.replace("engine: {rounds: 1}", "engine: {mode: async, max_versions: 3}")
                   + "participation: {name: uniform, k: 5}\nrobust: {name: median}\n")
    assert cli.main(["validate", str(cross)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(": ")[2] for ln in lines] == ["participation.k", "robust.name", "engine.mode"]


@pytest.mark.parametrize("participation", ["{name: uniform, k: 5}", "{name: bernoulli, probs: [0.5, 0.5]}",
                                           "{name: markov, probs: [0.5]}", "{name: cyclic, probs: [0.5, 0.5, 0.5]}"])
def test_participation_that_does_not_fit_the_clients_fails_validate(tmp_path, capsys, participation):
    path = _write(tmp_path, "p.yaml", BASE + f"participation: {participation}\n")  # BASE has 4 clients
    rc = cli.main(["validate", str(path)])
    _assert_one_line_error(rc, capsys.readouterr().err, participation)


def test_checkpoints_with_the_wall_clock_are_refused_in_one_line(tmp_path, capsys):
    """checkpoint.every with engine.clock: wall used to validate as ok and then write nothing."""
    path = _write(tmp_path, "wall.yaml", BASE.replace("engine: {rounds: 1}", "engine: {mode: async, clock: wall, "
                  "max_versions: 3}") + "strategy: {name: fedbuff, buffer_size: 2}\ncheckpoint: {every: 2}\n")
    rc = cli.main(["validate", str(path)])
    err = capsys.readouterr().err
    _assert_one_line_error(rc, err, "wall checkpoint")
    assert "checkpoint.every: checkpoints are not implemented for engine.clock: wall" in err
