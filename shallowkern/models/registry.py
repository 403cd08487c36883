"""Model-family registry: the one place a model family (lenet, vgg16, and the heads to come) is
declared, so that sweep configs, trial building, records, the CLI, reports and plots all learn
about it from here instead of branching on its name.

Adding a family (e.g. a SpinalNet head) is one file under ``shallowkern/models/`` that calls
:func:`register_family` at import time; every module of this package is imported the first
time the registry is asked for a family, so no other file needs an edit::

    from .registry import Family, Param, register_family

    def _build(p, *, in_channels, input_size, num_classes):
        return SpinalVGG5(p["width"], spinal=p["spinal"], num_classes=num_classes,
                          in_channels=in_channels, input_size=input_size)

    register_family(Family(
        name="spinal_vgg5", description="VGG-5 with a SpinalNet head (Kabir et al. 2022)",
        params=(Param("width", int, help="first conv layer's filters", minimum=1),
                Param("spinal", int, default=16, minimum=1, help="neurons per spinal layer"),
                Param("bn", bool, default=False, help="BatchNorm after each conv")),
        build=_build, width_param="width"))

Then ``TrialConfig("spinal_vgg5", width=64, seed=0)``, ``shallowkern sweep --family spinal_vgg5
--grid width=16,32,64``, ``shallowkern profile spinal_vgg5:64,spinal=8`` and ``shallowkern fit
--family spinal_vgg5`` all work.

What a :class:`Family` declares:

* ``params``: the hyper-parameters that define the network (:class:`Param`: name, type int /
  float / bool / str, default, minimum, choices, help). A value is checked and normalised (an
  int given as 16.0 becomes 16; 16.5, True, "x" are errors naming the parameter) before any
  model is built, and defaults are filled in, so two spellings of one network share a trial id.
  ``normalize`` adds cross-parameter rules (LeNet: ``d2`` or ``k``, not both).
* ``build(params, *, in_channels, input_size, num_classes) -> nn.Module``: the network,
  initialised from torch's global RNG. It may raise ValueError for an input it cannot take.
* ``width_param``: the parameter a bare value in a model spec sets (``lenet:16`` is d1 = 16) and
  the sweep's width axis. ``width_key``/``width_label``: the record field used as the x of
  power-law fits and plots (default ``width_param``) and its axis label.
* ``model_info(model, params) -> dict``: what the record stores under ``"model"`` besides the
  family (default: the params). Put realised sizes here (LeNet's ``d2 = round(k*d1)``).
* ``label(values) -> str``: a short shape description (``d1=16 k=2.8``) from a config's params,
  or from a record's config merged with its model info.
* ``fit_group``/``fit_group_default``: a parameter whose values must not be mixed in one fit
  (LeNet's ``k``: ``fit --k``); ``series``: parameters that give separate curves in plots.
* ``flags``: bare words accepted in model specs (``vgg16:0.5,bn`` sets ``batch_norm=True``).
* ``cost(params, input_shape) -> {"params", "macs", "activations"}``: the FLOP/parameter
  accounting hook, per image (2 FLOPs per multiply-add). The default builds the model on the
  meta device (free at any width) and sums ``layer_report``; ``profile`` uses it to estimate
  memory before it builds anything.
* ``input_shape``: the (C, H, W) a model is profiled and accounted at when no dataset says
  otherwise (default CIFAR's 3x32x32; ``shallowkern profile --input`` overrides it).
* ``id_padding``: only for the two families that predate the registry (fields every old trial
  id hashed); new families leave it empty.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = ["LENET_DEFAULT_K", "RESERVED", "Family", "Param", "families", "get_family",
           "params_of", "parse_model_spec", "register_family"]

# TrialConfig's own fields: a family parameter may not shadow them.
RESERVED = frozenset({"family", "params", "dataset", "recipe", "overrides", "seed",
                      "train_subset", "impl"})

_MISSING = object()


@dataclass(frozen=True)
class Param:
    """One hyper-parameter of a family.

    ``kind`` is int, float, bool or str. ``default`` None with ``required=False`` means "absent
    unless given" (LeNet's ``d2``); ``required=True`` (the default when ``default`` is None and
    ``optional`` is False) makes it mandatory. ``minimum`` is inclusive for int, exclusive
    (``> minimum``) for float when ``positive``; floats must be finite.
    """

    name: str
    kind: type
    default: Any = None
    minimum: float | None = None
    choices: tuple[Any, ...] | None = None
    optional: bool = False
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is None and not self.optional

    def check(self, value: Any, family: str) -> Any:
        """``value`` normalised to ``kind``; ValueError naming the parameter otherwise."""
        where = f"{family}.{self.name}"
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"{where} is required")
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                return value.lower() in ("true", "1")
            raise ValueError(f"{where} must be true or false, got {value!r}")
        if self.kind is int:
            if isinstance(value, str):
                value = _number(value, where, "an integer")
            # 16.0 from JSON or a CLI is 16; 16.5 and True are typos, not widths.
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value != int(value)):
                raise ValueError(f"{where} must be an integer, got {value!r}")
            value = int(value)
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"{where} must be an integer >= {self.minimum:g}, got {value}")
        elif self.kind is float:
            if isinstance(value, str):
                value = _number(value, where, "a number")
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f"{where} must be a finite number, got {value!r}")
            value = float(value)
            if self.minimum is not None and not value > self.minimum:
                raise ValueError(f"{where} must be a number > {self.minimum:g}, got {value!r}")
        elif self.kind is str:
            if not isinstance(value, str):
                raise ValueError(f"{where} must be a string, got {value!r}")
        else:  # pragma: no cover - register_family rejects other kinds
            raise TypeError(f"{where}: unsupported kind {self.kind!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{where} must be one of {list(self.choices)}, got {value!r}")
        return value


def _number(text: str, where: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where} must be {what}, got {text!r}") from None


def _default_label(values: Mapping[str, Any], params: Sequence[Param]) -> str:
    parts = []
    for p in params:
        v = values.get(p.name)
        if v is None or v is False:
            continue
        parts.append(p.name if v is True else f"{p.name}={v:g}" if isinstance(v, float)
                     else f"{p.name}={v}")
    return " ".join(parts)


@dataclass(frozen=True)
class Family:
    """A model family: see the module docstring for what each field means."""

    name: str
    description: str
    params: tuple[Param, ...]
    build: Callable[..., nn.Module]
    width_param: str
    width_key: str | None = None
    width_label: str | None = None
    normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    model_info: Callable[[Any, Mapping[str, Any]], dict[str, Any]] | None = None
    label: Callable[[Mapping[str, Any]], str] | None = None
    fit_group: str | None = None
    fit_group_default: Any = None
    series: tuple[str, ...] = ()
    flags: Mapping[str, tuple[str, Any]] = field(default_factory=dict)
    cost: Callable[[Mapping[str, Any], tuple[int, ...]], dict[str, int]] | None = None
    id_padding: Mapping[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, int, int] = (3, 32, 32)

    # -- parameters -------------------------------------------------------------------------
    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Checked, normalised parameters with defaults filled in (what the trial id hashes).

        A name the family does not have is an error naming the family that has it, except a
        legacy field at its neutral value (``width=None`` on a LeNet), which old records carry.
        """
        given = dict(given)
        for name in list(given):
            if name in self.param_names:
                continue
            if name in self.id_padding and given[name] == self.id_padding[name]:
                del given[name]  # an old record's neutral field
                continue
            owners = [f.name for f in _REGISTRY.values() if name in f.param_names]
            hint = (f"{name} belongs to {', '.join(owners)}, not {self.name}" if owners else
                    f"unknown parameter {name!r} for {self.name}")
            raise ValueError(f"{hint} (parameters of {self.name}: "
                             f"{', '.join(self.param_names)})")
        out: dict[str, Any] = {}
        for p in self.params:
            value = given.get(p.name, _MISSING)
            if value is _MISSING or value is None:
                value = p.default
            out[p.name] = p.check(value, self.name)
        return self.normalize(out) if self.normalize else out

    # -- names ------------------------------------------------------------------------------
    @property
    def x_key(self) -> str:
        """Record field (model info, then config) used as the x of fits and plots."""
        return self.width_key or self.width_param

    @property
    def x_label(self) -> str:
        return self.width_label or self.x_key

    def describe(self, values: Mapping[str, Any]) -> str:
        """Short shape text: ``d1=16 k=2.8``, ``width=0.5 bn``."""
        return self.label(values) if self.label else _default_label(values, self.params)

    # -- models -----------------------------------------------------------------------------
    def build_model(self, params: Mapping[str, Any], *, in_channels: int = 3,
                    input_size: int = 32, num_classes: int = 10) -> nn.Module:
        return self.build(self.resolve(params), in_channels=in_channels, input_size=input_size,
                          num_classes=num_classes)

    def info(self, model: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        """The record's ``model`` field."""
        extra = self.model_info(model, params) if self.model_info else dict(params)
        return {"family": self.name, **extra}

    def account(self, params: Mapping[str, Any], input_shape: tuple[int, ...] | None = None,
                num_classes: int = 10) -> dict[str, int]:
        """Per image of ``input_shape`` (default the family's): ``params`` (trainable), ``macs``
        (conv + linear multiply-adds) and ``activations`` (elements written by conv and linear
        layers, before pooling)."""
        params = self.resolve(params)
        input_shape = tuple(input_shape or self.input_shape)
        if self.cost is not None:
            return dict(self.cost(params, input_shape))
        import torch

        from .shallow import layer_report

        with torch.device("meta"):
            model = self.build(params, in_channels=input_shape[0], input_size=input_shape[-1],
                               num_classes=num_classes)
        rows = layer_report(model.eval(), input_shape)  # eval: BatchNorm1d takes one image
        acts = sum((r["map"][0] * r["map"][1] if r["map"] else 1) * r["depth"] for r in rows)
        return {"params": int(sum(p.numel() for p in model.parameters())),
                "macs": int(sum(r["macs"] for r in rows)), "activations": int(acts)}


_REGISTRY: dict[str, Family] = {}
_DISCOVERED = False
_IMPORT_ERRORS: dict[str, str] = {}


def register_family(family: Family, *, replace: bool = False) -> Family:
    """Add ``family`` to the registry (``replace=True`` to redefine one); returns it."""
    if not isinstance(family, Family):
        raise TypeError(f"register_family expects a Family, got {type(family).__name__}")
    if not family.name or not family.name.replace("_", "").isalnum() or family.name != \
            family.name.lower():
        raise ValueError(f"family name {family.name!r}: use lower-case letters, digits and _")
    if family.name in _REGISTRY and not replace and _REGISTRY[family.name] is not family:
        raise ValueError(f"family {family.name!r} is already registered (replace=True to "
                         "redefine it)")
    names = family.param_names
    clash = sorted(set(names) & RESERVED)
    if clash or len(set(names)) != len(names):
        raise ValueError(f"family {family.name!r}: parameter names {list(names)} repeat or "
                         f"shadow TrialConfig fields {sorted(clash)}")
    for p in family.params:
        if p.kind not in (int, float, bool, str):
            raise ValueError(f"{family.name}.{p.name}: kind must be int, float, bool or str")
    if family.width_param not in names:
        raise ValueError(f"family {family.name!r}: width_param {family.width_param!r} is not "
                         f"one of its parameters {list(names)}")
    for word, (target, _) in family.flags.items():
        if target not in names:
            raise ValueError(f"family {family.name!r}: flag {word!r} sets unknown {target!r}")
    _REGISTRY[family.name] = family
    return family


def _discover() -> None:
    """Import every module of shallowkern.models once, so their families register."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    from . import __path__ as pkg_path

    for mod in pkgutil.iter_modules(pkg_path):
        if mod.name == "registry":
            continue
        try:
            importlib.import_module(f"{__package__}.{mod.name}")
        except Exception as exc:  # noqa: BLE001 - one broken model file must not hide the rest
            _IMPORT_ERRORS[mod.name] = f"{type(exc).__name__}: {exc}"


def families() -> tuple[str, ...]:
    """Names of the registered families, in registration order."""
    _discover()
    return tuple(_REGISTRY)


def get_family(name: str) -> Family:
    """The family ``name``; ValueError listing the known ones otherwise."""
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    _discover()
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    broken = "".join(f"; shallowkern.models.{m} failed to import ({e})"
                     for m, e in _IMPORT_ERRORS.items())
    raise ValueError(f"unknown model family {name!r}; expected one of {list(_REGISTRY)}{broken}")


def parse_model_spec(spec: str) -> tuple[Family, dict[str, Any]]:
    """``lenet:16``, ``lenet:d1=16,k=2.8``, ``vgg16:width=0.5,bn`` -> (family, checked params).

    A bare value sets the family's ``width_param``; a bare word is one of its ``flags``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("empty model spec")
    name, _, rest = spec.partition(":")
    fam = get_family(name.strip().lower())
    given: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            if key in fam.flags:
                target, flag_value = fam.flags[key]
                given[target] = flag_value
                continue
            if fam.width_param in given:
                raise ValueError(f"{part!r}: {fam.width_param} is already given (flags of "
                                 f"{fam.name}: {sorted(fam.flags) or 'none'})")
            key, value = fam.width_param, part
        if key in given:
            raise ValueError(f"{key} is given twice")
        given[key] = value.strip()
    return fam, fam.resolve(given)


# ----------------------------------------------------------------------------- built-ins
# The two families that predate the registry. Their trial ids hashed every one of these fields
# (None/False where they did not apply), so id_padding keeps them in the canonical form.
_LEGACY_PADDING = {"d1": None, "d2": None, "k": None, "width": None, "batch_norm": False}
LENET_DEFAULT_K = 2.8  # the conservation-law optimum (28*d1 = 10*d2)


def _lenet_normalize(p: dict[str, Any]) -> dict[str, Any]:
    if p["d2"] is not None and p["k"] is not None:
        raise ValueError("lenet: give d2 or k, not both")
    if p["d2"] is None and p["k"] is None:
        # Neither given means the model's default; spell it out so that both ways of asking for
        # the same network share one trial id.
        p["k"] = LENET_DEFAULT_K
    return p


def _lenet_build(p: Mapping[str, Any], *, in_channels: int, input_size: int,
                 num_classes: int) -> nn.Module:
    from .shallow import GeneralizedLeNet

    return GeneralizedLeNet(p["d1"], d2=p["d2"], k=p["k"], num_classes=num_classes,
                            in_channels=in_channels, input_size=input_size)


def _lenet_label(v: Mapping[str, Any]) -> str:
    tail = f"d2={v['d2']}" if v.get("d2") is not None else f"k={float(v['k']):g}"
    return f"d1={v['d1']} {tail}"


def _lenet_cost(p: Mapping[str, Any], input_shape: tuple[int, ...]) -> dict[str, int]:
    # Closed form (models/shallow.py): no model is built, so d1 = 10^5 costs nothing.
    c, s = input_shape[0], input_shape[-1]
    d1 = p["d1"]
    d2 = p["d2"] if p["d2"] is not None else max(1, round(p["k"] * d1))
    o1 = s - 4
    o2 = o1 // 2 - 4
    side = o2 // 2
    if o1 < 1 or o2 < 1 or side < 1:
        raise ValueError(f"lenet: input_size={s} is too small (need >= 16)")
    fc = [d2 * side * side, 120, 84, 10]
    lin_macs = sum(a * b for a, b in zip(fc[:-1], fc[1:]))
    lin_params = sum(a * b + b for a, b in zip(fc[:-1], fc[1:]))
    return {"params": (c * 25 + 1) * d1 + (d1 * 25 + 1) * d2 + lin_params,
            "macs": o1 * o1 * d1 * c * 25 + o2 * o2 * d2 * d1 * 25 + lin_macs,
            "activations": o1 * o1 * d1 + o2 * o2 * d2 + sum(fc[1:])}


def _vgg_build(p: Mapping[str, Any], *, in_channels: int, input_size: int,
               num_classes: int) -> nn.Module:
    from .shallow import GeneralizedVGG16

    if input_size != 32:
        raise ValueError(f"vgg16 needs 32x32 inputs, got {input_size}x{input_size}")
    return GeneralizedVGG16(p["width"], num_classes=num_classes, in_channels=in_channels,
                            batch_norm=p["batch_norm"])


register_family(Family(
    name="lenet",
    description="generalized LeNet-5: conv5x5(d1)+pool, conv5x5(d2 = k*d1)+pool, FC 120-84",
    params=(Param("d1", int, minimum=1, help="conv1 filters"),
            Param("d2", int, minimum=1, optional=True, help="conv2 filters (instead of k)"),
            Param("k", float, minimum=0, optional=True,
                  help=f"depth ratio d2/d1 (default {LENET_DEFAULT_K})")),
    build=_lenet_build, width_param="d1", width_label="d1", normalize=_lenet_normalize,
    model_info=lambda m, p: {"d1": m.d1, "d2": m.d2, "k": m.d2 / m.d1},
    label=_lenet_label, fit_group="k", fit_group_default=LENET_DEFAULT_K, series=("k",),
    cost=_lenet_cost, id_padding=_LEGACY_PADDING))

register_family(Family(
    name="vgg16",
    description="VGG-16 for 32x32 inputs, every conv width x width (1.0 = 64..512 filters)",
    params=(Param("width", float, default=1.0, minimum=0, help="width multiplier"),
            Param("batch_norm", bool, default=False, help="BatchNorm after each conv")),
    build=_vgg_build, width_param="width", width_key="first_width",
    width_label="first-layer width",
    model_info=lambda m, p: {"width": p["width"], "batch_norm": p["batch_norm"],
                             "first_width": _first_conv(m).out_channels},
    label=lambda v: f"width={float(v['width']):g}" + (" bn" if v.get("batch_norm") else ""),
    series=("batch_norm",), flags={"bn": ("batch_norm", True), "batch_norm": ("batch_norm", True)},
    id_padding=_LEGACY_PADDING))


def _first_conv(model: Any) -> Any:
    from torch import nn

    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def params_of(values: Mapping[str, Any], family: Family) -> dict[str, Any]:
    """The family's parameters among ``values`` (a record's config)."""
    return {k: values[k] for k in family.param_names if k in values}


