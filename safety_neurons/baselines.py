"""Baselines that leave the weights alone: hook-based interventions, applied with a context manager.

* `NeuronScaling`: multiply chosen neurons' activations by α at every position (the paper's motivating
  experiment: scaling the English safety neurons by α > 1 lowers harmful answers in many languages).
* `RefusalDirection`: add c · r to the residual stream after a layer, r = mean_harmful − mean_harmless
  of that residual stream at the last prompt token (Arditi et al., 2024).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ._checks import (
    Artifact,
    as_indices,
    as_int_list,
    as_layers,
    as_records,
    as_str_list,
    check_int,
    check_model,
    check_number,
    check_positive_int,
)
from .activations import collect_activations, hook_name
from .neurons import SafetyNeurons
from .prompts import Prompt, check_langs


class BaselineError(ValueError):
    """A baseline cannot be built, applied or read as asked (a bad argument, or a damaged or changed folder)."""


class _HookIntervention:
    def fwd_hooks(self) -> list:
        raise NotImplementedError

    def _check_model(self, model) -> None:
        pass

    @contextmanager
    def applied(self, model):
        """`with intervention.applied(model): ...` — hooks are removed on exit."""
        check_model(model, BaselineError)
        self._check_model(model)
        with model.hooks(fwd_hooks=self.fwd_hooks()):
            yield model


@dataclass
class NeuronScaling(_HookIntervention, Artifact):
    """Scale neuron activations (`mlp.hook_post`) by `alpha` at the given layers."""

    neurons: dict[int, list[int]]
    alpha: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.neurons, Mapping) or not self.neurons:
            raise BaselineError(
                f"neurons must be a non-empty {{layer: indices}} map, got {type(self.neurons).__name__}"
            )
        self.neurons = {
            check_int("layer", layer, BaselineError): as_indices(f"neurons[{layer}]", idx, BaselineError).tolist()
            for layer, idx in self.neurons.items()
        }
        self.alpha = check_number("alpha", self.alpha, BaselineError)

    @classmethod
    def from_ranking(cls, ranking: SafetyNeurons, *, lang: str = "en", alpha: float = 2.0, layers=None):
        if not isinstance(ranking, SafetyNeurons):
            raise BaselineError(f"ranking must be SafetyNeurons (rank_neurons(...)), got {type(ranking).__name__}")
        layers = ranking.layers if layers is None else as_int_list("layers", layers, BaselineError)
        chosen = {layer: ranking.neurons(lang, layer).tolist() for layer in layers}
        chosen = {layer: idx for layer, idx in chosen.items() if idx}
        if not chosen:
            raise BaselineError(f"no {lang} safety neurons selected at layers {list(layers)}")
        return cls(chosen, alpha)

    def _check_model(self, model) -> None:
        cfg = model.cfg
        for layer, idx in self.neurons.items():
            as_layers("layer", layer, cfg.n_layers, BaselineError)
            as_indices(f"neurons[{layer}]", idx, BaselineError, size=cfg.d_mlp)

    def fwd_hooks(self) -> list:
        def make(idx):
            idx_t = torch.tensor(idx, dtype=torch.long)

            def hook(acts, hook):
                acts[..., idx_t.to(acts.device)] *= self.alpha
                return acts

            return hook

        return [(hook_name("act", layer), make(idx)) for layer, idx in self.neurons.items()]

    # --- files (`_checks.Artifact`: scaling.json and scaling.safetensors, one index tensor a layer) --------
    _FIELDS = ("layers", "alpha")
    _ERROR = BaselineError

    def _saved(self) -> tuple[dict, dict]:
        tensors = {f"neurons.{layer}": torch.tensor(idx, dtype=torch.long) for layer, idx in self.neurons.items()}
        return tensors, {"layers": list(self.neurons), "alpha": self.alpha}

    @classmethod
    def _shapes(cls, fields: dict) -> dict:
        return {f"neurons.{layer}": [None] for layer in fields["layers"]}

    @classmethod
    def _from_saved(cls, fields: dict, tensors: dict) -> NeuronScaling:
        return cls({layer: tensors[f"neurons.{layer}"].tolist() for layer in fields["layers"]}, fields["alpha"])


@dataclass
class RefusalDirection(_HookIntervention, Artifact):
    """Add `coeff` × the unit difference-of-means direction to the residual stream after `layer`."""

    layer: int
    direction: Float[Tensor, " d_model"]  # unit norm
    norm: float  # ‖mean_harmful − mean_harmless‖ (natural scale of the coefficient)
    coeff: float = 1.0

    @classmethod
    def fit(
        cls,
        model,
        prompts: Sequence[Prompt],
        *,
        layer: int,
        langs: Sequence[str] = ("en",),
        coeff: float = 1.0,
        batch_size: int = 16,
        progress: bool = True,
    ) -> RefusalDirection:
        check_model(model, BaselineError)
        prompts = as_records("prompts", prompts, Prompt, BaselineError)
        layer = as_layers("layer", check_int("layer", layer, BaselineError), model.cfg.n_layers, BaselineError)[0]
        langs = check_langs(as_str_list("langs", langs, BaselineError))
        coeff = check_number("coeff", coeff, BaselineError)
        batch_size = check_positive_int("batch_size", batch_size, BaselineError)
        chosen = [p for p in prompts if p.lang in langs]
        have = {(p.lang, p.label) for p in chosen}
        missing = [f"{x} {label}" for x in langs for label in ("harmful", "harmless") if (x, label) not in have]
        if missing:
            raise BaselineError(
                f"a refusal direction needs harmful and harmless prompts in {langs}; none for {missing}"
            )
        stats = collect_activations(
            model, chosen, stats_site="resid", stats_layers=[layer], batch_size=batch_size, progress=progress
        ).stats
        diff = sum(stats.group_mean(lang, "harmful")[0] - stats.group_mean(lang, "harmless")[0] for lang in langs)
        diff = diff / len(langs)
        norm = float(diff.norm())
        if not norm > 0:
            raise BaselineError(f"harmful and harmless prompts have the same mean at layer {layer}: no direction")
        return cls(layer, (diff / norm).to(torch.float32), norm, coeff)

    def fwd_hooks(self) -> list:
        def hook(resid, hook):
            return resid + (self.coeff * self.norm) * self.direction.to(resid.device, resid.dtype)

        return [(hook_name("resid", self.layer), hook)]

    def _check_model(self, model) -> None:
        as_layers("layer", self.layer, model.cfg.n_layers, BaselineError)
        if self.direction.shape != (model.cfg.d_model,):
            raise BaselineError(
                f"the direction has shape {tuple(self.direction.shape)}; this model's residual stream "
                f"has width {model.cfg.d_model} (fitted on another model?)"
            )

    # --- files (`_checks.Artifact`: direction.json and direction.safetensors) ----------------------------
    _FIELDS = ("layer", "norm", "coeff")
    _TENSORS = ("direction",)
    _ERROR = BaselineError

    @classmethod
    def _legacy_meta(cls, fields: dict) -> str:  # before format 2 the sha256 covered the layer and norm
        return json.dumps({"layer": fields["layer"], "norm": float(fields["norm"])})
