"""Quadric MLPs for the diro5t MNIST comparison (issue 11) and their matched-size variants.

``QuadricMLP(widths, form=..., rank=...)`` stacks QuadricLinear layers with ReLU between them
(as diro5t's TorchQuadMNIST notebook does), input flattened. ``quadric_mnist_models()`` gives the
comparison set: the reported Quadric 784-16-10 (diagonal, 25,434 parameters) and Linear 784-128-10
(101,770), plus the low-rank and full forms at about the diagonal model's parameter count:

* lowrank 784-11-10, rank 1: 26,223 parameters (+3.1%; 10 hidden units give 23,840)
* full: the full form cannot take 784 inputs at this budget (one output costs 307,720
  parameters), so it runs on a linear projection: Linear 784-27, then full QuadricLinear 27-10
  (25,255 parameters, -0.7%).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..nn.quadric_linear import QuadricLinear


class QuadricMLP(nn.Module):
    """Flatten -> [QuadricLinear -> ReLU]* -> QuadricLinear (logits).

    ``widths``: (in, hidden..., out), e.g. (784, 16, 10). ``project``: if given, a plain
    nn.Linear(widths[0], project) comes first (no activation) and the quadric layers start from
    ``project`` features (used for the full form at small budgets). Input (N, *) with
    prod(*) == widths[0]; output (N, widths[-1]).
    """

    def __init__(self, widths: Sequence[int], form: str = "diagonal", rank: int | None = None,
                 project: int | None = None):
        super().__init__()
        widths = list(widths)
        if len(widths) < 2 or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"QuadricMLP: widths must be >= 2 positive ints, got {widths}")
        self.widths, self.form, self.rank, self.project = widths, form, rank, project
        layers: list[nn.Module] = [nn.Flatten()]
        dims = widths
        if project is not None:
            layers.append(nn.Linear(widths[0], project))
            dims = [project] + widths[1:]
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(QuadricLinear(a, b, form=form, rank=rank))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def linear_mlp(widths: Sequence[int]) -> nn.Sequential:
    """Flatten -> [Linear -> ReLU]* -> Linear: the baseline of the comparison (784-128-10)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def quadric_mnist_models(in_features: int = 784, classes: int = 10) -> dict[str, callable]:
    """name -> constructor of the comparison's models (see the module docstring)."""
    return {
        "linear_784-128-10": lambda: linear_mlp([in_features, 128, classes]),
        "quadric_diag_784-16-10": lambda: QuadricMLP([in_features, 16, classes], "diagonal"),
        "quadric_lowrank1_784-11-10": lambda: QuadricMLP([in_features, 11, classes], "lowrank",
                                                         rank=1),
        "quadric_full_784-p27-10": lambda: QuadricMLP([in_features, classes], "full", project=27),
    }


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# sweep-registry family: quadric_mlp (e.g. `shallowkern profile quadric_mlp:16` = diro5t's
# 784-16-10; `quadric_mlp:0,form=full,project=27` = the full-form model of the comparison)
# ---------------------------------------------------------------------------------------------
def _mlp_from_params(p, in_features: int, num_classes: int) -> QuadricMLP:
    widths = [in_features] + ([p["hidden"]] if p["hidden"] > 0 else []) + [num_classes]
    return QuadricMLP(widths, p["form"], p["rank"] if p["form"] == "lowrank" else None,
                      project=p["project"] or None)


def _build(p, *, in_channels, input_size, num_classes):
    return _mlp_from_params(p, in_channels * input_size * input_size, num_classes)


def _cost(p, input_shape) -> dict:
    """Parameters and multiply-adds per image (effective: the full form's packed half)."""
    from ..flops import quadric_linear_flops
    from ..nn.quadric_linear import quadric_param_count

    c, h, w = input_shape[-3:]
    dims = [c * h * w]
    params = macs = acts = 0
    if p["project"]:
        params += dims[0] * p["project"] + p["project"]
        macs += dims[0] * p["project"]
        dims = [p["project"]]
        acts += p["project"]
    dims += ([p["hidden"]] if p["hidden"] > 0 else []) + [10]  # cost() has no class count: MNIST
    r = p["rank"] if p["form"] == "lowrank" else 1
    for a, b in zip(dims[:-1], dims[1:]):
        params += quadric_param_count(a, b, p["form"], r)
        macs += quadric_linear_flops(1, a, b, p["form"], r) // 2
        acts += b
    return {"params": params, "macs": macs, "activations": acts}


def _register() -> None:
    from .registry import Family, Param, register_family

    register_family(Family(
        name="quadric_mlp",
        description="MLP of QuadricLinear layers with ReLU between (diro5t's quadric MNIST "
                    "model; forms diagonal/full/lowrank)",
        params=(Param("hidden", int, default=16, minimum=0, help="hidden quadric neurons "
                      "(0: no hidden layer)"),
                Param("form", str, default="diagonal", choices=("diagonal", "full", "lowrank"),
                      help="quadric form"),
                Param("rank", int, default=1, minimum=1, help="rank of the lowrank form"),
                Param("project", int, default=0, minimum=0,
                      help="a plain Linear to this width first (0: none)")),
        build=_build, width_param="hidden", cost=_cost, input_shape=(1, 28, 28)), replace=True)


_register()
