"""Figures from run folders: convergence, fairness, participation, async, contributions, privacy, communication.

Only the output files are read (their layout: docs/tutorial.md).

Pure functions: groups of runs in, a matplotlib `Figure` out. Figures are built with
`matplotlib.figure.Figure` directly (no pyplot, no global state, headless); `save` picks
PNG/SVG/PDF from the file name. Runs of the same scenario with different seeds form a
group drawn as mean ± one standard deviation over seeds; one colour per group.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FuncFormatter, LogLocator, MaxNLocator

from fedsim.errors import PlotError
from fedsim.results.rundata import Group, Run, find_runs, group_runs

KINDS = ("convergence", "fairness", "participation", "async", "contributions", "privacy", "communication")
FORMATS = (".png", ".svg", ".pdf")
DPI = 100
GRID_POINTS = 200  # time axes: seeds are interpolated onto this many points
MAX_ROWS = 6  # per-run panels (participation, contributions): at most this many groups
WEIGHT_KEY = "fedau_weight"
CONTRIBUTION_KEY = "fedce_contribution"


def _colour(i: int) -> tuple[float, ...]:
    from matplotlib import colormaps

    if i < 10:
        return colormaps["tab10"](i)
    return colormaps["Dark2"]((i - 10) % 8)  # an 11th group must not repeat the first one's colour


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


# --- series over seeds ---------------------------------------------------------------------


def _by_step(runs: Sequence[Run], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Stack a metric over seeds against evaluation steps: (x, y[run, step]).

    Seeds evaluated at the same steps (sync) are stacked as they are; otherwise (async runs
    evaluated on virtual time commit different versions) they are interpolated onto a shared
    grid.
    """
    steps = [np.array([r.get(run.step_key) for r in run.metrics], dtype=float) for run in runs]
    if all(len(s) == len(steps[0]) and np.array_equal(s, steps[0]) for s in steps):
        return steps[0], np.vstack([run.series(key) for run in runs])
    return _by_time(runs, runs[0].step_key, key)


def _by_time(runs: Sequence[Run], xkey: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate a metric over seeds onto a shared grid up to the earliest end: (x, y[run, point])."""
    xs = [run.series(xkey) for run in runs]
    if len(runs) == 1:
        return xs[0], runs[0].series(key)[None, :]
    grid = np.linspace(max(x[0] for x in xs), min(x[-1] for x in xs), GRID_POINTS)
    return grid, np.vstack([np.interp(grid, x, run.series(key)) for x, run in zip(xs, runs, strict=True)])


def _band(ax, x: np.ndarray, y: np.ndarray, colour, label: str | None, positive: bool = False, **kw) -> None:
    """Draw the mean line and ± one std band over seeds (rows of y).

    With `positive` (a log axis) the band's lower edge stays above zero, at most a factor 10
    below the mean.
    """
    mean = np.nanmean(y, axis=0) if np.isfinite(y).any() else y[0]
    ax.plot(x, mean, color=colour, label=label, **kw)
    if y.shape[0] > 1:
        std = np.nanstd(y, axis=0)
        lo = np.maximum(mean - std, mean / 10) if positive else mean - std
        ax.fill_between(x, lo, mean + std, color=colour, alpha=0.2, linewidth=0)


def _figure_legend(fig: Figure, groups: Sequence[Group], title: str) -> None:
    """The figure's title and one legend above the panels: a colour per group."""
    from matplotlib.lines import Line2D

    labels = _strip_common_block([_legend_label(g) for g in groups])
    handles = [Line2D([], [], color=_colour(i), linewidth=2) for i in range(len(groups))]
    longest = max(map(len, labels))
    ncols = min(1 if longest > 75 else 2 if longest > 40 else 3, len(labels))  # long labels: fewer columns
    fig.legend(handles, labels, loc="outside upper center", ncols=ncols, fontsize="small", frameon=False,
               title=title, title_fontproperties={"size": "large"})


def _strip_common_block(labels: list[str]) -> list[str]:
    """Drop a scenario block shared by every `key=value` of every label (`compression.name=topk` → `name=topk`).

    The block is named once instead, in front of the first label, so long sweep labels fit.
    """
    parts = [label.split(" (")[0].split(", ") for label in labels]
    blocks = {p.split("=", 1)[0].split(".", 1)[0] for ps in parts for p in ps if "=" in p}
    dotted = all("=" in p and "." in p.split("=", 1)[0] for ps in parts for p in ps)
    if len(blocks) != 1 or not dotted:
        return labels
    block = blocks.pop() + "."
    out = [label.replace(block, "") for label in labels]
    out[0] = f"{block.rstrip('.')}: {out[0]}"
    return out


def _legend_label(g: Group) -> str:
    return g.label + (f" ({len(g.runs)} seeds)" if len(g.runs) > 1 else "")


def _regression(groups: Sequence[Group]) -> bool:
    return all(r.regression for g in groups for r in g.runs)


# --- convergence ---------------------------------------------------------------------------


def convergence(groups: Sequence[Group]) -> Figure:
    """Test accuracy and test loss against rounds/versions, virtual time and wall time.

    Regression runs show the distance to the optimum (or only the loss) instead of accuracy.

    Args:
        groups: runs grouped by scenario (seeds pooled as mean ± one std).

    Returns:
        The figure.
    """
    regression = _regression(groups)
    top = "optimum_distance" if regression and any(r.has("optimum_distance") for g in groups for r in g.runs) \
        else ("test_loss" if regression else "test_accuracy")
    rows = [top] if top == "test_loss" else [top, "test_loss"]
    step_name = "round" if all(r.step_key == "round" for g in groups for r in g.runs) else "round / version"
    fig = _figure(13, 3.4 * len(rows) + 0.6)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for i, g in enumerate(groups):
        c = _colour(i)
        for row, key in enumerate(rows):
            log = key != "test_accuracy"
            x, y = _by_step(g.runs, key)
            _band(axes[row, 0], x, y, c, None, positive=log)
            for col, xkey in ((1, "virtual_time"), (2, "wall_time")):
                x, y = _by_time(g.runs, xkey, key)
                _band(axes[row, col], x, y, c, None, positive=log)
    for row, key in enumerate(rows):
        for col, xlabel in enumerate((step_name, "virtual time (s)", "wall time (s)")):
            ax = axes[row, col]
            ax.set_xlabel(xlabel)
            ax.set_ylabel(key.replace("_", " "))
            ax.grid(alpha=0.3)
            if key != "test_accuracy":
                ax.set_yscale("log")
    _figure_legend(fig, groups, "Convergence" + (" (mean ± std over seeds)" if any(len(g.runs) > 1 for g in groups)
                                                 else ""))
    return fig


# --- fairness ------------------------------------------------------------------------------


def _client_values(run: Run, regression: bool) -> tuple[np.ndarray, np.ndarray]:
    steps, vals = run.client_matrix("loss" if regression else "accuracy")
    if len(steps) == 0:
        raise PlotError(f"{run.path / 'clients.jsonl'}: no per-client rows (was metrics.client_metrics off?)")
    return steps, vals


def _worst10(v: np.ndarray, regression: bool) -> float:
    a = np.sort(v[np.isfinite(v)])
    if len(a) == 0:
        return np.nan
    k = max(1, int(np.ceil(0.1 * len(a))))
    return float(a[-k:].mean() if regression else a[:k].mean())  # worst = highest loss / lowest accuracy


def _fair_stats(vals: np.ndarray, regression: bool) -> np.ndarray:
    """Rows: q25, median, q75, worst-10% mean, std, Jain's index — per step of vals[step, client]."""
    out = np.full((6, len(vals)), np.nan)
    for t, v in enumerate(vals):
        a = v[np.isfinite(v)]
        if len(a):
            out[:3, t] = np.percentile(a, [25, 50, 75])
            out[3, t] = _worst10(a, regression)
            out[4, t] = a.std()
            sq = float(np.sum(a * a))
            out[5, t] = a.sum() ** 2 / (len(a) * sq) if sq > 0 else 1.0  # as fedsim.training.evaluation.fairness
    return out


def fairness(groups: Sequence[Group]) -> Figure:
    """Per-client accuracy over time, Jain's index, its std, and the sorted final profile.

    Accuracy over time is drawn as median, IQR and worst 10%; the profile is the final
    per-client accuracy sorted. Regression runs use per-client loss (worst = highest) and have
    no Jain panel.

    Args:
        groups: runs grouped by scenario (seeds pooled as mean ± one std).

    Returns:
        The figure.
    """
    regression = _regression(groups)
    what = "client loss" if regression else "client accuracy"
    fig = _figure(12, 8)
    (ax_dist, ax_jain), (ax_std, ax_prof) = fig.subplots(2, 2)
    for i, g in enumerate(groups):
        c = _colour(i)
        per_run = []
        for run in g.runs:
            steps, vals = _client_values(run, regression)
            final = np.sort(vals[-1][np.isfinite(vals[-1])])
            per_run.append((steps, _fair_stats(vals, regression), final[::-1] if regression else final))
        common = per_run[0][0]
        for steps, _, _ in per_run[1:]:
            common = np.intersect1d(common, steps)
        st = np.stack([s[:, np.isin(steps, common)] for steps, s, _ in per_run])  # (seeds, 6, T)
        s = np.nanmean(st, axis=0) if np.isfinite(st).any() else st[0]
        ax_dist.plot(common, s[1], color=c)
        ax_dist.fill_between(common, s[0], s[2], color=c, alpha=0.2, linewidth=0)
        ax_dist.plot(common, s[3], color=c, linestyle="--")
        _band(ax_std, common, st[:, 4], c, g.label)
        if not regression:
            _band(ax_jain, common, st[:, 5], c, g.label)
        n = min(len(p) for _, _, p in per_run)
        if n:
            prof = np.vstack([p[:n] for _, _, p in per_run])
            _band(ax_prof, (np.arange(n) + 0.5) / n, prof, c, g.label, drawstyle="steps-mid")
    unit = "round" if all(r.step_key == "round" for g in groups for r in g.runs) else "version"
    ax_dist.set(title=f"{what}: median, IQR band, worst 10% (dashed)", xlabel=unit, ylabel=what)
    ax_std.set(title=f"std of {what}", xlabel=unit, ylabel="std")
    ax_prof.set(title="fairness profile: final " + what + (" (worst first)" if regression else " sorted"),
                xlabel="client quantile", ylabel=what)
    if regression:
        ax_jain.text(0.5, 0.5, "Jain's index needs per-client accuracy\n(regression run)", ha="center",
                     va="center", transform=ax_jain.transAxes)
        ax_jain.set_axis_off()
    else:
        ax_jain.set(title="Jain's index of client accuracy", xlabel=unit, ylabel="Jain's index")
    for ax in (ax_dist, ax_jain, ax_std, ax_prof):
        ax.grid(alpha=0.3)
    _figure_legend(fig, groups, "Fairness across clients")
    return fig


# --- participation -------------------------------------------------------------------------


def _heat(run: Run) -> tuple[np.ndarray, str, tuple[float, float], np.ndarray, np.ndarray]:
    """Bin a run's arrivals for the participation heatmap.

    Returns:
        Share of each (client bin, time bin) cell that delivered an update, the x label, the x
        extent, per-client arrival counts, and drop points (time, client).
    """
    n = int(run.scenario.get("data", {}).get("num_clients") or 0)
    arrive = [e for e in run.events if e.get("kind") == "arrive" and isinstance(e.get("client"), int)]
    drops = [e for e in run.events if e.get("kind") == "drop" and isinstance(e.get("client"), int)]
    n = max([n] + [e["client"] + 1 for e in arrive + drops])
    if n == 0:
        raise PlotError(f"{run.path / 'events.jsonl'}: no client events to draw")
    sync = run.mode == "sync"
    if sync:
        pos = lambda e: float(e.get("round", e.get("version") or 0))  # noqa: E731 — sync: version == round
        span = 1.0 + max([pos(e) for e in arrive + drops] + [float(run.metrics[-1].get("round") or 0) - 1])
        cols = int(min(span, 300))
    else:
        pos = lambda e: float(e["virtual_time"])  # noqa: E731
        span = max([pos(e) for e in arrive + drops] + [1e-9])
        cols = 120
    rows = min(n, 200)
    grid = np.zeros((rows, cols))
    counts = np.zeros(n)
    for e in arrive:
        c = e["client"]
        counts[c] += 1
        grid[c * rows // n, min(cols - 1, int(pos(e) / span * cols))] += 1
    per_cell = (n / rows) * (span / cols if sync else 1.0)
    drop_pts = np.array([(pos(e) + (0.5 if sync else 0.0), e["client"] + 0.5) for e in drops]).reshape(-1, 2)
    label = "round" if sync else "virtual time (s)"
    return grid / per_cell if sync else grid, label, (0.0, span), counts, drop_pts


def participation(groups: Sequence[Group], weight_key: str = WEIGHT_KEY) -> Figure:
    """Who took part when, participation against the true p_n, and FedAU-style weights against 1/p_n.

    The heatmap is client × round (or virtual time) from events.jsonl, red = dropped; each
    client's participation rate is drawn against its true p_n when known, and the weight
    estimates (clients.jsonl column `weight_key`) against the true 1/p_n. One row per group
    (its first seed), at most MAX_ROWS groups.

    Args:
        groups: runs grouped by scenario (seeds pooled as mean ± one std).
        weight_key: the clients.jsonl column holding per-client aggregation weights.

    Returns:
        The figure.

    Raises:
        PlotError: if a run has no client events.
    """
    shown = list(groups)[:MAX_ROWS]
    weights = any(weight_key in g.runs[0].client_keys() for g in shown)
    fig = _figure(14 if weights else 11, 3.6 * len(shown) + 0.6)
    axes = fig.subplots(len(shown), 3 if weights else 2, squeeze=False,
                        width_ratios=[3, 1.2, 1.2] if weights else [3, 1.2])
    for i, g in enumerate(shown):
        run = g.runs[0]
        ax_h, ax_p = axes[i][:2]
        grid, xlabel, (x0, x1), counts, drops = _heat(run)
        n = len(counts)
        im = ax_h.imshow(grid, aspect="auto", origin="lower", cmap="Blues", interpolation="nearest",
                         extent=(x0, x1, 0, n), vmin=0, vmax=max(1.0, float(grid.max())) if run.mode != "sync" else 1.0)
        if len(drops) and len(drops) <= 20000:
            ax_h.scatter(drops[:, 0], drops[:, 1], s=4, color="tab:red", marker="s", linewidths=0, label="dropped")
            ax_h.legend(loc="upper right", fontsize="x-small")
        fig.colorbar(im, ax=ax_h, label="took part" if run.mode == "sync" else "updates per cell", pad=0.01)
        ax_h.set(title=f"{g.label} (seed {run.seed}): who took part", xlabel=xlabel, ylabel="client")
        ax_h.yaxis.set_major_locator(MaxNLocator(integer=True))
        probs = run.true_probs
        rounds = float(run.metrics[-1].get("round") or 0)
        if probs is not None and len(probs) == n and run.mode == "sync" and rounds > 0:
            ax_p.scatter(probs, counts / rounds, s=10, color=_colour(i))
            ax_p.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle=":")
            ax_p.set(title="participation rate vs true p", xlabel="true p_n", ylabel="updates / rounds")
        else:
            ax_p.bar(np.arange(n), np.sort(counts)[::-1], color=_colour(i), width=1.0)
            ax_p.set(title="updates per client (sorted)", xlabel="client rank", ylabel="updates")
        ax_p.grid(alpha=0.3)
        if weights:
            _weight_panel(axes[i][2], run, weight_key, probs, _colour(i))
            axes[i][2].grid(alpha=0.3)
    if len(groups) > MAX_ROWS:
        fig.suptitle(f"Participation (first {MAX_ROWS} of {len(groups)} groups)")
    else:
        fig.suptitle("Participation")
    return fig


def _weight_panel(ax, run: Run, key: str, probs: np.ndarray | None, colour) -> None:
    if key not in run.client_keys():
        ax.text(0.5, 0.5, f"no '{key}' in clients.jsonl", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    _, w = run.client_matrix(key)
    final = w[-1]
    if probs is not None and len(probs) == len(final):
        ok = np.isfinite(final) & (probs > 0)
        ax.scatter(1.0 / probs[ok], final[ok], s=10, color=colour)
        hi = float(max(np.max(1.0 / probs[ok], initial=1.0), np.nanmax(final[ok], initial=1.0)))
        ax.plot([1, hi], [1, hi], color="grey", linewidth=1, linestyle=":", label="estimate = 1/p")
        ax.set(xscale="log", yscale="log", title=f"{key} vs true 1/p", xlabel="1 / p_n", ylabel=key)
        ax.legend(fontsize="x-small")
    else:
        ax.bar(np.arange(len(final)), final, color=colour, width=1.0)
        ax.set(title=f"final {key} (true p unknown)", xlabel="client", ylabel=key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# --- async ---------------------------------------------------------------------------------


def asynchrony(groups: Sequence[Group]) -> Figure:
    """Staleness histogram of arrived updates, commits over virtual time, mean staleness over time.

    Staleness is the number of model versions committed between the model a job started from
    and the one its update is applied to.

    Args:
        groups: runs grouped by scenario (seeds pooled as mean ± one std).

    Returns:
        The figure.
    """
    fig = _figure(14, 4.4)
    ax_h, ax_c, ax_s = fig.subplots(1, 3)
    top = 0
    for g in groups:
        for run in g.runs:
            top = max([top] + [int(e["staleness"]) for e in run.events if e.get("kind") == "arrive"
                                and isinstance(e.get("staleness"), int)])
    bins = np.arange(top + 2) - 0.5
    for i, g in enumerate(groups):
        c = _colour(i)
        stale, times = [], []
        for run in g.runs:
            arr = [e for e in run.events if e.get("kind") == "arrive" and isinstance(e.get("staleness"), int)]
            stale += [e["staleness"] for e in arr]
            times += [float(e["virtual_time"]) for e in arr]
        if stale:
            ax_h.hist(stale, bins=bins, density=True, histtype="step", color=c, linewidth=1.5,
                      label=f"mean {np.mean(stale):.2f}")
            t, s = np.array(times), np.array(stale, dtype=float)
            edges = np.linspace(0, t.max() + 1e-9, 41)
            idx = np.digitize(t, edges) - 1
            means = np.array([s[idx == b].mean() if np.any(idx == b) else np.nan for b in range(40)])
            ax_s.plot((edges[:-1] + edges[1:]) / 2, means, color=c, marker=".")
        for k, run in enumerate(g.runs):
            commits = sorted(float(e["virtual_time"]) for e in run.events if e.get("kind") == "commit")
            if commits:
                ax_c.step(commits, np.arange(1, len(commits) + 1), where="post", color=c, alpha=0.9 if k == 0 else 0.4)
    every = [int(e["staleness"]) for g in groups for run in g.runs for e in run.events
             if e.get("kind") == "arrive" and isinstance(e.get("staleness"), int)]
    clip = int(np.percentile(every, 99)) + 1 if every else 0
    if clip < top:  # a long tail would squash the bulk of the histogram
        ax_h.set_xlim(-0.5, max(clip, 5) + 0.5)
        ax_h.set_xlabel(f"staleness (versions; 1% of updates beyond {max(clip, 5)} not shown, max {top})")
    if top == 0 and not ax_h.patches:
        ax_h.text(0.5, 0.5, "no arrivals with staleness in events.jsonl", ha="center", va="center",
                  transform=ax_h.transAxes)
    ax_h.set(title="staleness of arrived updates", ylabel="share of updates")
    if not ax_h.get_xlabel():
        ax_h.set_xlabel("staleness (versions)")
    ax_c.set(title="commits over virtual time", xlabel="virtual time (s)", ylabel="model version")
    ax_s.set(title="mean staleness over virtual time", xlabel="virtual time (s)", ylabel="staleness")
    for ax in (ax_h, ax_c, ax_s):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small")
    _figure_legend(fig, groups, "Asynchrony")
    return fig


# --- contributions -------------------------------------------------------------------------


def contributions(groups: Sequence[Group], key: str = CONTRIBUTION_KEY) -> Figure:
    """Per-client contribution estimates: final value per client and their spread over time.

    The estimates are clients.jsonl column `key` (e.g. FedCE's coefficients); the final value is
    mean ± std over seeds, the spread the 10–90% band over clients. One row per group.

    Args:
        groups: runs grouped by scenario (seeds pooled as mean ± one std).
        key: the clients.jsonl column to draw.

    Returns:
        The figure.

    Raises:
        PlotError: if no run has the column.
    """
    shown = [g for g in groups if key in g.runs[0].client_keys()][:MAX_ROWS]
    if not shown:
        raise PlotError(f"no run has a '{key}' column in clients.jsonl (is the strategy logging it?)")
    fig = _figure(13, 3.4 * len(shown) + 0.6)
    axes = fig.subplots(len(shown), 2, squeeze=False, width_ratios=[2, 1.3])
    for i, g in enumerate(shown):
        c = _colour(i)
        mats = [r.client_matrix(key) for r in g.runs if key in r.client_keys()]
        finals = np.vstack([m[1][-1] for m in mats if m[1].shape[1] == mats[0][1].shape[1]])
        with warnings.catch_warnings():  # a client never scored stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, std = np.nanmean(finals, 0), np.nanstd(finals, 0)
        ax_b, ax_t = axes[i]
        ax_b.bar(np.arange(len(mean)), mean, yerr=std if len(finals) > 1 else None, color=c, width=0.8)
        ax_b.set(title=f"{_legend_label(g)}: final {key} per client", xlabel="client", ylabel=key)
        ax_b.xaxis.set_major_locator(MaxNLocator(integer=True))
        steps, vals = mats[0]
        with warnings.catch_warnings():  # steps before any client was scored are all-NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            q = np.nanpercentile(vals, [10, 50, 90], axis=1)
        ax_t.plot(steps, q[1], color=c, label="median")
        ax_t.fill_between(steps, q[0], q[2], color=c, alpha=0.2, linewidth=0, label="10–90%")
        ax_t.set(title=f"{key} over time (seed {g.runs[0].seed})", xlabel=g.runs[0].step_key, ylabel=key)
        ax_t.legend(fontsize="x-small")
        for ax in (ax_b, ax_t):
            ax.grid(alpha=0.3)
    fig.suptitle("Client contributions")
    return fig


# --- entry point ---------------------------------------------------------------------------

def _readable_log_axis(axis, formatter) -> None:
    """Label a log axis with `formatter`: at 1, 2, 5 × 10^k over a short range, at 10^k over a long one.

    Call it after plotting: the span of the data decides (the default minor labels overlap).
    """
    lo, hi = axis.get_view_interval()
    decades = np.log10(hi / lo) if lo > 0 and hi > lo else 0.0
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 2.5 else (1.0,)))
    axis.set_minor_locator(LogLocator(base=10, subs=tuple(float(i) for i in range(1, 10))))
    axis.set_major_formatter(formatter)
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


# --- privacy -------------------------------------------------------------------------------


def privacy(groups: Sequence[Group]) -> Figure:
    """Accuracy against ε (at the run's δ): one curve per DP run, non-DP runs as dashed baselines.

    Left: every evaluation of a run (ε grows with the rounds). Right: the final accuracy against
    the final ε of each run (e.g. the folders of a sweep over `dp.noise_multiplier`), joined in
    order of ε. Regression runs show the test loss instead of accuracy.

    Args:
        groups: runs grouped by scenario (seeds pooled: mean accuracy, mean ε).

    Returns:
        The figure.
    """
    key = "test_loss" if _regression(groups) else "test_accuracy"
    fig = _figure(12, 4.6)
    left, right = fig.subplots(1, 2)
    finals: list[tuple[float, float, int]] = []
    for i, g in enumerate(groups):
        c = _colour(i)
        y = np.nanmean(np.vstack([r.series(key) for r in g.runs]), axis=0)
        if not all(r.has("epsilon") for r in g.runs):  # no DP: the accuracy to compare against
            for ax in (left, right):
                ax.axhline(y[-1], color=c, linestyle="--", linewidth=1.5)
            continue
        eps = np.nanmean(np.vstack([r.series("epsilon") for r in g.runs]), axis=0)
        ok = np.isfinite(eps) & np.isfinite(y)
        left.plot(eps[ok], y[ok], color=c, marker=".")
        if ok.any():
            last = np.flatnonzero(ok)[-1]
            finals.append((float(eps[last]), float(y[last]), i))
    finals.sort()
    if finals:
        right.plot([f[0] for f in finals], [f[1] for f in finals], color="0.6", linewidth=1, zorder=1)
        for e, acc, i in finals:
            right.scatter([e], [acc], color=_colour(i), s=40, zorder=2)
        if finals[0][0] > 0:  # ε of a noise-multiplier sweep spans decades
            right.set_xscale("log")
            _readable_log_axis(right.xaxis, FuncFormatter(lambda v, _: f"{v:g}"))
    for ax, title in ((left, "during training"), (right, "final, one point per run")):
        ax.set_xlabel("ε (at the run's δ)")
        ax.set_ylabel(key.replace("_", " "))
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
    _figure_legend(fig, groups, "Privacy: accuracy vs ε (dashed: runs without DP)")
    return fig


# --- communication -------------------------------------------------------------------------


def _compressed(run: Run) -> bool:
    block = run.scenario.get("compression")
    return isinstance(block, dict) and block.get("name", "none") != "none"


def communication(groups: Sequence[Group]) -> Figure:
    """Test accuracy against uplink bytes (log axis) and against virtual time, one line per group.

    For comparing compressors (fedsim.pipeline.compression): `bytes_up` counts the compressed
    wire size, and the virtual clock prices the upload by it.

    Args:
        groups: runs grouped by scenario (seeds pooled as mean ± one std).

    Returns:
        The figure.
    """
    regression = _regression(groups)
    key = "test_loss" if regression else "test_accuracy"
    fig = _figure(11, 4.2)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for i, g in enumerate(groups):
        for ax, xkey in zip(axes, ("bytes_up", "virtual_time"), strict=True):
            runs = [r for r in g.runs if len(r.series(xkey)) and r.series(xkey)[-1] > 0]
            if not runs:
                continue
            x, y = _by_time(runs, xkey, key)
            keep = x > 0 if xkey == "bytes_up" else np.ones_like(x, dtype=bool)  # log axis: skip round 0
            _band(ax, x[keep], y[:, keep], _colour(i), None, positive=regression)
    for ax, xlabel in zip(axes, ("bytes up (compressed wire size)", "virtual time (s)"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
        if regression:
            ax.set_yscale("log")
    axes[0].set_xscale("log")
    _readable_log_axis(axes[0].xaxis, EngFormatter(unit="B"))
    _figure_legend(fig, groups, "Accuracy per byte and per virtual second"
                   + (" (mean ± std over seeds)" if any(len(g.runs) > 1 for g in groups) else ""))
    return fig


FIGURES: dict[str, Callable[..., Figure]] = {
    "convergence": convergence, "fairness": fairness, "participation": participation,
    "async": asynchrony, "contributions": contributions, "privacy": privacy,
    "communication": communication,
}


def applicable(kind: str, groups: Sequence[Group], contribution_key: str = CONTRIBUTION_KEY) -> bool:
    """Whether `--kind all` should draw `kind` for these runs.

    Args:
        kind: one of KINDS.
        groups: the runs.
        contribution_key: the clients.jsonl column the contributions plot needs.

    Returns:
        False for async plots of sync runs, contributions without the column, fairness without
        clients.jsonl rows, privacy without an `epsilon` column, communication without a
        compressed run; else True.
    """
    runs = [r for g in groups for r in g.runs]
    if kind == "async":
        return any(r.mode == "async" for r in runs)
    if kind == "contributions":
        return any(contribution_key in r.client_keys() for r in runs)
    if kind == "fairness":
        return any(len(r.clients) for r in runs)
    if kind == "privacy":
        return any(r.has("epsilon") for r in runs)
    if kind == "communication":
        return any(_compressed(r) for r in runs)
    return True


def save(fig: Figure, path: Path) -> Path:
    """Write `fig`; the format follows the extension (.png, .svg, .pdf).

    Args:
        fig: the figure.
        path: the file; its folder is created.

    Returns:
        `path`.

    Raises:
        PlotError: for any other extension.
    """
    if path.suffix.lower() not in FORMATS:
        raise PlotError(f"{path}: unsupported format {path.suffix or '(none)'!r}; use {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def default_out_dir(runs: Sequence[Run]) -> Path:
    """Where figures go by default: <run>/plots for one run, <their common parent>/plots for several."""
    import os

    if len(runs) == 1:
        return runs[0].path / "plots"
    return Path(os.path.commonpath([str(r.path.resolve()) for r in runs])) / "plots"


def plot(run_dirs: Sequence[str | Path], kind: str = "all", out: str | Path | None = None,
         weight_key: str = WEIGHT_KEY, contribution_key: str = CONTRIBUTION_KEY) -> list[Path]:
    """Draw `kind` (or every applicable kind for `all`) for the runs under `run_dirs`.

    Args:
        run_dirs: run folders or folders holding runs.
        kind: one of KINDS, or "all".
        out: a file for one kind (`fig.pdf`); for `all`, `fig.pdf` gives `fig-<kind>.pdf`.
            Default: `<default_out_dir>/<kind>.png`.
        weight_key: clients.jsonl column of per-client weights (participation plot).
        contribution_key: clients.jsonl column of contribution estimates.

    Returns:
        The files written.

    Raises:
        PlotError: for an unknown kind, unsupported format or nothing to draw;
            RunDataError for unreadable run folders.
    """
    if kind != "all" and kind not in FIGURES:
        raise PlotError(f"unknown plot kind {kind!r}; one of: {', '.join(KINDS)}, all")
    runs = find_runs(run_dirs)
    groups = group_runs(runs)
    kinds = [k for k in KINDS if applicable(k, groups, contribution_key)] if kind == "all" else [kind]
    written = []
    for k in kinds:
        if out is None:
            path = default_out_dir(runs) / f"{k}.png"
        else:
            o = Path(out)
            path = o if kind != "all" else o.with_name(f"{o.stem}-{k}{o.suffix or '.png'}")
        if path.suffix.lower() not in FORMATS:
            raise PlotError(f"{path}: unsupported format {path.suffix or '(none)'!r}; use {', '.join(FORMATS)}")
        kw = {"participation": {"weight_key": weight_key}, "contributions": {"key": contribution_key}}.get(k, {})
        written.append(save(FIGURES[k](groups, **kw), path))
    return written
