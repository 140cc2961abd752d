"""Rendering augmentation: shapes and ranges, seeded, grey stays grey, equalisation's
invariance to monotone intensity mappings (the property it is there for)."""

from __future__ import annotations

import torch

from models.training.augment import AugmentSpec, augment, equalize, make_overlays


def _batch(c: int, n: int = 16, s: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, s, s, generator=g)


def test_output_shape_range_and_seeding() -> None:
    x = _batch(3)
    overlays = make_overlays(32, count=8, seed=0)
    a = augment(x.clone(), torch.Generator().manual_seed(1), AugmentSpec(), overlays)
    b = augment(x.clone(), torch.Generator().manual_seed(1), AugmentSpec(), overlays)
    c = augment(x.clone(), torch.Generator().manual_seed(2), AugmentSpec(), overlays)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_grey_images_stay_grey_in_a_colour_model() -> None:
    grey = _batch(1).expand(-1, 3, -1, -1).contiguous()
    out = augment(grey, torch.Generator().manual_seed(0), AugmentSpec(p_jpeg=0.0))
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])


def test_every_step_on_changes_every_image() -> None:
    spec = AugmentSpec(p_smooth=1, p_median=1, p_window=1, p_equalize=1, p_match=1, p_gamma=1,
                       p_contrast=1, p_resample=1, p_blur=1, p_noise=1, p_overlay=1, p_jpeg=1)
    x = _batch(1)
    out = augment(x.clone(), torch.Generator().manual_seed(0), spec, make_overlays(32, 4))
    assert ((out - x).abs().mean((1, 2, 3)) > 0.01).all()


def test_equalisation_ignores_monotone_intensity_mappings() -> None:
    # 64 grey levels 4 apart, shuffled: any strictly increasing mapping that keeps them
    # distinct in 8 bits (gamma, a window that clips nothing) gives the same equalised image.
    levels = (torch.arange(64).repeat(4) * 4)[torch.randperm(256, generator=torch.Generator()
                                                              .manual_seed(0))]
    x = (levels.float() / 255).view(1, 1, 16, 16)
    ref = equalize(x)
    for mapped in (x ** 0.8, 0.1 + 0.8 * x, x ** 1.25):
        torch.testing.assert_close(equalize((mapped * 255).round() / 255), ref)
