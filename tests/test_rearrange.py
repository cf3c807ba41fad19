"""The einops rearranges give bit-for-bit what the view/permute chains they replaced gave."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tta.filters.per_sample import _conv_rule, _linear_rule
from tta.losses.deyo import patch_shuffle


def old_patch_shuffle(x: torch.Tensor, patch_len: int = 4) -> torch.Tensor:
    """DeYO's patch shuffle as it was written with reshape/permute (before einops)."""
    height, width = x.shape[-2:]
    grid_h, grid_w = height // patch_len * patch_len, width // patch_len * patch_len
    resized = (grid_h, grid_w) != (height, width)
    if resized:
        x = F.interpolate(x, size=(grid_h, grid_w), mode="bilinear", antialias=True)
    b, c = x.shape[:2]
    h, w = grid_h // patch_len, grid_w // patch_len
    n = patch_len * patch_len
    patches = x.reshape(b, c, patch_len, h, patch_len, w).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(b, n, c, h, w)
    order = torch.argsort(torch.rand(b, n), dim=1).to(x.device)
    patches = patches[torch.arange(b, device=x.device).unsqueeze(1), order]
    out = patches.reshape(b, patch_len, patch_len, c, h, w).permute(0, 3, 1, 4, 2, 5)
    out = out.reshape(b, c, grid_h, grid_w)
    if resized:
        out = F.interpolate(out, size=(height, width), mode="bilinear", antialias=True)
    return out


def test_patch_shuffle_matches_the_old_implementation_for_a_seed():
    for shape, patch_len in [((3, 3, 8, 8), 4), ((2, 1, 10, 12), 4), ((2, 3, 6, 6), 2)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(7)
        new = patch_shuffle(x, patch_len)
        torch.manual_seed(7)
        old = old_patch_shuffle(x, patch_len)
        assert torch.equal(new, old), (shape, patch_len)
        assert not torch.equal(new, x)  # it did shuffle


def test_patch_shuffle_moves_whole_patches_by_hand():
    """A 2x2 grid of 1-pixel patches: the output is the four pixels in some order."""
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    torch.manual_seed(0)
    order = torch.argsort(torch.rand(1, 4), dim=1)[0]
    torch.manual_seed(0)
    out = patch_shuffle(x, patch_len=2)
    assert out.flatten().tolist() == x.flatten()[order].tolist()


def old_linear_rule(module: nn.Linear, inp: torch.Tensor, gy: torch.Tensor) -> dict:
    a = inp.reshape(inp.shape[0], -1, inp.shape[-1])
    gy = gy.reshape(gy.shape[0], -1, gy.shape[-1])
    grads = {"weight": torch.einsum("bto,bti->boi", gy, a)}
    if module.bias is not None:
        grads["bias"] = gy.sum(1)
    return grads


def old_conv_weight(module: nn.modules.conv._ConvNd, inp: torch.Tensor, gy: torch.Tensor):
    b, dims = inp.shape[0], inp.dim() - 2
    weight = module.weight.detach().repeat(b, *[1] * (dims + 1))
    _, g, _ = torch.ops.aten.convolution_backward(
        gy.reshape(1, -1, *gy.shape[2:]), inp.reshape(1, -1, *inp.shape[2:]), weight, None,
        module.stride, module.padding, module.dilation, False, [0] * dims, b * module.groups,
        [False, True, False],
    )  # fmt: skip
    return g.view(b, *module.weight.shape)


def test_linear_rule_matches_the_old_reshapes_and_the_outer_product():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    for inp in [torch.randn(5, 4), torch.randn(5, 6, 4), torch.randn(2, 3, 2, 4)]:
        gy = torch.randn(*inp.shape[:-1], 3)
        new, old = _linear_rule(layer, inp, gy), old_linear_rule(layer, inp, gy)
        assert torch.equal(new["weight"], old["weight"]) and torch.equal(new["bias"], old["bias"])
    inp, gy = torch.randn(5, 4), torch.randn(5, 3)
    by_hand = gy[:, :, None] * inp[:, None, :]  # sample i: gy_i a_i^T
    torch.testing.assert_close(_linear_rule(layer, inp, gy)["weight"], by_hand)


def test_conv_rule_matches_the_old_reshapes():
    torch.manual_seed(0)
    for conv, inp in [
        (nn.Conv2d(4, 6, 3, padding=1, groups=2), torch.randn(3, 4, 5, 5)),
        (nn.Conv1d(2, 3, 3, stride=2), torch.randn(4, 2, 9)),
    ]:
        gy = torch.randn_like(conv(inp))
        assert torch.equal(_conv_rule(conv, inp, gy)["weight"], old_conv_weight(conv, inp, gy))
