"""Baselines that leave the weights alone: hook-based interventions, applied with a context manager.

* `NeuronScaling`: multiply chosen neurons' activations by α at every position (the paper's motivating
  experiment: scaling the English safety neurons by α > 1 lowers harmful answers in many languages).
* `RefusalDirection`: add c · r to the residual stream after a layer, r = mean_harmful − mean_harmless
  of that residual stream at the last prompt token (Arditi et al., 2024).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from .activations import collect_activations, hook_name
from .neurons import SafetyNeurons
from .prompts import Prompt


class _HookIntervention:
    def fwd_hooks(self) -> list:
        raise NotImplementedError

    @contextmanager
    def applied(self, model):
        """`with intervention.applied(model): ...` — hooks are removed on exit."""
        with model.hooks(fwd_hooks=self.fwd_hooks()):
            yield model


@dataclass
class NeuronScaling(_HookIntervention):
    """Scale neuron activations (`mlp.hook_post`) by `alpha` at the given layers."""

    neurons: dict[int, list[int]]
    alpha: float = 2.0

    @classmethod
    def from_ranking(cls, ranking: SafetyNeurons, *, lang: str = "en", alpha: float = 2.0, layers=None):
        layers = ranking.layers if layers is None else layers
        chosen = {layer: ranking.neurons(lang, layer).tolist() for layer in layers}
        chosen = {layer: idx for layer, idx in chosen.items() if idx}
        if not chosen:
            raise ValueError(f"no {lang} safety neurons selected at layers {list(layers)}")
        return cls(chosen, alpha)

    def fwd_hooks(self) -> list:
        def make(idx):
            idx_t = torch.tensor(idx, dtype=torch.long)

            def hook(acts, hook):
                acts[..., idx_t.to(acts.device)] *= self.alpha
                return acts

            return hook

        return [(hook_name("act", layer), make(idx)) for layer, idx in self.neurons.items()]


@dataclass
class RefusalDirection(_HookIntervention):
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
    ) -> "RefusalDirection":
        chosen = [p for p in prompts if p.lang in langs]
        labels = {p.label for p in chosen}
        if labels != {"harmful", "harmless"}:
            raise ValueError(f"a refusal direction needs harmful and harmless prompts in {list(langs)}; have {labels}")
        stats = collect_activations(
            model, chosen, stats_site="resid", stats_layers=[layer], batch_size=batch_size, progress=progress
        ).stats
        diff = sum(stats.group_mean(lang, "harmful")[0] - stats.group_mean(lang, "harmless")[0] for lang in langs)
        diff = diff / len(langs)
        norm = float(diff.norm())
        return cls(layer, (diff / norm).to(torch.float32), norm, coeff)

    def fwd_hooks(self) -> list:
        def hook(resid, hook):
            return resid + (self.coeff * self.norm) * self.direction.to(resid.device, resid.dtype)

        return [(hook_name("resid", self.layer), hook)]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({"direction": self.direction.contiguous()}, path / "direction.safetensors")
        (path / "direction.json").write_text(json.dumps({"layer": self.layer, "norm": self.norm, "coeff": self.coeff}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "RefusalDirection":
        path = Path(path)
        cfg = json.loads((path / "direction.json").read_text())
        return cls(cfg["layer"], load_file(path / "direction.safetensors")["direction"], cfg["norm"], cfg["coeff"])
