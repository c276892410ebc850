"""The paper's phase-1 and phase-2 losses on hand-made images with known answers."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from magicfuse_core.losses import (MFNET_CLASS_WEIGHTS, eps_mse, rgb_to_ycbcr, segmentation_loss,
                                   sobel_magnitude, visual_loss)


def flat(value: float | tuple[float, float, float], size: int = 8) -> torch.Tensor:
    """(1, 3, size, size) constant RGB image."""
    rgb = (value,) * 3 if isinstance(value, float) else value
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size).clone()


def test_ycbcr_of_pure_colours():
    y, cb, cr = rgb_to_ycbcr(flat((1.0, 0.0, 0.0)))
    assert torch.allclose(y, torch.tensor(0.299)) and torch.allclose(cr, torch.tensor((1 - 0.299) * 0.713 + 0.5))
    assert torch.allclose(cb, torch.tensor((0 - 0.299) * 0.564 + 0.5))
    y, cb, cr = rgb_to_ycbcr(flat(0.6))  # grey: no chroma
    assert torch.allclose(y, torch.tensor(0.6))
    assert torch.allclose(cb, torch.tensor(0.5)) and torch.allclose(cr, torch.tensor(0.5))


def test_sobel_is_zero_on_flat_images_and_known_on_a_step():
    # Up to float rounding: the kernel's taps cancel exactly only in exact arithmetic.
    assert sobel_magnitude(torch.full((1, 1, 6, 6), 0.7)).abs().max() < 1e-6
    step = torch.zeros(1, 1, 6, 6)
    step[..., 3:] = 1.0
    magnitude = sobel_magnitude(step)
    # |gx| = 1 + 2 + 1 = 4 on the two columns beside the step, 0 elsewhere.
    assert torch.allclose(magnitude[0, 0, :, 2:4], torch.full((6, 2), 4.0))
    assert magnitude[0, 0, :, [0, 1, 4, 5]].abs().max() < 1e-6


def test_fused_equal_to_the_brighter_source_has_no_contrast_loss():
    ikr, ckg = flat(0.3), flat(0.8)
    _, parts = visual_loss(flat(0.8), ikr, ckg)
    assert parts["contrast"].item() == pytest.approx(0.0, abs=1e-7)
    _, parts = visual_loss(flat(0.5), ikr, ckg)
    assert parts["contrast"].item() == pytest.approx(6 * 0.3, abs=1e-6)  # weight 6 times |0.5 - 0.8|


def test_constant_images_have_no_texture_loss():
    _, parts = visual_loss(flat(0.2), flat(0.5), flat(0.9))
    assert parts["texture"].item() == pytest.approx(0.0, abs=1e-5)


def test_texture_loss_asks_for_the_stronger_edge():
    edge = torch.zeros(1, 3, 8, 8)
    edge[..., 4:] = 1.0
    _, parts = visual_loss(flat(0.5), edge, flat(0.5))
    expected = 10 * sobel_magnitude(edge[:, :1]).mean()  # fused has none of the edge's texture
    assert parts["texture"].item() == pytest.approx(expected.item(), rel=1e-5)
    _, parts = visual_loss(edge, edge, flat(0.5))
    assert parts["texture"].item() == pytest.approx(0.0, abs=1e-7)


def test_colour_follows_the_ikr_image_not_the_ckg_image():
    red = flat((0.9, 0.2, 0.2))
    grey_ir = flat(0.2)
    _, parts = visual_loss(red, red, grey_ir)
    assert parts["color_cr"].item() == 0.0 and parts["color_cb"].item() == 0.0
    _, parts = visual_loss(flat(0.9), red, grey_ir)  # grey fused loses the red chroma
    _, cb_red, cr_red = rgb_to_ycbcr(red)
    assert parts["color_cr"].item() == pytest.approx(5 * abs(cr_red.mean().item() - 0.5), rel=1e-5)
    assert parts["color_cb"].item() == pytest.approx(5 * abs(cb_red.mean().item() - 0.5), rel=1e-5)


def test_total_is_the_sum_of_the_parts_and_differentiable():
    torch.manual_seed(0)
    fused = torch.rand(2, 3, 16, 16, requires_grad=True)
    total, parts = visual_loss(fused, torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16))
    assert set(parts) == {"contrast", "texture", "color_cr", "color_cb"}
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()), rel=1e-6)
    total.backward()
    assert fused.grad is not None and torch.isfinite(fused.grad).all() and fused.grad.abs().sum() > 0


def test_cross_entropy_applies_the_class_weights():
    # Uniform logits: every pixel's NLL is log(9), so the weighted mean is log(9) whatever the weights.
    logits = torch.zeros(1, 9, 2, 2)
    target = torch.tensor([[[0, 4], [4, 4]]])
    assert segmentation_loss(logits, target).item() == pytest.approx(math.log(9), rel=1e-6)
    # Confident on class 0 everywhere: pixels of class 4 (weight 4) dominate pixels of class 0 (weight 0.4).
    logits = torch.zeros(1, 9, 2, 2)
    logits[:, 0] = 5.0
    nll = F.cross_entropy(logits, target, reduction="none")[0]
    w0, w4 = MFNET_CLASS_WEIGHTS[0], MFNET_CLASS_WEIGHTS[4]
    expected = (w0 * nll[0, 0] + w4 * (nll[0, 1] + nll[1, 0] + nll[1, 1])) / (w0 + 3 * w4)
    assert segmentation_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    unweighted = segmentation_loss(logits, target, class_weights=(1.0,) * 9)
    assert unweighted.item() == pytest.approx(nll.mean().item(), rel=1e-6)
    assert segmentation_loss(logits, target).item() > unweighted.item()


def test_ignored_pixels_do_not_count_and_all_ignored_is_zero():
    logits = torch.randn(1, 9, 4, 4, requires_grad=True)
    target = torch.randint(0, 9, (1, 4, 4))
    marked = target.clone()
    marked[0, :2] = 255
    expected = F.cross_entropy(logits[:, :, 2:], target[:, 2:], weight=torch.tensor(MFNET_CLASS_WEIGHTS))
    assert segmentation_loss(logits, marked).item() == pytest.approx(expected.item(), rel=1e-6)
    nothing = segmentation_loss(logits, torch.full((1, 4, 4), 255))
    assert nothing.item() == 0.0
    nothing.backward()  # still connected to the graph


def test_latent_size_logits_are_upsampled_to_the_target():
    logits = torch.zeros(1, 9, 2, 2)
    logits[:, 2] = 10.0
    loss = segmentation_loss(logits, torch.full((1, 8, 8), 2))
    assert loss.item() < 1e-3


def test_eps_mse_is_the_mean_squared_error():
    pred = torch.zeros(2, 8, 4, 4)
    target = torch.full((2, 8, 4, 4), 3.0)
    assert eps_mse(pred, target).item() == pytest.approx(9.0)
    assert eps_mse(pred.bfloat16(), target.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match="shape mismatch"):
        eps_mse(pred, target[:1])
