"""Safety-neuron ranking per language and layer.

From the streamed harmful / harmless statistics of the MLP activations (`hook_post`):

* Δ_j = mean_harmful(a_j) − mean_harmless(a_j)
* z_j = (Δ_j − mean_k Δ_k) / std_k Δ_k        (within one layer)
* d_j = Δ_j / s_j, s_j the pooled standard deviation (Cohen's d; 0 where s_j is zero, so a
  neuron that is constant within both groups is judged by z alone)
* S = {z > τ_mag} ∪ {d > τ_stat}             (or the top-k / top fraction by z)

A second ranking scores neurons by attribution: activation × gradient of a refusal metric.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from ._checks import (
    Artifact,
    as_layers,
    as_records,
    as_str_list,
    check_int,
    check_model,
    check_number,
    check_positive_int,
)
from .activations import ActivationStats, hook_name
from .chat import check_lengths, encode_chat, prompt_names, tokenize_chat
from .prompts import Prompt, check_langs


class NeuronsError(ValueError):
    """A ranking cannot be made or read as asked (a bad argument, or a damaged or changed ranking folder)."""


@dataclass
class SafetyNeurons(Artifact):
    """Scores and selected neuron sets for each language and layer."""

    langs: list[str]
    layers: list[int]
    delta: Float[Tensor, "lang layer d_mlp"]
    z: Float[Tensor, "lang layer d_mlp"]
    d: Float[Tensor, "lang layer d_mlp"]
    selected: Bool[Tensor, "lang layer d_mlp"]
    settings: dict = field(default_factory=dict)

    # --- access ----------------------------------------------------------------------------------
    def _li(self, lang: str, layer: int) -> tuple[int, int]:
        if lang not in self.langs:
            raise NeuronsError(f"no ranking for language {lang!r}; have {self.langs}")
        if check_int("layer", layer, NeuronsError) not in self.layers:
            raise NeuronsError(f"no ranking for layer {layer}; have layers {self.layers[0]}…{self.layers[-1]}")
        return self.langs.index(lang), self.layers.index(layer)

    def neurons(self, lang: str, layer: int) -> Int[Tensor, " m"]:
        """Selected neuron indices of one language at one layer, strongest (by z) first."""
        i, j = self._li(lang, layer)
        idx = self.selected[i, j].nonzero().flatten()
        return idx[self.z[i, j, idx].argsort(descending=True)]

    def union(self, layer: int, langs: Iterable[str] | None = None) -> Int[Tensor, " m"]:
        """Neurons selected at `layer` by any of `langs` (default: all), sorted by index."""
        langs = self.langs if langs is None else as_str_list("langs", langs, NeuronsError)
        mask = torch.stack([self.selected[self._li(lang, layer)] for lang in langs]).any(0)
        return mask.nonzero().flatten()

    def counts(self) -> Int[Tensor, "lang layer"]:
        return self.selected.sum(-1)

    def jaccard(self, layer: int | None = None) -> Float[Tensor, "lang lang"]:
        """|A∩B| / |A∪B| between languages' sets, at one layer or over all (layer, neuron) pairs."""
        sel = self.selected.flatten(1) if layer is None else self.selected[:, self._li(self.langs[0], layer)[1]]
        sel = sel.to(torch.float64)
        inter = sel @ sel.T
        sizes = sel.sum(1)
        union = sizes[:, None] + sizes[None, :] - inter
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))

    def overlap_with(self, other: SafetyNeurons) -> dict[str, float]:
        """Per language, the Jaccard overlap of this ranking's sets with `other`'s (over all layers)."""
        if not isinstance(other, SafetyNeurons):
            raise NeuronsError(f"other must be SafetyNeurons, got {type(other).__name__}")
        missing = [layer for layer in self.layers if layer not in other.layers]
        if missing or self.delta.shape[-1] != other.delta.shape[-1]:
            raise NeuronsError(
                f"other ranks other layers or widths: no layers {missing[:5]}, "
                f"width {other.delta.shape[-1]} vs {self.delta.shape[-1]}"
            )
        out = {}
        for lang in self.langs:
            if lang in other.langs:
                a = self.selected[self.langs.index(lang)]
                b = other.selected[other.langs.index(lang)]
                layers = [other.layers.index(layer) for layer in self.layers]
                b = b[layers]
                union = (a | b).sum().item()
                out[lang] = (a & b).sum().item() / union if union else 1.0
        return out

    def table(self) -> str:
        """Per-layer counts per language as a text table."""
        counts = self.counts()
        lines = ["layer " + " ".join(f"{lang:>6}" for lang in self.langs)]
        for j, layer in enumerate(self.layers):
            lines.append(f"{layer:>5} " + " ".join(f"{int(counts[i, j]):>6}" for i in range(len(self.langs))))
        return "\n".join(lines)

    def __repr__(self) -> str:
        counts = self.counts().sum(1).tolist()
        per_lang = ", ".join(f"{lang}:{n}" for lang, n in zip(self.langs, counts))
        rule = self.settings.get("rule", "?")
        return (
            f"SafetyNeurons({len(self.layers)} layers × {self.delta.shape[-1]} neurons, rule={rule}, "
            f"selected per language=[{per_lang}])"
        )

    # --- files (`_checks.Artifact`: neurons.json and neurons.safetensors) --------------------------------
    _FIELDS = ("langs", "layers", "settings")
    _TENSORS = ("delta", "z", "d", "selected")
    _ERROR = NeuronsError

    @classmethod
    def _shapes(cls, fields: dict) -> dict:  # every tensor: languages × layers × width
        return {k: [len(fields["langs"]), len(fields["layers"]), None] for k in cls._TENSORS}

    @classmethod
    def _legacy_meta(cls, fields: dict) -> str:  # before format 2 the sha256 covered the languages and layers
        return json.dumps({"langs": list(fields["langs"]), "layers": [int(x) for x in fields["layers"]]})


def _zscore(x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
    return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True).clamp(min=1e-12)


def select(
    z: Float[Tensor, "... d"],
    d: Float[Tensor, "... d"],
    *,
    tau_mag: float | None = 2.0,
    tau_stat: float | None = 1.0,
    top_k: int | None = None,
    top_frac: float | None = None,
) -> Bool[Tensor, "... d"]:
    """The selection rule: thresholds (default) or the top-k / top fraction by z per layer."""
    width = z.shape[-1]
    for name, tau in (("tau_mag", tau_mag), ("tau_stat", tau_stat)):
        if tau is not None:
            check_number(name, tau, NeuronsError)
    if top_frac is not None:
        if not 0 < check_number("top_frac", top_frac, NeuronsError) <= 1:
            raise NeuronsError(f"top_frac must be in (0, 1], got {top_frac}")
        top_k = max(1, round(top_frac * width))
    if top_k is not None:
        if not 1 <= check_int("top_k", top_k, NeuronsError) <= width:
            raise NeuronsError(f"top_k must be between 1 and {width}, got {top_k}")
        idx = z.topk(top_k, dim=-1).indices
        return torch.zeros_like(z, dtype=torch.bool).scatter_(-1, idx, True)
    if tau_mag is None and tau_stat is None:
        raise NeuronsError("give tau_mag and/or tau_stat, or top_k / top_frac")
    sel = torch.zeros_like(z, dtype=torch.bool)
    if tau_mag is not None:
        sel |= z > tau_mag
    if tau_stat is not None:
        sel |= d > tau_stat
    return sel


def rank_neurons(
    stats: ActivationStats,
    *,
    langs: Iterable[str] | None = None,
    tau_mag: float | None = 2.0,
    tau_stat: float | None = 1.0,
    top_k: int | None = None,
    top_frac: float | None = None,
    positive_only: bool = True,
) -> SafetyNeurons:
    """Rank every neuron of every layer for each language from harmful vs harmless statistics."""
    from .prompts import LANGS

    if not isinstance(stats, ActivationStats):
        raise NeuronsError(
            f"stats must be ActivationStats (collect_activations(...).stats), got {type(stats).__name__}"
        )
    if langs is not None:
        langs = as_str_list("langs", langs, NeuronsError)
        missing = [x for x in check_langs(langs) if x not in stats.langs]
        if missing:
            raise NeuronsError(f"no statistics for language {missing[0]!r}; collected: {stats.langs}")
    langs = check_langs([x for x in LANGS if x in stats.langs] if langs is None else langs)
    deltas, zs, ds = [], [], []
    for lang in langs:
        n_h, n_s = stats.group_count(lang, "harmful"), stats.group_count(lang, "harmless")
        if n_h < 2 or n_s < 2:
            raise NeuronsError(f"{lang}: need at least 2 harmful and 2 harmless prompts, have {n_h} and {n_s}")
        delta = stats.group_mean(lang, "harmful") - stats.group_mean(lang, "harmless")
        pooled = ((n_h - 1) * stats.group_var(lang, "harmful") + (n_s - 1) * stats.group_var(lang, "harmless")) / (
            n_h + n_s - 2
        )
        deltas.append(delta)
        zs.append(_zscore(delta))
        # Cohen's d is undefined where the pooled deviation is (numerically) zero: d = 0 there, so such a
        # neuron can only be selected by its z-score (never a d of 1e12 from a constant group)
        sd = pooled.sqrt()
        floor = 1e-9 * sd.amax(-1, keepdim=True).clamp(min=1e-300)
        ds.append(torch.where(sd > floor, delta / sd.clamp(min=1e-300), torch.zeros_like(delta)))
    delta, z, d = torch.stack(deltas), torch.stack(zs), torch.stack(ds)
    if positive_only:
        sel = select(z, d, tau_mag=tau_mag, tau_stat=tau_stat, top_k=top_k, top_frac=top_frac) & (delta > 0)
    else:
        sel = select(z.abs(), d.abs(), tau_mag=tau_mag, tau_stat=tau_stat, top_k=top_k, top_frac=top_frac)
    rule = (
        f"top_k={top_k}"
        if top_k and not top_frac
        else f"top_frac={top_frac}"
        if top_frac
        else f"z>{tau_mag} or d>{tau_stat}"
    )
    settings = {
        "rule": rule,
        "tau_mag": tau_mag,
        "tau_stat": tau_stat,
        "top_k": top_k,
        "top_frac": top_frac,
        "positive_only": positive_only,
        "site": stats.site,
        "position": stats.position,
        "method": "statistics",
        "counts": {lang: [stats.group_count(lang, "harmful"), stats.group_count(lang, "harmless")] for lang in langs},
    }
    return SafetyNeurons(langs, list(stats.layers), delta, z, d, sel, settings)


def rank_by_attribution(
    model,
    prompts: Sequence[Prompt],
    *,
    layers: Iterable[int] | None = None,
    top_k: int = 100,
    batch_size: int = 8,
    progress: bool = True,
) -> SafetyNeurons:
    """Rank neurons by attribution to refusal, per language, over the *harmful* prompts given.

    Score of neuron j = mean over harmful prompts of a_j × ∂m/∂a_j at the last prompt token, where m is
    the log-probability of a refusal opening at the first answer position (see `refusal_logprob`).
    One forward and one backward pass per batch; backward hooks are TransformerLens hook points.
    `top_k` is capped at the model's d_mlp (every neuron of a layer).
    """
    from .refusal import refusal_logprob, refusal_token_ids

    check_model(model, NeuronsError)
    prompts = as_records("prompts", prompts, Prompt, NeuronsError)
    harmful = [p for p in prompts if p.label == "harmful"]
    if not harmful:
        raise NeuronsError("attribution needs harmful prompts; none given")
    langs = check_langs(dict.fromkeys(p.lang for p in harmful))
    batch_size = check_positive_int("batch_size", batch_size, NeuronsError)
    top_k = check_positive_int("top_k", top_k, NeuronsError)
    layers = (
        list(range(model.cfg.n_layers))
        if layers is None
        else as_layers("layers", layers, model.cfg.n_layers, NeuronsError)
    )
    top_k = min(top_k, model.cfg.d_mlp)  # documented: a layer has only d_mlp neurons to choose from
    check_lengths(encode_chat(model.tokenizer, [p.text for p in harmful]), model.cfg.n_ctx, prompt_names(harmful))
    token_ids = refusal_token_ids(model.tokenizer)
    d_mlp = model.cfg.d_mlp
    total = torch.zeros(len(langs), len(layers), d_mlp, dtype=torch.float64)
    counts = torch.zeros(len(langs), dtype=torch.float64)
    acts: dict[int, Tensor] = {}

    def keep(layer):
        def hook(a, hook):
            a.retain_grad()
            acts[layer] = a
            return a

        return hook

    fwd = [(hook_name("act", layer), keep(layer)) for layer in layers]
    for start in tqdm(range(0, len(harmful), batch_size), desc="attribution", disable=not progress, unit="batch"):
        chunk = harmful[start : start + batch_size]
        batch = tokenize_chat(model.tokenizer, [p.text for p in chunk]).to(model.cfg.device)
        model.zero_grad(set_to_none=True)
        with torch.enable_grad(), model.hooks(fwd_hooks=fwd):
            logits = model(batch.input_ids, **batch.model_kwargs())
            refusal_logprob(logits[:, -1], token_ids).sum().backward()
        for j, layer in enumerate(layers):
            a = acts[layer]
            score = (a[:, -1] * a.grad[:, -1]).detach().to(torch.float64).cpu()
            for row, p in zip(score, chunk):
                total[langs.index(p.lang), j] += row
        for p in chunk:
            counts[langs.index(p.lang)] += 1
        acts.clear()
    model.zero_grad(set_to_none=True)
    score = total / counts[:, None, None]
    z = _zscore(score)
    sel = select(z, z, top_k=top_k)
    settings = {
        "rule": f"top_k={top_k}",
        "top_k": top_k,
        "method": "attribution",
        "position": "last",
        "metric": "refusal log-prob at the first answer position",
    }
    return SafetyNeurons(langs, layers, score, z, torch.full_like(score, float("nan")), sel, settings)
