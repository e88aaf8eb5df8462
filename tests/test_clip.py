"""The trainer's gradient clipping (used where DeepSpeed does not clip: ZeRO 0 in fp32) against torch's."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.train_setup import clip_grad_norm


def _params(scale: float) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(7, 5), (5,), (3, 4, 2)]]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g) * scale
    return ps


@pytest.mark.parametrize("scale,max_norm", [(10.0, 1.0), (1e-3, 1.0), (10.0, 0.0)])
def test_clip_matches_torch(scale, max_norm):
    ours, ref = _params(scale), _params(scale)
    norm = clip_grad_norm(ours, max_norm, mpu=None)
    expected = torch.nn.utils.clip_grad_norm_(ref, max_norm if max_norm > 0 else math.inf)
    assert norm.item() == pytest.approx(expected.item(), rel=1e-6)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)
    after = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours])).item()
    if max_norm > 0 and norm.item() > max_norm:
        assert after == pytest.approx(max_norm, rel=1e-4)  # clipped to the bar
    else:
        assert after == pytest.approx(norm.item(), rel=1e-6)  # left alone


def test_nonfinite_gradient_gives_nonfinite_norm():
    ps = _params(1.0)
    ps[1].grad[2] = float("inf")
    assert not math.isfinite(clip_grad_norm(ps, 1.0, mpu=None).item())
