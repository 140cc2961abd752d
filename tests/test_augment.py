"""Rendering augmentation: shapes and ranges, seeded, grey stays grey, equalisation's
invariance to monotone intensity mappings (the property it is there for), and mirror
images and quarter turns only when asked for."""

from __future__ import annotations

from dataclasses import replace

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


def _equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b).abs() < 1e-3).flatten(1).all(1)


def test_symmetries_mirror_and_turn_only_when_allowed() -> None:
    """With geometry and rendering off, an image comes back as itself or one of the
    allowed transforms of it, and every allowed one occurs; none allowed: unchanged."""
    still = AugmentSpec(rotate_deg=0.0, scale=(1.0, 1.0), shift=0.0, aspect=0.0).scaled(0.0)
    x = _batch(1, n=64)
    g = torch.Generator().manual_seed(0)
    # (the gamma step clamps at 1e-4: equal up to that)
    torch.testing.assert_close(augment(x.clone(), g, still), x, atol=1e-3, rtol=0)
    spec = replace(still, symmetries=("flip_lr",))
    out = augment(x.clone(), torch.Generator().manual_seed(0), spec)
    same = _equal(out, x)
    mirrored = _equal(out, x.flip(3))
    assert bool((same | mirrored).all()) and 10 < int(mirrored.sum()) < 54
    spec = replace(still, symmetries=("rot90",))
    out = augment(x.clone(), torch.Generator().manual_seed(0), spec)
    turns = [_equal(out, torch.rot90(x, k, (2, 3))) for k in range(4)]
    assert bool(torch.stack(turns).any(0).all()) and all(int(t.sum()) > 5 for t in turns)


def test_recorded_strength_zero_means_no_rendering_change() -> None:
    from models.training.augment import recipe_spec

    assert recipe_spec(0.0).p_window == 0.0 and recipe_spec(None).p_window == AugmentSpec().p_window
    assert recipe_spec(1.0, ["flip_ud"]).symmetries == ("flip_ud",)
