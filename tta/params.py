"""Which parameters may train at all (`params=`), and configuring norm layers for adaptation."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)

ParamSpec = str | Sequence[str] | None


def select_parameters(model: nn.Module, spec: ParamSpec) -> list[tuple[str, nn.Parameter]]:
    """Resolve `params=`: 'norm' (affine of Batch/Layer/Group/InstanceNorm), 'all', or names.

    Names match a parameter exactly or as a module prefix ("layer3" selects everything in it).
    """
    named = list(model.named_parameters())
    if spec == "all":
        chosen = named
    elif spec == "norm":
        norm_names = {
            f"{module_name}.{pname}" if module_name else pname
            for module_name, module in model.named_modules()
            if isinstance(module, NORM_TYPES)
            for pname, _ in module.named_parameters(recurse=False)
        }
        chosen = [(n, p) for n, p in named if n in norm_names]
        if not chosen:
            raise ValueError(
                f"params='norm' found no affine norm parameters in {type(model).__name__}; "
                "use params='all' or a list of parameter names."
            )
    elif isinstance(spec, str) or spec is None:
        raise ValueError(f"params must be 'norm', 'all' or a list of parameter names, not {spec!r}")
    else:
        wanted = list(spec)
        chosen = [(n, p) for n, p in named if any(n == w or n.startswith(w + ".") for w in wanted)]
        unmatched = [
            w for w in wanted if not any(n == w or n.startswith(w + ".") for n, _ in named)
        ]
        if unmatched:
            raise ValueError(
                f"params names {unmatched} match no parameter; "
                f"examples of names: {[n for n, _ in named[:5]]}"
            )
    return chosen


def freeze_all_but(model: nn.Module, trainable: list[tuple[str, nn.Parameter]]) -> None:
    model.requires_grad_(False)
    for _, param in trainable:
        param.requires_grad_(True)
