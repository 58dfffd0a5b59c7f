"""Local SGD of many clients at once, over stacked flat parameters.

Local SGD of many clients at once: stacked flat parameters, one batched gradient per step
for the whole chunk (`vmap` over `functional_call`, then autograd).

Every row follows `fedsim.training.runtime.LocalTrainer.sgd` step for step:

    g = ∇ℓ(w; ξ)   [or, with SAM, ∇ℓ(w + ρ g/(‖g‖ + 1e-7); ξ), Foret et al., ICLR 2021, Eq. 2]
    d = clip(g + s + p·(w − a)) + wd·w;   m = μ·m + d;   w ← w − η·m

where `s` is a constant shift (SCAFFOLD's c − c_i, FedSpeed's λ(h_i − w_t)) and `p·(w − a)`
a proximal pull (FedProx's μ(w − w_t), ADMM's ρ(w − z̃)). Each row has its own ξ sequence,
drawn from its job's generator exactly as `LocalTrainer.batches` draws it (one
`torch.randperm` per epoch, batches cut in order), so inline and vectorized runs see the
same minibatches and differ only in float rounding of the batched kernels.

Padding keeps one shape for every row: a minibatch is a row of `width` example indices
with a 0/1 mask (clients with fewer examples than the batch, the last partial batch of an
epoch), and a row whose job has fewer steps than the chunk's longest stops moving once
its steps are done. `width` depends on the federation only, never on which jobs share a
chunk, so a row's arithmetic does not depend on its neighbours or the chunk size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.func import functional_call, vmap
from torch.nn import functional as F


@dataclass(frozen=True)
class SgdCall:
    """One job's request for local SGD: the arguments of `LocalTrainer.sgd`, resolved.

    Attributes:
        start: flat float32 parameters to start from.
        steps: local steps.
        lr: step size η.
        weight_decay: wd, added as wd·w after clipping.
        momentum: μ of the heavy-ball buffer (0 = none).
        clip_norm: global-norm clip of the corrected gradient (None = no clip).
        sam_rho: SAM radius ρ (0 = plain gradient).
        shift: constant vector added to every gradient (None = 0).
        prox: coefficient p of the proximal pull p·(w − anchor) (0 = none).
        anchor: the proximal centre (None when prox is 0).
    """

    start: np.ndarray
    steps: int
    lr: float
    weight_decay: float = 0.0
    momentum: float = 0.0
    clip_norm: float | None = None
    sam_rho: float = 0.0
    shift: np.ndarray | None = None
    prox: float = 0.0
    anchor: np.ndarray | None = None


def draw_batches(generator: torch.Generator, n: int, batch: int, steps: int, width: int) -> torch.Tensor:
    """The local example indices of `steps` minibatches, as `LocalTrainer.batches` cuts them.

    Without replacement within an epoch, reshuffled when exhausted: the generator yields
    exactly the permutations the inline trainer draws, and is left in the same state.

    Args:
        generator: the job's generator (seeded with `task.seed`, possibly already used).
        n: the client's number of training examples (> 0).
        batch: the configured batch size.
        steps: number of minibatches.
        width: row length of the result (≥ min(batch, n)); missing entries are -1.

    Returns:
        int64 tensor (steps, width).
    """
    per_epoch = -(-n // batch)
    epochs = -(-steps // per_epoch)
    perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(epochs)])
    cut = F.pad(perms, (0, per_epoch * batch - n), value=-1).view(epochs * per_epoch, batch)[:steps]
    if width < batch:  # columns past min(batch, n) are padding for every client: drop them
        return cut[:, :width].contiguous()
    return cut


class BatchedModel:
    """A module's loss and gradient as functions of a stacked (B, d) parameter matrix.

    The forward pass is `vmap(functional_call)`: row b of every parameter block is client
    b's parameter. The gradient is `torch.autograd.grad` of the sum of the rows' losses,
    which is each row's own gradient exactly (rows share no computation). It is not
    `torch.func.grad` because that transform imports the compiler stack on its first call
    (several seconds per process, more than a whole quickstart run trains), and on CPU it
    is no faster.
    """

    def __init__(self, module: torch.nn.Module, regression: bool):
        self.module = module
        self.regression = regression
        self.layout = [(name, p.shape, p.numel()) for name, p in module.named_parameters()]
        self.size = sum(n for _, _, n in self.layout)
        self._forward = vmap(self._apply)

    def _apply(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, params, (x,))

    def losses(self, out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Each row's mean loss over its real (mask 1) examples.

        Each row's mean loss over its real (mask 1) examples: the objective of
        `ClientRuntime.loss` (cross-entropy, or ½ squared error).

        Args:
            out: model outputs (B, width, C).
            y: labels (B, width) (targets for regression).
            mask: (B, width) 1 = real example.

        Returns:
            (B,) losses (0/0 = nan for a row with no real example).
        """
        if self.regression:
            per = 0.5 * (out.squeeze(-1) - y) ** 2
        else:  # −log softmax(out)_y
            per = out.logsumexp(-1) - out.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return (per * mask).sum(1) / mask.sum(1)

    def grad_parts(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                   mask: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-row gradients of the masked minibatch loss, and the per-row loss.

        Per-row gradient, one (B, numel) block per parameter in flat order, and the
        per-row loss (B,), of the masked minibatch loss at rows `w`.
        """
        b, views, offset = w.shape[0], {}, 0
        base = w.detach()
        with torch.enable_grad():
            # differentiate with respect to each parameter block, not the flat matrix: the
            # backward of a slice of a flat tensor writes a full-size zero gradient per slice
            for name, shape, n in self.layout:
                views[name] = base[:, offset:offset + n].view(b, *shape).requires_grad_(True)
                offset += n
            loss = self.losses(self._forward(views, x), y, mask)
            grads = torch.autograd.grad(loss.sum(), list(views.values()))
        return [g.reshape(b, -1) for g in grads], loss.detach()

    def grad(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row flat gradient (B, d) and loss (B,) (see `grad_parts`)."""
        parts, loss = self.grad_parts(w, x, y, mask)
        return torch.cat(parts, dim=1), loss


@dataclass(frozen=True)
class Chunk:
    """Device tensors of one chunk of calls, stacked row by row, and which terms occur."""

    w: torch.Tensor  # (B, d) start parameters
    idx: torch.Tensor  # (B, T, width) global example rows
    mask: torch.Tensor  # (B, T, width) 1 = real example
    steps: tuple[int, ...]  # steps per row (host side: no device sync per step)
    active: torch.Tensor  # (B, T) bool: row still training at step t
    lr: torch.Tensor  # (B, 1)
    wd: torch.Tensor | None  # (B, 1); None: no row decays
    mu: torch.Tensor | None  # (B, 1); None: no row has momentum
    clip: torch.Tensor | None  # (B,) inf = no clip; None: no row clips
    rho: torch.Tensor | None  # (B,); None: no row uses SAM
    shift: torch.Tensor | None  # (B, d)
    prox: torch.Tensor | None  # (B, 1)
    anchor: torch.Tensor | None  # (B, d)


def _column(values: Sequence[float], device: torch.device, dim: int = 2) -> torch.Tensor | None:
    """Per-row scalars as a column tensor, or None when all are 0.

    Per-row scalars as a (B, 1) (or (B,)) tensor; None when every value is 0 (the
    term is skipped for the whole chunk, which changes no row: each would add 0).
    """
    if not any(values):
        return None
    t = torch.tensor(list(values), dtype=torch.float32, device=device)
    return t.view(-1, 1) if dim == 2 else t


def stack_chunk(calls: Sequence[SgdCall], indices: Sequence[torch.Tensor], offsets: Sequence[int],
                device: torch.device) -> Chunk:
    """Stack calls (and their local index tensors, each (steps, width)) into device tensors.

    Args:
        calls: the chunk's calls.
        indices: each call's `draw_batches` result.
        offsets: each call's first row in the runtime's training tensors.
        device: where the chunk trains.

    Returns:
        The chunk, padded to the longest call's steps.
    """
    t_max = max(c.steps for c in calls)
    width = indices[0].shape[1]
    local = torch.full((len(calls), t_max, width), -1, dtype=torch.int64)
    for i, ix in enumerate(indices):
        local[i, :ix.shape[0]] = ix
    mask = local >= 0
    rows = torch.where(mask, local + torch.tensor(list(offsets), dtype=torch.int64).view(-1, 1, 1), 0)
    steps = tuple(c.steps for c in calls)
    active = torch.arange(t_max).view(1, -1) < torch.tensor(steps).view(-1, 1)

    def stacked(vectors: list[np.ndarray | None]) -> torch.Tensor | None:
        if all(v is None for v in vectors):
            return None
        d = calls[0].start.size
        filled = [np.zeros(d, np.float32) if v is None else np.asarray(v, np.float32) for v in vectors]
        return torch.from_numpy(np.stack(filled)).to(device)

    prox = _column([c.prox for c in calls], device)
    clips = [c.clip_norm for c in calls]
    return Chunk(
        w=torch.from_numpy(np.stack([np.asarray(c.start, np.float32) for c in calls])).to(device),
        idx=rows.to(device), mask=mask.to(device=device, dtype=torch.float32), steps=steps,
        active=active.to(device),
        lr=torch.tensor([c.lr for c in calls], dtype=torch.float32, device=device).view(-1, 1),
        wd=_column([c.weight_decay for c in calls], device), mu=_column([c.momentum for c in calls], device),
        clip=None if all(c is None for c in clips) else
        torch.tensor([float("inf") if c is None else c for c in clips], dtype=torch.float32, device=device),
        rho=_column([c.sam_rho for c in calls], device, 1),
        shift=stacked([c.shift for c in calls]),
        prox=prox, anchor=stacked([c.anchor if c.prox else None for c in calls]) if prox is not None else None,
    )


def _row_norm(g: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(g, dim=1)


def train_chunk(model: BatchedModel, x: torch.Tensor, y: torch.Tensor, ch: Chunk) -> tuple[torch.Tensor, torch.Tensor]:
    """Run every row's local SGD of one chunk.

    Args:
        model: the batched loss/gradient.
        x: the runtime's training inputs (all clients, on the chunk's device).
        y: the matching labels (targets for regression).
        ch: the stacked chunk.

    Returns:
        (final parameters (B, d), mean minibatch loss per row (B,) float64).
    """
    w = ch.w.clone()
    buf = torch.zeros_like(w) if ch.mu is not None else None
    total = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    plain = ch.rho is None and ch.shift is None and ch.prox is None and ch.clip is None and ch.wd is None \
        and buf is None
    for t in range(ch.idx.shape[1]):
        # A row whose steps are done sees an all-padding minibatch (loss 0/0); `where`
        # keeps it frozen. When every row is active (equal steps) the masks are skipped.
        every = all(s > t for s in ch.steps)
        active = None if every else ch.active[:, t].unsqueeze(1)
        rows, m = ch.idx[:, t], ch.mask[:, t]
        xb, yb = x[rows], y[rows]
        if plain and every:  # plain SGD: step each parameter block in place, no flat copy
            parts, loss = model.grad_parts(w, xb, yb, m)
            total += loss.double()
            offset = 0
            for part in parts:
                w[:, offset:offset + part.shape[1]].addcmul_(ch.lr, part, value=-1.0)  # as `stepped` below
                offset += part.shape[1]
            continue
        g, loss = model.grad(w, xb, yb, m)
        total += loss.double() if every else torch.where(active[:, 0], loss.double(), 0.0)
        if ch.rho is not None:  # same minibatch, gradient at the perturbed point (rows with ρ = 0 keep g)
            scale = (ch.rho / (_row_norm(g) + 1e-7)).unsqueeze(1)
            g2, _ = model.grad(w + scale * g, xb, yb, m)
            g = torch.where((ch.rho > 0).unsqueeze(1), g2, g)
        g = _corrected(g, w, ch)
        if ch.clip is not None:
            norm = _row_norm(g)
            g = g * torch.where(norm > ch.clip, ch.clip / norm, 1.0).unsqueeze(1)
        if ch.wd is not None:
            g = g + ch.wd * w
        if buf is not None:
            buf = ch.mu * buf + g if every else torch.where(active, ch.mu * buf + g, buf)
            g = buf
        # w − η·d, one formula on every path (and so the same rounding whichever path a
        # chunk takes): addcmul rounds η·d, then the sum
        stepped = torch.addcmul(w, ch.lr, g, value=-1.0)
        w = stepped if every else torch.where(active, stepped, w)
    return w, total / torch.tensor(ch.steps, dtype=torch.float64, device=w.device)


def _corrected(g: torch.Tensor, w: torch.Tensor, ch: Chunk) -> torch.Tensor:
    """The gradient plus the strategy's extra gradient (shift and proximal pull).

    G + extra_grad(w): the constant shift plus the proximal pull, summed first as the
    strategies' closures compute them (`lin + ρ(w − anchor)`).
    """
    if ch.prox is not None:
        extra = ch.prox * (w - ch.anchor)
        if ch.shift is not None:
            extra = ch.shift + extra
        return g + extra
    if ch.shift is not None:
        return g + ch.shift
    return g


def run_calls(model: BatchedModel, x: torch.Tensor, y: torch.Tensor, calls: Sequence[SgdCall],
              generators: Sequence[torch.Generator], sizes: Sequence[int], offsets: Sequence[int],
              batch: int, width: int, chunk_size: int) -> list[tuple[np.ndarray, float]]:
    """Every call's (final float32 parameters, mean loss), trained `chunk_size` rows at a time.

    Calls are trained longest first so that rows of similar length share a chunk (less
    padding); each row's result does not depend on its chunk. A client with no examples
    returns its start unchanged with loss nan, as `LocalTrainer.sgd` does.

    Args:
        model: the batched loss/gradient.
        x: training inputs of every client, on the device.
        y: the matching labels (targets for regression).
        calls: one per job.
        generators: each job's generator (consumed as the inline trainer would).
        sizes: each job's number of training examples.
        offsets: each job's first row in `x`.
        batch: configured batch size.
        width: minibatch row length (`min(batch, largest client)`).
        chunk_size: rows trained together.

    Returns:
        Results in the order of `calls`.
    """
    out: list[tuple[np.ndarray, float] | None] = [None] * len(calls)
    live = []
    for i, (c, n) in enumerate(zip(calls, sizes, strict=True)):
        if n == 0 or c.steps <= 0:
            out[i] = (np.asarray(c.start, np.float32).copy(), float("nan"))
        else:
            live.append(i)
    # Draw every job's batches in submission order: each generator is private to its job,
    # so the draw order across jobs does not matter, but a fixed order keeps it obvious.
    drawn = {i: draw_batches(generators[i], sizes[i], batch, calls[i].steps, width) for i in live}
    live.sort(key=lambda i: -calls[i].steps)
    with torch.no_grad():
        for lo in range(0, len(live), chunk_size):
            part = live[lo:lo + chunk_size]
            ch = stack_chunk([calls[i] for i in part], [drawn[i] for i in part], [offsets[i] for i in part],
                             x.device)
            w, loss = train_chunk(model, x, y, ch)
            w_np, loss_np = w.cpu().numpy(), loss.cpu().numpy()
            for r, i in enumerate(part):
                out[i] = (w_np[r].copy(), float(loss_np[r]))
    return out  # type: ignore[return-value]
