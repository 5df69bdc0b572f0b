"""The closed-form sparse weight edit: fit it, apply it, revert it exactly, save it, export it.

What is fitted is an `EditSpec` (`safety_neurons.recipes`: the named presets `EditSpec.paper`, `.linear`,
`.nullspace`, `.switch`); ``fit_edit(model, prompts, spec)`` fits it. Sites (same solver, `solve_edit`, behind
each):

* ``gate`` (the paper, `EditSpec.paper`): columns S of W_gate get ΔW so that low-resource-language (LRL)
  harmful inputs x produce the gate pre-activations of their English translations:
  X_low (W_S + ΔW) ≈ X_eng W_S, with X = MLP inputs (`ln2.hook_out`).
* ``up``: the same on W_in (up_proj) of the gated MLP.
* ``w_out`` with ``target="neurons"``: a map M on the safety neurons' activations, a_S → a_S (I + M),
  solved so LRL harmful activations land on the English ones while preserved activations stay, and
  folded into rows S of W_out: W_out[S] ← W_out[S] + M W_out[S].
* ``w_out`` with a residual-stream target: rows S of W_out write, into the residual stream after the
  layer, what separates an LRL harmful prompt from its English translation there: the per-prompt gap
  (``target="residual"``) or its language's mean gap (``target="language_gap"``), optionally plus the
  English refusal direction (``refusal_boost``). `EditSpec.linear`, this project's edit, is the mean gap
  plus the refusal direction with every neuron's row and every preserved position.

Several layers are fitted in order, each on inputs recomputed with the earlier layers' edits applied
(``sequential=True``; `EditSpec.linear` solves them all on the unedited model's rows).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ._checks import (
    Artifact,
    as_indices,
    as_records,
    check_choice,
    check_model,
    check_number,
    check_out_dir,
    check_positive_int,
)
from .activations import ActivationRows, Collection, collect_activations, model_tag
from .chat import check_lengths, encode_chat, prompt_names
from .neurons import SafetyNeurons
from .prompts import Prompt
from .recipes import PRESERVE, TARGETS, EditError, EditSpec

__all__ = ["EditError", "EditSpec", "LayerEdit", "WeightEdit", "fit_edit", "KEY_SITE", "PRESERVE", "TARGETS"]

EditSite = Literal["gate", "up", "w_out"]
_WEIGHT = {"gate": "W_gate", "up": "W_in", "w_out": "W_out"}
KEY_SITE = {"gate": "mlp_in", "up": "mlp_in", "w_out": "act"}  # the activation site each edit site reads as its keys
_RESIDUAL_TARGETS = ("residual", "language_gap", "refusal")


def _weight(model, layer: int, site: str) -> Tensor:
    """The bridge's view of the edited weight: W_gate / W_in (d_model × d_mlp) or W_out (d_mlp × d_model).
    These are views of the HF parameters, so in-place changes reach the real model."""
    if site not in _WEIGHT:
        raise EditError(f"unknown edit site {site!r}; choose one of {', '.join(_WEIGHT)}")
    mlp = model.blocks[layer].mlp
    if not hasattr(mlp, "W_gate"):
        raise EditError(f"layer {layer} has no gated MLP (W_gate); only gated-MLP models are supported")
    return getattr(mlp, _WEIGHT[site])


def _slice(w: Tensor, site: str, neurons: Tensor) -> Tensor:
    return w[neurons] if site == "w_out" else w[:, neurons]


@dataclass
class LayerEdit:
    """One layer's change: `delta` is added to W[:, S] (gate/up, d_model × m) or W_out[S] (m × d_model)."""

    layer: int
    site: str
    neurons: Int[Tensor, " m"]
    delta: Float[Tensor, "a b"]
    neuron_map: Float[Tensor, "m m"] | None = (
        None  # w_out, target "neurons": M with a_S ↦ a_S (I + M), delta = M W_out[S]
    )
    solution: dict = field(default_factory=dict)


@dataclass
class WeightEdit(Artifact):
    """A fitted edit: what changes where, how it was fitted (`spec`, the recipe, and `settings`, the same with
    the languages resolved), and on which base model.

    Use `apply` / `revert` (bit-exact) or `with edit.applied(model): ...`.
    """

    edits: list[LayerEdit]
    settings: dict = field(default_factory=dict)
    fitted_on: dict = field(default_factory=dict)
    fingerprint: str = ""
    spec: EditSpec | None = field(default=None, compare=False)  # None: built by hand, or saved before specs

    # --- identity --------------------------------------------------------------------------------
    @property
    def uid(self) -> str:
        """A content hash of the change itself (same for a saved and re-loaded edit)."""
        h = hashlib.sha256()
        for e in self.edits:
            h.update(f"{e.layer}:{e.site}:".encode())
            h.update(e.neurons.to(torch.int64).numpy().tobytes())
            h.update(e.delta.to(torch.float64).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @property
    def layers(self) -> list[int]:
        return [e.layer for e in self.edits]

    def __repr__(self) -> str:
        parts = ", ".join(f"L{e.layer}:{e.site}[{len(e.neurons)}]" for e in self.edits)
        s = self.settings
        return (
            f"WeightEdit({parts}; rank={s.get('rank')}, gamma={s.get('gamma')}, ridge={s.get('ridge')}, "
            f"method={s.get('method')}, uid={self.uid})"
        )

    def summary(self) -> str:
        lines = [repr(self)]
        for e in self.edits:
            sol = e.solution
            closed = 1 - sol.get("loss_after", 0) / max(sol.get("loss_before", 1), 1e-300)
            lines.append(
                f"  layer {e.layer:>2} {e.site:<5} |S|={len(e.neurons):<5} rank={sol.get('rank')} "
                f"gap closed on fit rows={closed:.1%} ‖ΔW‖={e.delta.norm():.3g}"
                + (f" null_dim={sol['null_dim']}" if sol.get("null_dim") is not None else "")
            )
        return "\n".join(lines)

    def scaled(self, strength: float) -> WeightEdit:
        """The same change at `strength` times its size (every delta, and a ``neurons`` target's map, times
        `strength`: 0 is the unedited model, 1 this edit), a new edit with its own uid. The strength knob of a
        frontier sweep for the additive edits (linear, null-space, paper); a harm switch replaces its neurons'
        weights instead, so scaling it is refused: refit it with another ``strength``."""
        strength = check_number("strength", strength, EditError)
        if self.settings.get("kind") == "harm_switch":
            raise EditError(
                "a harm switch is not additive (it replaces two neurons' weights): scaling its delta does not scale "
                "its effect; fit it again with fit_switch(..., strength=...)"
            )
        edits = [
            LayerEdit(
                e.layer,
                e.site,
                e.neurons.clone(),
                e.delta * strength,
                None if e.neuron_map is None else e.neuron_map * strength,
                dict(e.solution),
            )
            for e in self.edits
        ]
        settings = {**self.settings, "scale": strength * self.settings.get("scale", 1.0)}
        return WeightEdit(edits, settings, dict(self.fitted_on), self.fingerprint, spec=self.spec)

    # --- base-model checks -----------------------------------------------------------------------
    def model_fingerprint(self, model) -> str:
        """Hash of the model's shape and of the weight slices this edit touches, as they are now."""
        h = hashlib.sha256()
        cfg = model.cfg
        h.update(f"{cfg.n_layers}:{cfg.d_model}:{cfg.d_mlp}".encode())
        for e in self.edits:
            if not 0 <= e.layer < cfg.n_layers:
                raise EditError(f"edit touches layer {e.layer}; the model has {cfg.n_layers} layers")
            w = _slice(_weight(model, e.layer, e.site), e.site, e.neurons)
            h.update(w.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def _registry(self, model) -> dict:
        check_model(model, EditError)
        if not hasattr(model, "_safety_neurons_applied"):
            model._safety_neurons_applied = {}
        return model._safety_neurons_applied

    def is_applied(self, model) -> bool:
        return self.uid in self._registry(model)

    # --- apply / revert --------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self, model) -> WeightEdit:
        """Add the deltas to the model's weights in place (refuses twice, or on another base model)."""
        registry = self._registry(model)
        if self.uid in registry:
            raise EditError(f"edit {self.uid} is already applied to this model; revert it first")
        now = self.model_fingerprint(model)
        if self.fingerprint and now != self.fingerprint:
            raise EditError(
                "this model's weights at the edited neurons differ from the model the edit was fitted on "
                "(fingerprint mismatch: another model, or another edit applied to the same weights)"
            )
        originals = []
        for e in self.edits:
            w = _weight(model, e.layer, e.site)
            idx = e.neurons.to(w.device)
            before = _slice(w, e.site, idx).clone()
            originals.append(before)
            new = before + e.delta.to(device=w.device, dtype=w.dtype)
            if e.site == "w_out":
                w[idx] = new
            else:
                w[:, idx] = new
        registry[self.uid] = originals
        return self

    @torch.no_grad()
    def revert(self, model) -> WeightEdit:
        """Restore the exact original values of every weight the edit changed."""
        registry = self._registry(model)
        if self.uid not in registry:
            raise EditError(f"edit {self.uid} is not applied to this model; nothing to revert")
        for e, before in zip(reversed(self.edits), reversed(registry.pop(self.uid))):
            w = _weight(model, e.layer, e.site)
            idx = e.neurons.to(w.device)
            if e.site == "w_out":
                w[idx] = before
            else:
                w[:, idx] = before
        return self

    @contextmanager
    def applied(self, model):
        """`with edit.applied(model): ...` — the edit is reverted on exit, even after an error."""
        self.apply(model)
        try:
            yield model
        finally:
            self.revert(model)

    def export(self, model, out_dir: str | Path) -> Path:
        """Write the edited model as a plain HF folder (applies the edit for the export if needed)."""
        from .models import export_hf

        check_out_dir("out_dir", out_dir, EditError)
        if self.is_applied(model):
            return export_hf(model, out_dir)
        with self.applied(model):
            return export_hf(model, out_dir)

    # --- files (`_checks.Artifact`: edit.json and edit.safetensors) --------------------------------------
    _FIELDS = ("edits", "settings", "fitted_on", "fingerprint", "uid")
    _ERROR = EditError

    def _saved(self) -> tuple[dict, dict]:
        tensors = {}
        for i, e in enumerate(self.edits):
            tensors[f"{i}.neurons"] = e.neurons.to(torch.int64)
            tensors[f"{i}.delta"] = e.delta
            if e.neuron_map is not None:
                tensors[f"{i}.neuron_map"] = e.neuron_map
        fields = {
            "edits": [{"layer": e.layer, "site": e.site, "solution": e.solution} for e in self.edits],
            "settings": self.settings,
            "fitted_on": self.fitted_on,
            "fingerprint": self.fingerprint,
            "uid": self.uid,
            "spec": None if self.spec is None else self.spec.to_dict(),
        }
        return tensors, fields

    @classmethod
    def _shapes(cls, fields: dict) -> dict:  # each layer's neurons (1-D) and delta (2-D)
        return {
            name: shape
            for i in range(len(fields["edits"]))
            for name, shape in ((f"{i}.neurons", [None]), (f"{i}.delta", [None, None]))
        }

    @classmethod
    def _from_saved(cls, fields: dict, tensors: dict) -> WeightEdit:
        t = tensors  # "{i}.map": the neuron map's name in edits saved before format 2
        edits = [
            LayerEdit(
                int(e["layer"]),
                check_choice("edit site", e["site"], _WEIGHT, EditError),
                t[f"{i}.neurons"],
                t[f"{i}.delta"],
                t.get(f"{i}.neuron_map", t.get(f"{i}.map")),
                e.get("solution", {}),
            )
            for i, e in enumerate(fields["edits"])
        ]
        spec = None
        if fields.get("spec") is not None:  # edits saved before recipes have none
            try:
                spec = EditSpec.from_dict(fields["spec"])
            except EditError as err:
                raise EditError(f"the stored edit spec does not parse: {err}") from None
            layers, sites = sorted({e.layer for e in edits}), {e.site for e in edits}
            expected = {"gate", "up", "w_out"} if spec.kind == "switch" else {spec.site}
            if list(spec.layers or ()) != layers or sites != expected:
                raise EditError(
                    f"the stored spec (layers {list(spec.layers or ())}, sites {sorted(expected)}) does not "
                    f"match the stored edits (layers {layers}, sites {sorted(sites)})"
                )
        edit = cls(edits, fields["settings"], fields["fitted_on"], fields["fingerprint"], spec=spec)
        if edit.uid != fields["uid"]:
            raise EditError(f"the tensors of edit.safetensors do not match its uid {fields['uid']!r}")
        return edit


# --- fitting -----------------------------------------------------------------------------------------
def _factor(gram: Tensor, idx: Tensor | None = None) -> Tensor:
    """Rows F with FᵀF = gram (restricted to idx): a compact stand-in for many preserved rows."""
    if idx is not None:
        gram = gram[idx][:, idx]
    jitter = 1e-10 * gram.diagonal().mean().clamp(min=1e-30)
    return torch.linalg.cholesky(gram + jitter * torch.eye(len(gram), dtype=gram.dtype)).T


def _preserved_gram(model, prompts, key, batch_size, progress) -> Tensor:
    """Σ xᵀx at `key` over the positions an edit must leave alone (see `collect_activations`)."""
    c = collect_activations(
        model,
        prompts,
        stats_site=None,
        gram_at=[key],
        gram_positions="preserved",
        batch_size=batch_size,
        progress=progress,
    )
    return c.gram[key]


def _neurons_for(neurons, layer: int, d_mlp: int, neuron_langs: Sequence[str] | None) -> Tensor:
    if isinstance(neurons, str):
        if neurons != "all":
            raise EditError(f"neurons must be a SafetyNeurons, a {{layer: indices}} map or 'all', got {neurons!r}")
        idx = torch.arange(d_mlp)
    elif isinstance(neurons, SafetyNeurons):
        idx = neurons.union(layer, neuron_langs)
    elif isinstance(neurons, Mapping):
        if layer not in neurons:
            raise EditError(f"no neuron set given for layer {layer}")
        idx = as_indices(f"neurons[{layer}]", neurons[layer], EditError, size=d_mlp)
    else:
        idx = as_indices("neurons", neurons, EditError, size=d_mlp)
    if idx.numel() == 0:
        raise EditError(
            f"empty neuron set at layer {layer}: nothing to edit (lower the thresholds, use top_k, or neurons='all')"
        )
    return idx.unique()


def _split_prompts(prompts: Sequence[Prompt], langs: list[str], pivot: str, preserve: Sequence[str]):
    """(low-resource harmful rows, their pivot translations in the same order, preserved rows)."""
    pivot_rows = {p.id: p for p in prompts if p.lang == pivot and p.label == "harmful"}
    low = [p for p in prompts if p.lang in langs and p.label == "harmful"]
    if not low:
        raise EditError(f"no harmful prompts in {langs} to fit on")
    missing = sorted({p.id for p in low if p.id not in pivot_rows})
    if missing:
        raise EditError(
            f"mismatched parallel sets: {len(missing)} harmful ids have no {pivot} translation, e.g. {missing[:3]}"
        )
    bad = [x for x in preserve if x not in PRESERVE]
    if bad:
        raise EditError(f"unknown preserve option {bad}; choose from {PRESERVE}")
    keep = []
    if "harmless" in preserve:
        keep += [p for p in prompts if p.label == "harmless"]
    if "pivot_harmful" in preserve:
        keep += list(pivot_rows.values())
    if "harmless" in preserve and not any(p.label == "harmless" for p in keep):
        raise EditError("preserve='harmless' but no harmless prompts were given (the utility anchor)")
    return low, [pivot_rows[p.id] for p in low], keep


def fit_edit(
    model,
    prompts: Sequence[Prompt],
    spec: EditSpec,
    *,
    rows: ActivationRows | Collection | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> WeightEdit:
    """Fit the edit that `spec` describes (`EditSpec.paper`, `.linear`, `.nullspace`, `.switch` or a variation
    of one: ``EditSpec.linear(layers=[21]).replace(rank=8)``). Returns it un-applied, with `spec` attached.

    Args:
        prompts: harmful prompts in the spec's `langs` and their `pivot` (English) translations (same ids),
            plus the harmless prompts that anchor utility; typically `load_prompts().filter(split="anchor")`.
            For the harm switch: harmful and harmless prompts in every language it should serve.
        spec: the recipe; `EditSpec` documents every field. Several layers are fitted in increasing order,
            each on inputs computed with the earlier edits applied (unless ``sequential=False``). The rank is
            capped at the largest a layer allows, min(key width, output width), e.g. 3 for 3 neurons at site
            "w_out" or "gate"; each layer's ``solution["rank"]`` records the rank used. A harm-switch spec fits
            the detector on `prompts` (`fit_detector`) and then the switch (`fit_switch`).
        rows: precomputed `ActivationRows` (from `collect_activations`, this model, the spec's position) used
            where they hold the needed (site, layer) rows, or the whole `Collection`. Its Gram matrices
            (collected with gram_positions="preserved") serve preserve_positions="all" only when the
            collection holds exactly the prompts this call uses: a Gram matrix is a sum over every prompt
            collected and cannot be restricted to fewer, so otherwise it is computed here over the call's
            prompts (one pass), and the edit is the same with and without `rows`.

    Where the targets come from: "neurons" (the paper), the pivot's pre-activations (gate/up) or activations
    (w_out) at S; with site="w_out" wider targets write into the residual stream through rows S of W_out:
    "residual", the whole gap between the pivot's and the low-resource language's residual stream after the
    layer; "language_gap", the mean of that gap over the language's harmful prompts (one vector per
    language: it drops the prompt-specific part, which does not generalise); "refusal", the gap's component
    along the layer's refusal direction r (pivot harmful − harmless mean residual); refusal_boost adds that
    multiple of r to a "residual" or "language_gap" target. preserve_positions="all" keeps every token of
    every harmless prompt and every message token of every harmful prompt unchanged, leaving the edit free
    only where a harmful prompt's answer opens (the chat template's tokens after the message): a weight edit
    acts at every position and on every generated token.
    """
    check_model(model, EditError)
    if not isinstance(spec, EditSpec):
        raise EditError(
            f"spec must be an EditSpec (e.g. sn.EditSpec.linear(layers=[21])), got {type(spec).__name__} {spec!r:.60}"
        )
    prompts = list(as_records("prompts", prompts, Prompt, EditError))
    batch_size = check_positive_int("batch_size", batch_size, EditError)
    if spec.layers is None:
        raise EditError(
            "the spec names no layers: give them, e.g. EditSpec.linear(layers=[21]) or spec.replace(layers=[21])"
        )
    for layer in spec.layers:
        if not 0 <= layer < model.cfg.n_layers:
            raise EditError(f"layer {layer} out of range: the model has {model.cfg.n_layers} layers")
    if spec.kind == "switch":
        return _fit_switch(model, prompts, spec, rows, batch_size, progress)
    layers, site, target, solver, pivot = list(spec.layers), spec.site, spec.target, spec.solver, spec.pivot
    position, preserve_positions, refusal_boost = spec.position, spec.preserve_positions, spec.refusal_boost
    if rows is not None:  # precomputed rows must come from this model, at this position
        given = rows.rows if isinstance(rows, Collection) else rows
        if not isinstance(given, ActivationRows):
            raise EditError(
                f"rows must be ActivationRows or a Collection from collect_activations, got {type(rows).__name__}"
            )
        if given.position != position:
            raise EditError(
                f"the given rows were collected at position={given.position!r}, the edit is fitted at "
                f"position={position!r}; collect them again or use position={given.position!r}"
            )
        if given.model and given.model != model_tag(model):
            raise EditError(
                "the given rows were collected on another model (model tag mismatch); collect them on this one"
            )
    check_lengths(encode_chat(model.tokenizer, [p.text for p in prompts]), model.cfg.n_ctx, prompt_names(prompts))
    langs = (
        [x for x in dict.fromkeys(p.lang for p in prompts) if x != pivot] if spec.langs is None else list(spec.langs)
    )
    neuron_langs = [pivot] if spec.neuron_langs is None else list(spec.neuron_langs)
    low, piv, keep = _split_prompts(prompts, langs, pivot, spec.preserve)
    ref_safe = [p for p in prompts if p.lang == pivot and p.label == "harmless"]
    if (target == "refusal" or refusal_boost) and not ref_safe:
        raise EditError(f"the refusal direction needs {pivot} harmless prompts (target='refusal' or refusal_boost)")
    # one collection set: every row needed, each prompt once
    needed = list({(p.lang, p.id): p for p in low + piv + keep + ref_safe}.values())
    grams = {}
    if isinstance(rows, Collection):
        # its Gram matrices sum over the prompts it holds: they serve only when those are this call's prompts
        if rows.gram_positions == "preserved" and set(rows.rows.prompts) == set(needed):
            grams = rows.gram
        rows = rows.rows

    def row_keys(layer):
        return [(KEY_SITE[site], layer)] + ([("resid", layer)] if target in _RESIDUAL_TARGETS else [])

    done: list[LayerEdit] = []
    applied: list[WeightEdit] = []
    try:
        for n, layer in enumerate(layers):
            idx = _neurons_for(spec.neurons, layer, model.cfg.d_mlp, neuron_langs)
            fresh = spec.sequential and n > 0
            have = rows is not None and all(k in rows.rows for k in row_keys(layer))
            key = (KEY_SITE[site], layer)
            if fresh or not have:  # one pass for the rows and, when wanted, the preserved positions' Gram
                c = collect_activations(
                    model,
                    needed,
                    stats_site=None,
                    rows_at=row_keys(layer),
                    position=position,
                    gram_at=[key] if preserve_positions == "all" else (),
                    gram_positions="preserved",
                    batch_size=batch_size,
                    progress=progress,
                )
                current, layer_gram = c.rows, c.gram.get(key)
            else:
                current, layer_gram = rows, grams.get(key)
            where = {(p.lang, p.id): i for i, p in enumerate(current.prompts)}

            def take(group, key, current=current, where=where):
                missing = [p.id for p in group if (p.lang, p.id) not in where]
                if missing:
                    raise EditError(f"the given rows lack prompts {missing[:3]}…; collect them or pass rows=None")
                return current.matrix(*key)[[where[(p.lang, p.id)] for p in group]]

            X_low, X_piv = take(low, key), take(piv, key)
            X_keep = take(keep, key) if keep else None
            w = _weight(model, layer, site).detach().to(torch.float64).cpu()
            # the rank is capped at what this layer's problem allows: min(key width, output width)
            widths = {"w_out": (len(idx), len(idx) if target == "neurons" else model.cfg.d_model)}
            limit = min(widths.get(site, (model.cfg.d_model, len(idx))))
            options = solver.replace(rank=None if solver.rank is None else min(solver.rank, limit))
            gram = None
            if preserve_positions == "all":  # every position but the harmful prompts' answer opening
                if layer_gram is None:  # rows were given without it (or with one over other prompts)
                    layer_gram = _preserved_gram(model, needed, key, batch_size, progress)
                gram = spec.position_weight * layer_gram
            if site == "w_out":  # the keys are the safety neurons' activations
                keys, keep_keys = X_low[:, idx], None if X_keep is None else X_keep[:, idx]
                if gram is not None:  # stay silent at every preserved position
                    keep_keys = _factor(gram, idx) if keep_keys is None else torch.cat([keep_keys, _factor(gram, idx)])
            elif gram is not None:
                X_keep = _factor(gram) if X_keep is None else torch.cat([X_keep, _factor(gram)])
            if target == "neurons" and site == "w_out":
                sol = options.solve(keys, X_piv[:, idx] - keys, keep_keys)
                edit = LayerEdit(layer, site, idx, sol.delta @ w[idx], sol.delta, sol.to_dict())
            elif target == "neurons":
                w_s = w[:, idx]
                sol = options.solve(X_low, (X_piv - X_low) @ w_s, X_keep)
                edit = LayerEdit(layer, site, idx, sol.delta, None, sol.to_dict())
            else:
                resid_piv = take(piv, ("resid", layer))
                gap = resid_piv - take(low, ("resid", layer))
                if target == "refusal" or refusal_boost:
                    r = resid_piv.mean(0) - take(ref_safe, ("resid", layer)).mean(0)  # the pivot's refusal direction
                if target == "refusal":
                    unit = r / r.norm()
                    gap = (gap @ unit)[:, None] * unit[None, :]
                elif target == "language_gap":  # each row: its language's mean gap
                    for lang in langs:
                        sel = torch.tensor([p.lang == lang for p in low])
                        if sel.any():
                            gap[sel] = gap[sel].mean(0)
                if refusal_boost:
                    gap = gap + refusal_boost * r
                sol = options.solve(keys, gap, keep_keys)
                edit = LayerEdit(layer, site, idx, sol.delta, None, sol.to_dict())
            done.append(edit)
            if layer != layers[-1] and spec.sequential:  # later layers see this one's effect
                applied.append(WeightEdit([edit]).apply(model))
    finally:
        for e in reversed(applied):
            e.revert(model)

    recipe = {k: v for k, v in spec.to_dict().items() if k not in ("kind", "solver", "neurons")}
    settings = {
        **recipe,
        **solver.to_dict(),
        "langs": langs,
        "neuron_langs": neuron_langs,
        "neurons": spec.neurons if isinstance(spec.neurons, str) else type(spec.neurons).__name__,
    }
    fitted_on = {
        "harmful_ids": sorted({p.id for p in low}),
        "langs": langs,
        "preserved": {"count": len(keep), "ids": sorted({p.id for p in keep})},
        "rows": {"low": len(low), "preserved": len(keep)},
    }
    result = WeightEdit(done, settings, fitted_on, spec=spec)
    result.fingerprint = result.model_fingerprint(model)
    return result


def _fit_switch(model, prompts, spec: EditSpec, rows, batch_size: int, progress: bool) -> WeightEdit:
    """The harm switch of `spec`: its detector fitted on `prompts`, then the two-neuron step."""
    from .switch import fit_detector, fit_switch

    if rows is not None:
        raise EditError("the harm switch fits its own detector in one streaming pass: rows= does not apply to it")
    o = spec.switch_options
    detector = fit_detector(
        model,
        prompts,
        layer=spec.layers[0],
        answer_tokens=o.answer_tokens,
        trigger=o.trigger,
        pivot=spec.pivot,
        ridge=o.probe_ridge,
        batch_size=batch_size,
        progress=progress,
    )
    edit = fit_switch(model, detector, threshold=o.threshold, width=o.width, strength=o.strength, neurons=spec.neurons)
    edit.spec = spec
    return edit
