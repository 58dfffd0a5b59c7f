"""Write the small FedScale-style trace that scenarios/fedscale_trace.yaml uses (deterministic).

    python scenarios/fedscale_trace/make_trace.py    # rewrites devices.csv and availability.jsonl here

30 synthetic devices, not measured ones: compute speeds of 2-40 ms per sample (log-uniform),
bandwidths of 500-20000 kbit/s (log-uniform), and for each client a period (`finish_time`) of
600-1200 s holding 2-4 online intervals between sorted random cut points (about half of the
period on average). Keys are 0..29 so
that FedScale's device look-up by key (client id mod 30) finds an entry for every client
(docs/traces.md, "Mapping"). The files follow fedsim's plain schema; `fedsim trace convert`
turns them into FedScale's pickles.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CLIENTS = 30
SEED = 16  # fedsim issue 16


def devices(rng: np.random.Generator) -> list[tuple[int, float, float]]:
    """(client, ms per sample, kbit/s) rows, rounded to 2 and 0 decimals."""
    ms = np.exp(rng.uniform(np.log(2.0), np.log(40.0), CLIENTS))
    kbps = np.exp(rng.uniform(np.log(500.0), np.log(20000.0), CLIENTS))
    return [(c, round(float(m), 2), float(round(float(b)))) for c, (m, b) in enumerate(zip(ms, kbps, strict=True))]


def availability(rng: np.random.Generator) -> list[dict]:
    """One FedScale behaviour entry per client: integer interval ends inside [0, finish_time)."""
    out = []
    for c in range(CLIENTS):
        finish = int(rng.integers(600, 1201))
        parts = int(rng.integers(2, 5))
        # 2·parts distinct sorted cut points, paired into (active, inactive) intervals
        cuts = np.sort(rng.choice(np.arange(1, finish), size=2 * parts, replace=False))
        out.append({"client": c, "active": [int(a) for a in cuts[0::2]], "inactive": [int(b) for b in cuts[1::2]],
                    "finish_time": finish})
    return out


def main() -> None:
    """Write devices.csv and availability.jsonl beside this script."""
    rng = np.random.default_rng(SEED)
    rows = ["client,compute_ms_per_sample,bandwidth_kbps"] + [f"{c},{m!r},{b!r}" for c, m, b in devices(rng)]
    (HERE / "devices.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    lines = [json.dumps(entry) for entry in availability(rng)]
    (HERE / "availability.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
