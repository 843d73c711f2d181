"""The paper's network: frame pairs -> BiLSTM -> mean/max/min pooling -> ELU MLP -> normalised softmax.

Shapes: input ``[B, T, F]`` (F = ``n_mels`` feature columns, 128 by default) with optional
``lengths [B]`` for padded batches; outputs logits ``[B, C]`` (cosine similarity / tau) and the
embedding ``[B, h]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from training.configs import ModelConfig


def valid_steps(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``[B, T, 1]`` True where step t of row b is within its length (not padding)."""
    return (torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None])[:, :, None]


def centre_bands(x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, T, F]`` minus each row's per-band mean over its valid frames."""
    if lengths is None:
        return x - x.mean(1, keepdim=True)
    valid = valid_steps(x, lengths)
    return x - (x * valid).sum(1, keepdim=True) / valid.sum(1, keepdim=True).clamp(min=1)


def paired_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frames after pairing: ceil(T / 2)."""
    return (lengths + 1) // 2


def pair_frames(x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Stack consecutive frames: ``[B, T, F]`` -> ``[B, ceil(T/2), 2F]`` (paper Eq. 3).

    A sequence with an odd number of frames repeats its last frame; in a padded batch each
    sequence repeats its own last valid frame. Written as a gather of a clamped ``arange`` so it
    exports to ONNX with a dynamic time axis.
    """
    batch, frames, _ = x.shape
    even = (frames + 1) // 2 * 2
    positions = torch.arange(even, device=x.device)
    if lengths is None:
        x = x.index_select(1, positions.clamp(max=frames - 1))
    else:
        index = torch.minimum(positions[None, :], (lengths[:, None] - 1).to(x.device))
        x = torch.gather(x, 1, index[:, :, None].expand(-1, -1, x.shape[2]))
    return rearrange(x, "b (t k) f -> b t (k f)", k=2)


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence's valid part, leaving its padding in place: ``[B, T, D]``."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    lengths = lengths.to(x.device)[:, None]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    return torch.gather(x, 1, index[:, :, None].expand(-1, -1, x.shape[2]))


class BiLSTM(nn.Module):
    """Bidirectional multi-layer LSTM whose backward direction reads each sequence from its own
    last valid step, never from padding.

    Each layer and direction is its own ``nn.LSTM``: reversing within length is ~8x faster than
    ``pack_padded_sequence`` on the CPU and exact. ``to_bidirectional`` copies the weights into one
    standard ``nn.LSTM(bidirectional=True)`` for export (native ONNX LSTM nodes).
    """

    def __init__(self, input_size: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.hidden, self.layers, self.dropout = hidden, layers, dropout
        sizes = [input_size] + [2 * hidden] * (layers - 1)
        self.forward_layers = nn.ModuleList(nn.LSTM(s, hidden, batch_first=True) for s in sizes)
        self.backward_layers = nn.ModuleList(nn.LSTM(s, hidden, batch_first=True) for s in sizes)
        self.between = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, T, D]`` -> ``[B, T, 2h]``; ``lengths`` marks the valid steps of padded rows."""
        for i, (fwd, bwd) in enumerate(zip(self.forward_layers, self.backward_layers)):
            if i > 0:
                x = self.between(x)
            ahead, _ = fwd(x)
            if lengths is None:
                behind = bwd(x.flip(1))[0].flip(1)
            else:
                behind = reverse_within_length(bwd(reverse_within_length(x, lengths))[0], lengths)
            x = torch.cat([ahead, behind], dim=2)
        return x

    def to_bidirectional(self) -> nn.LSTM:
        lstm = nn.LSTM(self.forward_layers[0].input_size, self.hidden, num_layers=self.layers,
                       dropout=self.dropout if self.layers > 1 else 0.0, bidirectional=True,
                       batch_first=True)
        with torch.no_grad():
            for i, (fwd, bwd) in enumerate(zip(self.forward_layers, self.backward_layers)):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(lstm, f"{name}_l{i}").copy_(getattr(fwd, f"{name}_l0"))
                    getattr(lstm, f"{name}_l{i}_reverse").copy_(getattr(bwd, f"{name}_l0"))
        return lstm


def masked_pool(h: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Mean, max and min over valid time steps, concatenated: ``[B, T, D]`` -> ``[B, 3D]`` (Eq. 7)."""
    if lengths is None:
        return torch.cat([h.mean(1), h.amax(1), h.amin(1)], dim=1)
    valid = valid_steps(h, lengths)
    mean = (h * valid).sum(1) / valid.sum(1).clamp(min=1)
    maxi = h.masked_fill(~valid, float("-inf")).amax(1)
    mini = h.masked_fill(~valid, float("inf")).amin(1)
    return torch.cat([mean, maxi, mini], dim=1)


class NormalisedSoftmaxHead(nn.Module):
    """Cosine similarity between the embedding and each class weight vector, divided by tau."""

    def __init__(self, dim: int, n_classes: int, tau: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, dim) / dim ** 0.5)
        self.tau = tau

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return F.normalize(v, dim=1) @ F.normalize(self.weight, dim=1).T / self.tau


class PrimateBiLSTM(nn.Module):
    """The classifier of Müller et al. (Interspeech 2021) with the pooled width of its Eq. 5 (6h)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        h, p = config.hidden, config.dropout
        self.encoder = BiLSTM(2 * config.n_mels, h, config.layers, p)
        # The paper's text says 3h -> 2h, but mean/max/min of 2h-wide BiLSTM states is 6h (Eq. 5).
        self.mlp = nn.Sequential(
            nn.Linear(6 * h, 2 * h), nn.ELU(), nn.Dropout(p),
            nn.Linear(2 * h, 2 * h), nn.ELU(), nn.Dropout(p),
            nn.Linear(2 * h, h), nn.ELU(),
        )
        self.head_dropout = nn.Dropout(p)
        self.head = NormalisedSoftmaxHead(h, config.n_classes, config.tau)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        """``x`` float ``[B, T, n_mels]`` -> (logits ``[B, C]``, embedding ``[B, h]``)."""
        if self.config.centre_bands:
            x = centre_bands(x, lengths)
        paired = pair_frames(x, lengths)
        plens = None if lengths is None else paired_lengths(lengths)
        embedding = self.mlp(masked_pool(self.encoder(paired, plens), plens))
        return self.head(self.head_dropout(embedding)), embedding


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
