"""What a check is: typed parameters, the requests it needs, and the Measurement it returns.

A check measures once: it runs the passes it asks for (``ctx.run(request)``) and returns a
Measurement whose pure ``decide(idx)`` turns a resample of the per-sample measurements into an
Outcome (the decision, the primary value, the controls). The judge calls ``decide(None)`` for
the verdict and ``decide(idx)`` for each bootstrap resample; nothing re-runs. A choice a check
makes from data that every resample has (the massive layers, the emergence layer from the
profile) is made again inside ``decide``; one that needs a pass of its own (which heads to
prune, which entries to set) is made once, from all samples, and listed in ``selections``: the
interval is conditional on it. The claim's comparisons are ``conditions`` on named values, each
judged on its own interval. A claim that cannot be evaluated as written on this model raises
ClaimInvalid.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from massact.corpus import Corpus
from massact.engine import Engine, PassResult
from massact.errors import ClaimRecordError
from massact.figures import Span
from massact.metrics import activations as act
from massact.models import LoadedModel
from massact.requests import Request, want
from massact.verdict import DRAWS, ClaimInvalid, Condition, Measurement, Outcome, fixed  # noqa: F401 (what checks use)


@dataclass(frozen=True)
class Context:
    lm: LoadedModel
    corpus: Corpus
    engine: Engine
    n: int  # samples this claim reads: the first n of the corpus's sample order

    def run(self, request: Request, *, n: int | None = None) -> PassResult:
        """A cached pass with at least ``request``'s statistics over this claim's samples."""
        return self.engine.run(self.lm, self.corpus, request, n=self.n if n is None else n)

    @property
    def seqlen(self) -> int:
        """Tokens per sample of the corpus this claim reads."""
        return self.corpus.settings.seqlen

    def at_seqlen(self, seqlen: int, *, n: int | None = None) -> Context:
        """This context with samples of ``seqlen`` tokens (a sample order of their own), and ``n`` of them."""
        settings = dataclasses.replace(self.corpus.settings, seqlen=seqlen)
        return dataclasses.replace(self, corpus=dataclasses.replace(self.corpus, settings=settings),
                                   n=self.n if n is None else n)


# ---------------------------------------------------------------- parameters

@dataclass(frozen=True, kw_only=True)
class Params:
    """A check's parameters: subclasses declare typed fields; defaults are shared by every record."""

    @classmethod
    def parse(cls, raw: dict) -> Params:
        """An instance from a record's ``params`` table; ClaimRecordError names the field."""
        if not isinstance(raw, dict):
            raise ClaimRecordError("field 'params' must be a table")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise ClaimRecordError(f"field 'params' has unknown key(s) {unknown}; {cls.__name__} takes "
                                   f"{sorted(fields)}")
        missing = [n for n, f in fields.items() if n not in raw and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ClaimRecordError(f"field 'params' lacks {missing}")
        for name, value in raw.items():
            if not _is(value, hints[name]):
                raise ClaimRecordError(f"field 'params.{name}' must be {_describe(hints[name])}, not {value!r}")
            if not finite(value):  # TOML reads nan and inf: no threshold compares sensibly with them
                raise ClaimRecordError(f"field 'params.{name}' must hold finite numbers only, not {value!r}")
        return cls(**{k: _frozen(v) for k, v in raw.items()})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is(value, tp) -> bool:
    """Whether a TOML value fits a field type (an int is a float; a bool is never a number)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, a) for a in args)
    if origin in (tuple, Sequence):
        item = args[0] if args else typing.Any
        return isinstance(value, (list, tuple)) and all(_is(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_is(k, args[0]) and _is(v, args[1]) for k, v in value.items())
    if tp is typing.Any:
        return True
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is type(None):
        return value is None
    return isinstance(value, tp)


def finite(value) -> bool:
    """Whether every number in a TOML value (nested in lists and tables too) is finite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(finite(v) for v in value)
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    return True


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (tuple, Sequence):
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin is dict:
        return "a table"
    return {float: "a number", int: "an integer", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _frozen(v):
    """Lists become tuples, so params stay hashable and immutable."""
    if isinstance(v, list):
        return tuple(_frozen(x) for x in v)
    if isinstance(v, dict):
        return {k: _frozen(x) for k, x in v.items()}
    return v


@dataclass(frozen=True, kw_only=True)
class NoParams(Params):
    pass


@dataclass(frozen=True, kw_only=True)
class MassiveDef(Params):
    """The massive-activation definition (Sun et al. 2024): |a| >= min_abs and >= min_ratio x median."""

    min_abs: float = 100.0
    min_ratio: float = 1000.0


@dataclass(frozen=True, kw_only=True)
class AtLayer(MassiveDef):
    """A per-layer claim: ``layer`` as named, else the emergence layer (the first massive one);
    ``dim`` as named, else the feature most often top-1 there."""

    layer: int | None = None
    dim: int | None = None


# ---------------------------------------------------------------- the registry

@dataclass(frozen=True)
class Check:
    fn: Callable[[Context | None, Params], Measurement]
    params: type[Params]
    needs: Callable[[Params], list[Request]]  # the requests the check makes before looking at data
    needs_model: bool = True
    documented_only: bool = False  # gives values but no decision of its own


CHECKS: dict[str, Check] = {}


def check(params: type[Params] = NoParams, *, needs: Sequence[Request] | Callable[[Params], list[Request]] = (),
          needs_model: bool = True, documented_only: bool = False):
    """Register a check under its function name; ``needs``: the requests it makes whatever the data
    say (or a function of its params giving them), so the engine can merge them before the first pass."""
    def register(fn):
        need = needs if callable(needs) else (lambda p, given=tuple(needs): list(given))
        CHECKS[fn.__name__] = Check(fn, params, need, needs_model, documented_only)
        return fn
    return register


# ---------------------------------------------------------------- shared by the families

PROFILE = want("block.*", "top_abs", "median")  # the per-layer profile: top-1/2/3 and median |a|
# the baseline's residual stream after every block, kept on disk: a check that intervenes at a layer it
# picks while running announces it, so its passes start at that layer instead of recomputing the ones before
RESUME = want("block.*", "resume")


def profile(r: PassResult, n_layers: int) -> dict[str, torch.Tensor]:
    return act.layer_profile([r.stat(f"block.{l}", "top_abs") for l in range(n_layers)],
                             [r.stat(f"block.{l}", "median") for l in range(n_layers)])


def massive_layers(prof: dict[str, torch.Tensor], p: MassiveDef) -> list[int]:
    mask = act.massive_mask(prof["top1"], prof["median"], min_abs=p.min_abs, min_ratio=p.min_ratio)
    return mask.nonzero().flatten().tolist()


def check_layer(ctx: Context, layer: int) -> int:
    if not 0 <= layer < ctx.lm.n_layers:
        raise ClaimInvalid(f"layer {layer} does not exist: {ctx.lm.name} has {ctx.lm.n_layers} layers")
    return int(layer)


def check_dim(ctx: Context, dim: int) -> int:
    if not 0 <= dim < ctx.lm.hidden_size:
        raise ClaimInvalid(f"dim {dim} does not exist: {ctx.lm.name} has hidden size {ctx.lm.hidden_size}")
    return int(dim)


def emergence_layer(ctx: Context, p: AtLayer) -> int:
    """The layer a per-layer claim looks at: ``p.layer``, else the emergence layer of all samples
    (metrics.activations.emergence_layer: the first layer whose mean top-1 is massive)."""
    if p.layer is not None:
        return check_layer(ctx, p.layer)
    return emergence_of(profile(ctx.run(PROFILE), ctx.lm.n_layers), p, ctx.lm.name)


def emergence_of(prof: dict[str, torch.Tensor], p: MassiveDef, name: str) -> int:
    """The emergence layer of a profile; ClaimInvalid when no layer is massive."""
    layer = act.emergence_layer(prof["top1"], prof["median"], min_abs=p.min_abs, min_ratio=p.min_ratio)
    if layer is None:
        raise ClaimInvalid(f"no layer of {name} has massive activations "
                           f"(top-1 >= {p.min_abs:g} and >= {p.min_ratio:g}x median): nothing to locate")
    return layer


TOP_FEATURE = want("block.*", "top_feature")
TOP_ENTRIES = want("block.*", "top_value", "top_token", "top_feature", "median")  # where the top-3 entries sit


def massive_dim(ctx: Context, layer: int, p: AtLayer) -> int:
    """``p.dim``, or the feature that is most often the per-sample top-1 of block ``layer``'s output."""
    if p.dim is not None:
        return check_dim(ctx, p.dim)
    feats = ctx.run(TOP_FEATURE).stat(f"block.{layer}", "top_feature")
    return Counter(feats[:, 0].tolist()).most_common(1)[0][0]


def massive_spans(layers: list[int]) -> list[Span]:
    """Shaded ranges of consecutive massive layers, for a per-layer figure."""
    out: list[list[int]] = []
    for l in layers:
        if out and out[-1][1] == l - 1:
            out[-1][1] = l
        else:
            out.append([l, l])
    return [Span(lo, hi, "massive") for lo, hi in out]


def ranges(layers: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out, start = [], None
    for i, l in enumerate(layers):
        if start is None:
            start = l
        if i + 1 == len(layers) or layers[i + 1] != l + 1:
            out.append(f"{start}-{l}" if l != start else f"{l}")
            start = None
    return ", ".join(out)
