"""How a user vector and an item vector make a score.

``dot`` uses the vectors as they are; ``cosine`` L2-normalises both first. A temperature divides the
score into a logit. ``project`` gives the vectors whose plain dot product is the score (up to the
temperature, which never changes a ranking): these are what gets exported and indexed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SCORES = ("dot", "cosine")


def project(vectors: torch.Tensor, score: str) -> torch.Tensor:
    """Vectors in the space where the dot product is the model's score."""
    return F.normalize(vectors, dim=-1) if score == "cosine" else vectors


def projection_scale(vectors: torch.Tensor, score: str) -> torch.Tensor:
    """(rows, 1): the factor ``project`` multiplies each vector by (1 / its norm for cosine, 1 for dot)."""
    if score == "cosine":
        return 1.0 / vectors.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # F.normalize's own floor
    return torch.ones_like(vectors[:, :1])
