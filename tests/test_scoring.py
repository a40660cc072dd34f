import torch
import torch.nn.functional as F

from twotower.model.scoring import UnitRows, project, projection_scale


def test_unit_rows_match_f_normalize_in_value_and_gradient_with_a_zero_row() -> None:
    vectors = torch.randn(6, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    vectors[2] = 0.0  # the norm's floor: the row stays zero, and its gradient is F.normalize's
    weights = torch.randn(6, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mine, theirs = vectors.clone().requires_grad_(), vectors.clone().requires_grad_()
    (UnitRows.apply(mine) * weights).sum().backward()
    (F.normalize(theirs, dim=-1) * weights).sum().backward()
    assert torch.allclose(UnitRows.apply(vectors), F.normalize(vectors, dim=-1))
    assert torch.allclose(mine.grad, theirs.grad)
    assert torch.autograd.gradcheck(UnitRows.apply, (vectors[[0, 1, 3]].clone().requires_grad_(),))


def test_projection_scale_is_what_project_multiplies_by() -> None:
    vectors = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    for score in ("dot", "cosine"):
        assert torch.allclose(project(vectors, score), vectors * projection_scale(vectors, score))
