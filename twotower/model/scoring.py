"""How a user vector and an item vector make a score.

``dot`` uses the vectors as they are; ``cosine`` L2-normalises both first. A temperature divides the
score into a logit. ``project`` gives the vectors whose plain dot product is the score (up to the
temperature, which never changes a ranking): these are what gets exported and indexed.
"""

from __future__ import annotations

import torch

SCORES = ("dot", "cosine")
NORM_FLOOR = 1e-12  # F.normalize's own: a zero vector stays zero


class UnitRows(torch.autograd.Function):
    """``F.normalize(x, dim=-1)`` with a backward of three passes over the rows, ``(g - y (y.g)) / |x|``,
    where autograd's goes through the norm and the division separately (about ten passes): training scores
    tens of thousands of item rows a step."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, vectors: torch.Tensor) -> torch.Tensor:
        inverse = inverse_norms(vectors)
        unit = vectors * inverse
        ctx.save_for_backward(unit, inverse)
        return unit

    @staticmethod
    @torch.autograd.function.once_differentiable  # its saved norm is detached: no gradient of the gradient
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        unit, inverse = ctx.saved_tensors
        along = torch.linalg.vecdot(unit, grad).unsqueeze(-1)
        return (grad - unit * along).mul_(inverse)


def project(vectors: torch.Tensor, score: str, parts: int = 1) -> torch.Tensor:
    """Vectors in the space where the dot product is the model's score. Vectors made of ``parts`` parts side
    by side (a history tower with user ids) have each part normalised on its own: their cosine score is the
    sum of the parts' cosines."""
    if score != "cosine":
        return vectors
    if parts == 1:
        return UnitRows.apply(vectors)
    shape = vectors.shape
    return UnitRows.apply(vectors.reshape(*shape[:-1], parts, shape[-1] // parts)).reshape(shape)


def projection_scale(vectors: torch.Tensor, score: str) -> torch.Tensor:
    """(rows, 1): the factor ``project`` multiplies each vector by (1 / its norm for cosine, 1 for dot)."""
    return inverse_norms(vectors) if score == "cosine" else torch.ones_like(vectors[:, :1])


def inverse_norms(vectors: torch.Tensor) -> torch.Tensor:
    """(rows, 1): one over each row's L2 norm, floored as ``F.normalize`` floors it."""
    return torch.linalg.vector_norm(vectors, dim=-1, keepdim=True).clamp(min=NORM_FLOOR).reciprocal()
