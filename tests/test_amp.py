"""Mixed precision: autocast dtypes, the float16 gradient scaler, channels-last, refusals."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import make_tiny_net
from torch import nn

import tta
from tta.functional import softmax_entropy
from tta.losses.base import Loss
from tta.precision import Precision, check_amp
from tta.registry import LOSSES


def run(loss: str, amp: str | None, images: torch.Tensor, batches: int = 3, **kwargs):
    torch.manual_seed(0)
    adapted = tta.adapt(make_tiny_net(), loss=loss, amp=amp, **kwargs)
    outputs = [adapted(images) for _ in range(batches)]
    return adapted, outputs


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("bad", ["fp32", "bfloat16", 16, True])
def test_bad_amp_is_refused_with_the_choices(bad):
    with pytest.raises(ValueError, match="'bf16'.*'fp16'.*None"):
        check_amp(bad)
    with pytest.raises(ValueError, match="amp must be"):
        tta.adapt(make_tiny_net(), amp=bad)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_weights_stay_float32_and_results_stay_close(images, amp):
    reference, expected = run("tent", None, images, optimizer="sgd", lr=0.05)
    adapted, got = run("tent", amp, images, optimizer="sgd", lr=0.05)
    assert all(p.dtype == torch.float32 for p in adapted.model.parameters())
    assert all(out.dtype == torch.float32 for out in got)
    assert adapted.counters.n_steps >= 2  # float16 may skip one overflowing step
    moved = [
        n
        for n, p in params(adapted.model).items()
        if not torch.equal(p, params(make_tiny_net())[n])
    ]
    assert moved  # the reduced-precision run adapted
    tolerance = 0.05 if amp == "bf16" else 0.02  # bfloat16 keeps 8 mantissa bits
    assert torch.allclose(got[-1], expected[-1], atol=tolerance)
    assert not torch.equal(got[-1], expected[-1])  # autocast did change the arithmetic
    assert adapted.describe()["amp"] == amp


def test_float16_scales_the_loss_and_unscales_before_the_step(images):
    """One SGD step under float16 moves the weights by lr * the true (unscaled) gradient."""
    lr = 0.1
    reference = tta.adapt(make_tiny_net(), loss="tent", optimizer="sgd", lr=lr, momentum=0.0)
    reference(images)
    adapted = tta.adapt(
        make_tiny_net(), loss="tent", optimizer="sgd", lr=lr, momentum=0.0, amp="fp16"
    )
    adapted.grad_scaler._init_scale = 2.0**8  # a scale that cannot overflow this tiny net
    seen = []
    original = adapted.grad_scaler.scale
    adapted.grad_scaler.scale = lambda loss: seen.append(float(loss.detach())) or original(loss)
    adapted(images)
    assert len(seen) == 1 and adapted.counters.n_steps == 1
    source = params(make_tiny_net())
    for name, value in params(adapted.model).items():
        step = value - source[name]
        expected = params(reference.model)[name] - source[name]
        assert torch.allclose(step, expected, rtol=0.05, atol=1e-4), name
    assert adapted.grad_scaler.get_scale() == 2.0**8  # no overflow: the scale stays


def test_float16_overflow_skips_the_step_and_halves_the_scale(images):
    adapted = tta.adapt(make_tiny_net(), loss="tent", amp="fp16")
    adapted(images)
    adapted.grad_scaler.update(2.0**60)  # float16 overflows for sure
    before = params(adapted.model)
    skipped = adapted.counters.n_nonfinite
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow is the scaler's business: no warning
        adapted(images)
    assert adapted.counters.n_nonfinite == skipped + 1
    assert adapted.grad_scaler.get_scale() == 2.0**59
    after = params(adapted.model)
    assert all(torch.equal(before[n], after[n]) for n in before)


class OwnBackward(Loss):
    """A user's loss that calls backward itself, out of the float16 scaler's reach."""

    def backward(self, context, x, logits, keep):
        loss = softmax_entropy(logits).mean(0)
        loss.backward()
        return loss.detach()


def test_float16_is_refused_for_a_loss_that_runs_its_own_backward(monkeypatch):
    monkeypatch.setitem(LOSSES._factories, "own-backward", OwnBackward)
    model = make_tiny_net()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"'own-backward' runs its own backward.*amp='bf16'"):
        tta.adapt(model, loss="own-backward", amp="fp16")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    tta.adapt(model, loss="own-backward", amp="bf16")(torch.rand(4, 3, 8, 8))


def run_fp16(loss: str, images: torch.Tensor, init_scale: float, batches: int, **kwargs):
    """A float16 run whose gradient scaler starts at `init_scale` (torch's default 2^16
    overflows on the first steps of some tiny-net losses; a lower start makes the steps
    comparable one for one with float32's)."""
    torch.manual_seed(0)
    adapted = tta.adapt(make_tiny_net(), loss=loss, amp="fp16", **kwargs)
    adapted.grad_scaler._init_scale = init_scale  # read at the first scale() call
    return adapted, [adapted(images) for _ in range(batches)]


SGD = {"optimizer": "sgd", "lr": 1e-2, "momentum": 0.0}


@pytest.mark.parametrize(
    "loss, options",
    [
        ("sar", {"margin": 10.0}),
        ("eta", {"e_margin": 1.0, "d_margin": 1.5}),
        ("pl", {"threshold": 0.0}),
        ("deyo", {"margin": 10.0, "plpd_threshold": -1.0}),
        ("cotta", {"ap": 0.0}),
    ],
)
def test_float16_scales_the_backward_passes_of_methods_that_run_their_own(images, loss, options):
    """SAR's two SAM passes, ETA's filtered entropy, PL, DeYO and CoTTA go through the
    scaler: every step is taken, scaled and unscaled, and lands where float32's does."""
    adapted, got = run_fp16(loss, images, 2.0**8, batches=3, **SGD, **options)
    assert adapted.counters.n_steps == 3 and adapted.counters.n_nonfinite == 0
    assert adapted.grad_scaler.get_scale() == 2.0**8
    assert all(p.dtype == torch.float32 for p in adapted.model.parameters())
    reference, expected = run(loss, None, images, batches=3, **SGD, **options)
    assert adapted.counters.n_backward == reference.counters.n_backward
    assert torch.allclose(got[-1], expected[-1], atol=0.02)
    for (name, p), q in zip(
        adapted.model.named_parameters(), reference.model.parameters(), strict=True
    ):
        assert torch.allclose(p, q, atol=1e-3), name


def test_float16_overflow_in_sars_first_pass_skips_the_step(images):
    """An overflowing first SAM gradient is not used to perturb the weights (it would make
    them NaN and the step a silent zero-gradient one): the step is skipped, the scale halves
    and the weights stay the source's."""
    torch.manual_seed(0)
    source = params(make_tiny_net())  # run_fp16 builds the same net from the same seed
    adapted, _ = run_fp16("sar", images, 2.0**40, batches=1, margin=10.0)
    assert adapted.counters.n_nonfinite == 1 and adapted.counters.n_steps == 0
    assert adapted.loss.n_zero_gradient_steps == 0
    assert adapted.grad_scaler.get_scale() == 2.0**39
    after = params(adapted.model)
    assert all(torch.equal(source[n], after[n]) for n in after)


@pytest.mark.parametrize("loss, options", [("sar", {"margin": 10.0}), ("cotta", {"ap": 0.0})])
def test_bfloat16_runs_sam_and_teachers(images, loss, options):
    """SAR's two passes and CoTTA's teacher/anchor copies run under bfloat16, weights float32."""
    reference, expected = run(loss, None, images, batches=2, lr=1e-2, **options)
    adapted, got = run(loss, "bf16", images, batches=2, lr=1e-2, **options)
    assert adapted.counters.n_steps == 2 and adapted.counters.n_backward >= 2
    assert all(p.dtype == torch.float32 for p in adapted.model.parameters())
    if loss == "cotta":
        assert all(p.dtype == torch.float32 for p in adapted.loss.teacher.parameters())
    assert torch.allclose(got[-1], expected[-1], atol=0.1)


def test_channels_last_weights_and_inputs(images):
    reference, expected = run("tent", None, images)
    adapted, got = run("tent", None, images, channels_last=True)
    assert adapted.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(got[-1], expected[-1], atol=1e-5)
    adapted.reset()  # reset keeps the memory format (load_state_dict copies in place)
    assert adapted.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_is_refused_for_a_model_without_images():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    with pytest.raises(ValueError, match="channels_last reorders 4-D image tensors"):
        tta.adapt(mlp, channels_last=True)


def test_training_free_losses_run_under_float16(images):
    for loss in ("lame", "t3a", "source"):
        adapted, got = run(loss, "fp16", images, batches=1)
        _, expected = run(loss, None, images, batches=1)
        assert got[0].dtype == torch.float32
        assert torch.allclose(got[0], expected[0], atol=0.05), loss


def test_precision_describes_itself():
    assert Precision("bf16", True).describe() == {"amp": "bf16", "channels_last": True}
    assert Precision().dtype == torch.float32
    with pytest.raises(ValueError, match="channels_last must be True or False"):
        Precision(None, "yes")


def test_cli_and_run_config_carry_amp_and_channels_last():
    from tta.cli import run_parser, to_config
    from tta.harness.config import RunConfig, resolve

    config = resolve(to_config(run_parser().parse_args(["--amp", "bf16", "--channels-last"])))
    assert (config.amp, config.channels_last) == ("bf16", True)
    default = resolve(to_config(run_parser().parse_args([])))
    assert (default.amp, default.channels_last) == (None, False)
    with pytest.raises(SystemExit):
        run_parser().parse_args(["--amp", "fp32"])
    with pytest.raises(ValueError, match="amp must be"):
        resolve(RunConfig(amp="float16"))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_a_weight_changed_inside_a_step_is_seen_by_the_next_forward(amp):
    """No cached low-precision weight copies: SAR perturbs, MEMO predicts after its update."""
    layer = nn.Linear(4, 3)
    x = torch.ones(2, 4)
    with Precision(amp).autocast(torch.device("cpu")):
        before = layer(x)
        with torch.no_grad():
            layer.weight.add_(1.0)
        after = layer(x)
    assert torch.allclose(after - before, torch.full_like(before, 4.0), atol=0.05)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_every_loss_runs_or_refuses_clearly(amp):
    """bfloat16 and channels-last run every registered method; float16 runs it or refuses it
    with the message (the composition test's options make the tiny batches pass filters)."""
    from test_composition import loss_options

    from tta.precision import scales_gradients
    from tta.registry import LOSSES

    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    for name in LOSSES.names():
        torch.manual_seed(0)
        refused = amp == "fp16" and LOSSES.get(name).adapts
        refused = refused and not scales_gradients(LOSSES.create(name, **loss_options(name)))
        if refused:
            with pytest.raises(ValueError, match="runs its own backward passes"):
                tta.adapt(make_tiny_net(), loss=name, amp=amp, **loss_options(name))
            continue
        adapted = tta.adapt(
            make_tiny_net(), loss=name, amp=amp, channels_last=True, **loss_options(name)
        )
        outputs = [adapted(x) for _ in range(2)]
        assert all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in outputs), name
        assert all(p.dtype == torch.float32 for p in adapted.model.parameters()), name
        if adapted.adapts and amp == "bf16":  # float16 may skip an overflowing step
            assert adapted.counters.n_steps > 0, (name, adapted.counters)
