"""Edit recipes: what `fit_edit` fits, as one small value with named presets.

An `EditSpec` says where an edit acts (layers, site, neurons), what it aims at (target, refusal boost,
languages, pivot), what it must leave alone (preserve, at which positions) and how the closed form is solved
(`SolverOptions`). The presets are the configurations this project names:

* `EditSpec.paper`: the paper's edit, columns S of W_gate (S: the pivot's safety neurons of a ranking) so that
  low-resource inputs reproduce the English pre-activations; the harmless prompts' last position is preserved.
* `EditSpec.linear`: this project's edit, rows of W_out (every neuron's) writing each language's mean gap to
  English plus the English refusal direction, every preserved position kept; `safety-neurons run` fits it.
* `EditSpec.nullspace`: the same with the hard null-space constraint (1% of the preserved energy admitted).
* `EditSpec.switch`: the harm switch (`safety_neurons.switch`): two neurons of one layer repurposed as a
  thresholded step on a harm probe.

``spec.replace(rank=8, langs=["zh"])`` changes any field (the solver's and the switch's settings included);
``to_dict`` / ``from_dict`` give the JSON a saved `WeightEdit` stores. A bad field is an `EditError`, raised
when the spec is made, before any work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal, Union

from ._checks import as_indices, as_int_list, as_str_list, check_choice, check_int, check_number, check_positive_int
from .neurons import SafetyNeurons
from .prompts import check_langs
from .solver import SolverError, SolverOptions

SITES = ("gate", "up", "w_out")
TARGETS = ("neurons", "residual", "language_gap", "refusal")
PRESERVE = ("harmless", "pivot_harmful")
KINDS = ("closed_form", "switch")
Neurons = Union[str, SafetyNeurons, Mapping[int, Sequence[int]], Sequence[int], None]  # noqa: UP007 (a runtime alias)


class EditError(ValueError):
    """An edit cannot be specified, fitted or applied as asked."""


def _ints(name: str, value) -> tuple[int, ...]:
    idx = tuple(int(i) for i in as_indices(name, value, EditError).tolist())
    if idx and idx[0] < 0:
        raise EditError(f"{name}: neuron indices must be ≥ 0, got {idx[0]}")
    return idx


def _langs(name: str, value) -> tuple[str, ...] | None:
    """Language codes (one code is taken as a list of one), or None."""
    if value is None:
        return None
    try:
        return tuple(check_langs(value, name))
    except ValueError as err:  # PromptSetError: not a list of strings, or an unknown language
        raise EditError(str(err)) from None


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


@dataclass(frozen=True)
class SwitchOptions:
    """The harm switch's settings (`fit_detector`, `fit_switch`), kept in `EditSpec.switch_options`.

    threshold θ, width and strength α are `fit_switch`'s; probe_ridge, trigger and answer_tokens are the
    detector's (`fit_detector`'s ridge, trigger and answer_tokens)."""

    threshold: float = 0.0
    width: float = 0.25
    strength: float = 1.0
    probe_ridge: float = 1.0
    trigger: int = 2
    answer_tokens: int = 32

    def __post_init__(self):
        for name in ("threshold", "strength"):
            object.__setattr__(self, name, check_number(name, getattr(self, name), EditError))
        object.__setattr__(self, "width", check_number("width", self.width, EditError, minimum=0, strict=True))
        object.__setattr__(self, "probe_ridge", check_number("probe_ridge", self.probe_ridge, EditError, minimum=0))
        object.__setattr__(self, "trigger", check_positive_int("trigger", self.trigger, EditError))
        object.__setattr__(
            self, "answer_tokens", check_positive_int("answer_tokens", self.answer_tokens, EditError, minimum=0)
        )


_SOLVER = tuple(f.name for f in fields(SolverOptions))
_SWITCH = tuple(f.name for f in fields(SwitchOptions))


@dataclass(frozen=True)
class EditSpec:
    """The recipe of an edit. Its defaults are the paper's configuration (`EditSpec.paper`); the presets
    are the named configurations, and `replace` changes any field.

    Fields of the closed-form edit (``kind="closed_form"``; see `fit_edit` for what each does):

    * ``layers``: the layer(s) to edit (None: not chosen yet; `fit_edit` needs them);
    * ``site``: "gate" (the paper), "up" or "w_out"; ``target``: "neurons", "residual", "language_gap" or
      "refusal" (the last three write to the residual stream: site "w_out"); ``refusal_boost``: the multiple
      of the English refusal direction added to a "residual" / "language_gap" target;
    * ``neurons``: "all", a `SafetyNeurons` ranking (the union of its ``neuron_langs`` sets, default the
      pivot's), a {layer: indices} map or one index list for every layer;
    * ``langs``: the languages to fix (None: every non-pivot language of the prompts); ``pivot``: the
      language they should behave like;
    * ``preserve``: "harmless" and/or "pivot_harmful" rows kept; ``preserve_positions``: "last" or "all"
      (every token but a harmful prompt's answer opening, each weighing ``position_weight``);
    * ``position``: the fitted rows' position, "last" or "mean"; ``sequential``: fit later layers on inputs
      recomputed with the earlier edits applied;
    * ``solver``: the closed form's `SolverOptions` (rank, gamma, ridge, method, null space).

    The harm switch (``kind="switch"``, `EditSpec.switch`) uses ``layers`` (one layer), ``pivot``,
    ``neurons`` (None or the two neurons to repurpose) and ``switch_options``; the other fields keep their
    defaults.
    """

    kind: Literal["closed_form", "switch"] = "closed_form"
    layers: tuple[int, ...] | None = None
    site: str = "gate"
    target: str = "neurons"
    refusal_boost: float = 0.0
    neurons: Neurons = "all"
    neuron_langs: tuple[str, ...] | None = None
    langs: tuple[str, ...] | None = None
    pivot: str = "en"
    preserve: tuple[str, ...] = ("harmless",)
    preserve_positions: Literal["last", "all"] = "last"
    position_weight: float = 0.2
    position: Literal["last", "mean"] = "last"
    sequential: bool = True
    solver: SolverOptions = field(default_factory=SolverOptions)
    switch_options: SwitchOptions | None = None

    # --- presets ---------------------------------------------------------------------------------
    @classmethod
    def paper(cls, *, layers: int | Iterable[int] | None = None, neurons: Neurons, **changes) -> EditSpec:
        """The paper's configuration: columns S of W_gate, S = the pivot's safety neurons of `neurons` (a
        `SafetyNeurons` ranking; or an explicit set), fitted so that low-resource-language harmful inputs
        reproduce the English pre-activations at S, the harmless prompts' last position preserved; rank 32,
        γ = 1, relative ridge 1e-2. On the packaged Qwen model it barely moves the model
        (benchmarks/README.md)."""
        return cls(layers=layers, neurons=neurons).replace(**changes)

    @classmethod
    def linear(cls, *, layers: int | Iterable[int] | None = None, **changes) -> EditSpec:
        """This project's linear edit (what `safety-neurons run` fits): rows of W_out, every neuron's, solved
        so that each low-resource language's harmful prompts get its mean residual gap to English plus the
        English refusal direction (refusal_boost 1), while the harmless and the English harmful prompts stay,
        at every position but a harmful prompt's answer opening (position_weight 0.2); rank 32, γ = 1,
        relative ridge 0.1; several layers are solved on the unedited model's rows (sequential=False)."""
        base = cls(
            layers=layers,
            site="w_out",
            target="language_gap",
            refusal_boost=1.0,
            neurons="all",
            preserve=PRESERVE,
            preserve_positions="all",
            position_weight=0.2,
            sequential=False,
            solver=SolverOptions(ridge=0.1),
        )
        return base.replace(**changes)

    @classmethod
    def nullspace(
        cls, *, layers: int | Iterable[int] | None = None, null_energy: float | None = 0.01, **changes
    ) -> EditSpec:
        """`linear` with the hard null-space constraint: ΔW moves no preserved row, except along the
        lowest-energy directions holding `null_energy` of their energy (1%; pass null_energy=None with
        null_threshold=t for a relative eigenvalue threshold instead)."""
        return cls.linear(layers=layers).replace(method="nullspace", null_energy=null_energy, **changes)

    @classmethod
    def switch(
        cls,
        *,
        layer: int,
        threshold: float = 0.0,
        width: float = 0.25,
        strength: float = 1.0,
        neurons: Sequence[int] | None = None,
        probe_ridge: float = 1.0,
        trigger: int = 2,
        answer_tokens: int = 32,
        pivot: str = "en",
    ) -> EditSpec:
        """The harm switch at `layer`: `fit_edit` fits the detector (`fit_detector`: probe_ridge, trigger,
        answer_tokens, pivot) on its prompts, then the switch (`fit_switch`: threshold θ, width, strength α,
        the two neurons, default the least used). The defaults are neutral starting points; on the packaged
        Qwen model benchmarks/harm_switch.py chose layer 20, θ = 0.33, α = 8 on the validation split."""
        options = SwitchOptions(threshold, width, strength, probe_ridge, trigger, answer_tokens)
        return cls(kind="switch", layers=layer, neurons=neurons, pivot=pivot, switch_options=options)

    # --- checks ----------------------------------------------------------------------------------
    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        check_choice("kind", self.kind, KINDS, EditError)
        if self.layers is not None:
            put("layers", tuple(sorted(set(as_int_list("layers", self.layers, EditError)))))
            if any(layer < 0 for layer in self.layers):
                raise EditError(f"layers must be ≥ 0, got {list(self.layers)}")
        if not isinstance(self.pivot, str):
            raise EditError(f"pivot must be one language code, got {type(self.pivot).__name__} {self.pivot!r:.60}")
        _langs("pivot", [self.pivot])
        if not isinstance(self.solver, SolverOptions):
            raise EditError(f"solver must be SolverOptions, got {type(self.solver).__name__} {self.solver!r:.60}")
        if self.kind == "switch":
            self._check_switch()
            return
        if self.switch_options is not None:
            raise EditError("switch_options belong to the harm switch (kind='switch', EditSpec.switch)")
        put("neurons", self._check_neurons(self.neurons))
        put("neuron_langs", _langs("neuron_langs", self.neuron_langs))
        put("langs", _langs("langs", self.langs))
        if self.langs is not None and self.pivot in self.langs:
            raise EditError(f"the pivot language {self.pivot!r} cannot also be a language to fix")
        check_choice("edit site", self.site, SITES, EditError)
        check_choice("target", self.target, TARGETS, EditError)
        put("refusal_boost", check_number("refusal_boost", self.refusal_boost, EditError))
        preserve = tuple(as_str_list("preserve", self.preserve, EditError, allow_empty=True))
        for option in preserve:
            check_choice("preserve option", option, PRESERVE, EditError)
        put("preserve", preserve)
        check_choice("preserve_positions", self.preserve_positions, ("last", "all"), EditError)
        put("position_weight", check_number("position_weight", self.position_weight, EditError, minimum=0, strict=True))
        check_choice("position", self.position, ("last", "mean"), EditError)
        if not isinstance(self.sequential, bool):
            raise EditError(f"sequential must be True or False, got {self.sequential!r:.60}")
        if self.target != "neurons" and self.site != "w_out":
            raise EditError(f"target={self.target!r} writes to the residual stream: it needs site='w_out'")
        if self.refusal_boost and self.target not in ("residual", "language_gap"):
            raise EditError(
                f"refusal_boost adds to a residual-stream gap: it needs target='residual' or "
                f"'language_gap', not {self.target!r}"
            )

    @staticmethod
    def _check_neurons(neurons):
        if isinstance(neurons, str):
            if neurons != "all":
                raise EditError(
                    f"neurons must be a SafetyNeurons, a {{layer: indices}} map, an index list or 'all', "
                    f"got {neurons!r:.60}"
                )
            return neurons
        if isinstance(neurons, SafetyNeurons):
            return neurons
        if isinstance(neurons, Mapping):
            if not neurons:
                raise EditError("neurons: the {layer: indices} map is empty")
            out = {}
            for layer, idx in neurons.items():
                layer = check_int("a layer of the neurons map", layer, EditError)
                out[layer] = _ints(f"neurons[{layer}]", idx)
                if not out[layer]:
                    raise EditError(f"empty neuron set at layer {layer}: nothing to edit")
            return dict(sorted(out.items()))
        if neurons is None:
            raise EditError("neurons must be a SafetyNeurons, a {layer: indices} map, an index list or 'all', got None")
        idx = _ints("neurons", neurons)
        if not idx:
            raise EditError("empty neuron set: nothing to edit (give indices, a ranking or 'all')")
        return idx

    def _check_switch(self):
        if self.layers is None or len(self.layers) != 1:
            raise EditError(f"the harm switch acts at one layer, got layers={self.layers}")
        if not isinstance(self.switch_options, SwitchOptions):
            raise EditError(f"switch_options must be SwitchOptions, got {type(self.switch_options).__name__}")
        if self.neurons is not None:
            if isinstance(self.neurons, str) or not isinstance(self.neurons, Iterable):
                raise EditError(f"the switch's neurons must be two neuron indices or None, got {self.neurons!r:.60}")
            idx = [check_int("each of the switch's neurons", j, EditError) for j in self.neurons]
            if len(idx) != 2 or len(set(idx)) != 2 or min(idx) < 0:
                raise EditError(f"the switch's neurons must be two different indices ≥ 0, got {idx}")
            object.__setattr__(self, "neurons", tuple(idx))  # order kept: the first is the step's rising neuron
        used = ("kind", "layers", "neurons", "pivot", "switch_options")
        unused = [f.name for f in fields(self) if f.name not in used and getattr(self, f.name) != _default(f)]
        if unused:
            raise EditError(
                f"{', '.join(unused)}: not settings of the harm switch (it uses layers, pivot, neurons "
                f"and the switch options {', '.join(_SWITCH)})"
            )

    def __repr__(self) -> str:
        """Only what differs from the defaults (the paper's configuration)."""

        def show(value):
            return f"<{type(value).__name__}>" if isinstance(value, SafetyNeurons) else repr(value)

        parts = [
            f"{f.name}={show(getattr(self, f.name))}"
            for f in fields(self)
            if f.name not in ("solver", "switch_options") and getattr(self, f.name) != _default(f)
        ]
        for name, options in (("solver", self.solver), ("switch_options", self.switch_options)):
            if options is not None:
                changed = [
                    f"{f.name}={getattr(options, f.name)!r}"
                    for f in fields(options)
                    if getattr(options, f.name) != _default(f)
                ]
                parts += [f"{name}({', '.join(changed)})"] if changed else []
        return f"EditSpec({', '.join(parts)})"

    # --- changes and JSON ------------------------------------------------------------------------
    def replace(self, **changes) -> EditSpec:
        """A copy with fields changed, checked again. The solver's settings (rank, gamma, ridge, ridge_mode,
        method, null_threshold, null_energy) and, for the switch, its options (threshold, width, strength,
        probe_ridge, trigger, answer_tokens) can be given by name: ``spec.replace(rank=8, layers=[19])``."""
        own = {f.name for f in fields(self)}
        solver = {k: changes.pop(k) for k in list(changes) if k in _SOLVER and k not in own}
        switch = {k: changes.pop(k) for k in list(changes) if k in _SWITCH and k not in own}
        unknown = sorted(set(changes) - own)
        if unknown:
            raise EditError(
                f"unknown edit setting(s) {unknown}; the settings are {sorted(own | set(_SOLVER) | set(_SWITCH))}"
            )
        try:
            if solver:
                changes["solver"] = changes.get("solver", self.solver).replace(**solver)
            if switch:
                if self.kind != "switch":
                    raise EditError(
                        f"{sorted(switch)}: settings of the harm switch (EditSpec.switch), not of a closed-form edit"
                    )
                changes["switch_options"] = dataclasses.replace(
                    changes.get("switch_options", self.switch_options), **switch
                )
        except SolverError as err:
            raise EditError(f"solver: {err}") from None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """A JSON-ready dict that `from_dict` reads back. A `SafetyNeurons` ranking is written as the neurons it
        gives at `layers` ({layer: indices}), so the saved recipe names exactly the neurons edited."""
        if self.kind == "switch":
            return {
                "kind": "switch",
                "layers": list(self.layers),
                "pivot": self.pivot,
                "neurons": None if self.neurons is None else list(self.neurons),
                "switch_options": dataclasses.asdict(self.switch_options),
            }
        neurons = self.neurons
        if isinstance(neurons, SafetyNeurons):
            if self.layers is None:
                raise EditError("a spec with a SafetyNeurons ranking needs layers to be written out")
            langs = list(self.neuron_langs or [self.pivot])
            neurons = {layer: neurons.union(layer, langs).tolist() for layer in self.layers}
        if isinstance(neurons, Mapping):
            neurons = {str(layer): list(idx) for layer, idx in neurons.items()}
        elif not isinstance(neurons, str):
            neurons = list(neurons)
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("switch_options", "solver")}
        out.update(neurons=neurons, solver=self.solver.to_dict())
        for name in ("layers", "neuron_langs", "langs", "preserve"):
            out[name] = None if out[name] is None else list(out[name])
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> EditSpec:
        """The spec `to_dict` wrote; a field that is unknown or bad is an `EditError` naming it."""
        if not isinstance(d, Mapping):
            raise EditError(f"an edit spec must be a dict, got {type(d).__name__} {d!r:.60}")
        d = dict(d)
        if "kind" not in d:
            raise EditError(f"an edit spec needs its kind ({' or '.join(KINDS)}); got the fields {sorted(d)}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise EditError(f"unknown edit spec field(s) {unknown}")
        try:
            if "solver" in d:
                d["solver"] = SolverOptions.from_dict(d["solver"])
            if d.get("switch_options") is not None:
                if not isinstance(d["switch_options"], Mapping):
                    raise EditError(f"switch_options must be a dict, got {d['switch_options']!r:.60}")
                d["switch_options"] = SwitchOptions(**d["switch_options"])
        except SolverError as err:
            raise EditError(f"solver: {err}") from None
        except TypeError as err:  # an unknown switch option
            raise EditError(f"switch_options: {err}") from None
        neurons = d.get("neurons")
        if isinstance(neurons, Mapping):
            try:
                d["neurons"] = {int(layer): idx for layer, idx in neurons.items()}
            except (TypeError, ValueError):
                raise EditError(f"neurons: the map's keys must be layer numbers, got {list(neurons)[:3]}") from None
        return cls(**d)
