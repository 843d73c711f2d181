"""Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_t)^gamma."""

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean focal loss of logits ``[B, C]`` against class indices ``[B]``; gamma 0 is cross-entropy."""
    log_p = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    return (-(1 - log_p.exp()).pow(gamma) * log_p).mean()
