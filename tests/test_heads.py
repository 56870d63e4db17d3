"""Alignment heads, attention pooling and the 2 - 2cos loss."""

import pytest
import torch
import torch.nn.functional as F

from ivn_fast.losses import cosine_loss
from ivn_fast.models.heads import AttentionPool, ProjectionHead


def test_projection_head_outputs_unit_vectors_only_when_asked():
    x = torch.randn(4, 7, 32)
    assert torch.allclose(ProjectionHead(32, 24, l2=True)(x).norm(dim=-1), torch.ones(4, 7), atol=1e-5)
    raw = ProjectionHead(32, 24, l2=False)(x)
    assert raw.shape == (4, 7, 24) and not torch.allclose(raw.norm(dim=-1), torch.ones(4, 7), atol=1e-2)


def _manual_pool(pool: AttentionPool, x: torch.Tensor) -> torch.Tensor:
    b, n, c = x.shape
    h = pool.num_heads
    q = pool.q(pool.norm_q(x.mean(1, keepdim=True))).view(b, 1, h, c // h).transpose(1, 2)
    k = pool.k(pool.norm_k(x)).view(b, n, h, c // h).transpose(1, 2)
    v = pool.v(pool.norm_v(x)).view(b, n, h, c // h).transpose(1, 2)
    w = (q @ k.transpose(-1, -2) / (c // h) ** 0.5).softmax(-1)
    return pool.proj((w @ v).transpose(1, 2).reshape(b, c))


def test_mean_query_pooling_matches_the_written_out_attention():
    torch.manual_seed(0)
    pool = AttentionPool(32, 4, 16, query="mean")
    x = torch.randn(3, 11, 32)
    assert torch.allclose(pool(x), _manual_pool(pool, x), atol=1e-5)


def test_learned_queries_give_one_vector_per_query():
    pool = AttentionPool(32, 4, query="learned", num_queries=3)
    assert pool(torch.randn(2, 9, 32)).shape == (2, 3, 32)
    assert AttentionPool(32, 4, query="learned")(torch.randn(2, 9, 32)).shape == (2, 32)


def test_pooling_rejects_bad_settings():
    with pytest.raises(ValueError, match="divisible"):
        AttentionPool(30, 4)
    with pytest.raises(ValueError, match="exactly one query"):
        AttentionPool(32, 4, query="mean", num_queries=2)


def test_cosine_loss_spans_zero_to_four():
    t = F.normalize(torch.randn(5, 8), dim=-1)
    assert float(cosine_loss(3.0 * t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(cosine_loss(-t, t)) == pytest.approx(4.0, abs=1e-6)
    ortho = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert float(cosine_loss(*ortho)) == pytest.approx(2.0)


def test_cosine_loss_uses_the_target_as_given():
    pred, target = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]])
    assert float(cosine_loss(pred, target)) == pytest.approx(1.0)


def test_cosine_loss_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        cosine_loss(torch.randn(2, 4), torch.randn(2, 5))
