from conftest import LINREG, TINY, merge, read_metrics, run_raw


def test_tiny_runs_and_learns(tmp_path):
    res = run_raw(merge(TINY, engine={"rounds": 10}), tmp_path)
    rows = read_metrics(tmp_path)
    assert rows[0]["round"] == 0 and rows[-1]["round"] == 10
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"] + 0.2
    assert res.params.dtype.name == "float32"


def test_fedavg_linear_regression_reaches_closed_form_optimum(tmp_path):
    # Full participation, 1 full-batch GD step per round: FedAvg is centralised GD on the
    # (uniformly weighted, equal-size clients) least-squares objective -> w*.
    run_raw(LINREG, tmp_path)
    assert read_metrics(tmp_path)[-1]["optimum_distance"] < 1e-3
