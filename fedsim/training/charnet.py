"""The torch module of the `char_rnn` model: embedding → LSTM/GRU → linear over the last step.

The next-character model of the Shakespeare task: McMahan et al. (AISTATS 2017, §3) predict
each next character with a two-layer LSTM of 256 units over 8-dimensional character
embeddings; LEAF's reference model (Caldas et al., arXiv:1812.01097, §3) reads an 80-character
window and predicts the character after it from the last step's output. Here the sizes are
the spec's (`fedsim.training.models.CharRNN`), small by default so CPU runs stay quick.
"""

from __future__ import annotations

import torch
from torch import nn


class CharNet(nn.Module):
    """Token ids (B, T) → logits (B, vocab) of the token after the window.

    Args:
        vocab: V, token ids 0..V-1 in and V output classes (inputs and labels share a vocabulary).
        embedding: E, embedding width.
        hidden: H, recurrent width.
        layers: stacked recurrent layers.
        cell: "lstm" or "gru".
    """

    def __init__(self, vocab: int, embedding: int, hidden: int, layers: int, cell: str):
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding)
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(embedding, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the next token after each window (the last step's output, as in LEAF)."""
        h, _ = self.rnn(self.embed(x.long()))
        return self.out(h[:, -1])
