"""Streaming collection of MLP activations through TransformerLens hook points.

One pass over the prompts gives two things, both batch by batch:

* `ActivationStats`: count, mean and variance per (language, label) group for every requested layer,
  accumulated in float64 with Chan's parallel form of Welford's update (memory independent of the
  number of prompts);
* `ActivationRows`: the per-prompt rows at a few (site, layer) points, float64, keyed by prompt id,
  which is what the closed-form solve needs.

Only the hooks asked for are registered; nothing like a full `run_with_cache` is kept. Each layer's
statistics and Gram matrices stay on the device the layer ran on (a model split by `device_map`) until
the pass is over. Collections over disjoint prompt sets merge exactly (`ActivationStats.merge`,
`merge_collections`): what `distributed.collect_sharded` and the nnsight backend rely on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from ._checks import (
    Artifact,
    as_int_list,
    as_records,
    check_choice,
    check_int,
    check_model,
    check_positive_int,
)
from .chat import length_sorted_batches, prompt_names, template_suffix_length
from .prompts import Prompt

SITES: dict[str, str] = {
    "mlp_in": "ln2.hook_out",  # MLP input x (post-attention RMSNorm output), d_model
    "gate": "mlp.hook_pre",  # x @ W_gate, d_mlp
    "up": "mlp.hook_pre_linear",  # x @ W_in, d_mlp
    "act": "mlp.hook_post",  # silu(gate) * up, d_mlp: the "neurons"
    "resid": "hook_resid_post",  # residual stream after the block, d_model
}
_ORDER = {site: i for i, site in enumerate(SITES)}  # execution order inside a block
Site = Literal["mlp_in", "gate", "up", "act", "resid"]
Position = Literal["last", "mean"]
GramPositions = Literal["all", "preserved"]


def hook_name(site: str, layer: int) -> str:
    check_choice("site", site, SITES, ActivationError)
    return f"blocks.{check_positive_int('layer', layer, ActivationError, minimum=0)}.{SITES[site]}"


def site_width(model, site: str) -> int:
    return model.cfg.d_mlp if site in ("gate", "up", "act") else model.cfg.d_model


def reduce_positions(
    acts: Float[Tensor, "batch pos d"], mask: Int[Tensor, "batch pos"], position: Position
) -> Float[Tensor, "batch d"]:
    """The last prompt token (left padding puts it at -1) or the mean over real tokens."""
    if position == "last":
        return acts[:, -1, :]
    if position == "mean":
        m = mask.to(acts.dtype).unsqueeze(-1)
        return (acts * m).sum(1) / m.sum(1).clamp(min=1)
    raise ActivationError(f"position must be 'last' or 'mean', got {position!r}")


def model_tag(model) -> str:
    """A short hash naming the model whose activations these are: its shape and a slice of its token
    embeddings (which no edit touches), so rows collected on one model are not used on another."""
    cfg = model.cfg
    h = hashlib.sha256(f"{cfg.n_layers}:{cfg.d_model}:{cfg.d_mlp}:{cfg.d_vocab}".encode())
    emb = model.original_model.get_input_embeddings().weight
    h.update(emb[:16].detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class ActivationError(ValueError):
    """Activations cannot be collected as asked, or a saved statistics file is damaged."""


def _check_layers(n_layers: int, layers: Iterable[int]) -> list[int]:
    layers = sorted(set(as_int_list("layers", layers, ActivationError, allow_empty=True)))
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ActivationError(f"layers {bad} out of range: the model has {n_layers} layers")
    return layers


def _plan_collection(n_layers: int, *, stats_site, stats_layers, rows_at, gram_at, gram_positions, position):
    """What a collection of a model with `n_layers` layers records, every argument checked (the arguments
    of `collect_activations`): (statistics layers, row points, Gram points, every point in execution order)."""
    check_choice("position", position, ("last", "mean"), ActivationError)
    if stats_site is not None:
        check_choice("stats_site", stats_site, SITES, ActivationError)
    if gram_positions not in ("all", "preserved"):
        raise ActivationError(f"gram_positions must be 'all' or 'preserved', got {gram_positions!r}")
    stats_layers = range(n_layers) if isinstance(stats_layers, str) and stats_layers == "all" else stats_layers
    stats_layers = _check_layers(n_layers, stats_layers) if stats_site else []
    points = {}
    for arg, value in (("rows_at", rows_at), ("gram_at", gram_at)):
        value = [] if value is None else value
        if (
            isinstance(value, str)
            or not isinstance(value, Iterable)
            or any(not isinstance(k, (tuple, list)) or len(k) != 2 for k in value)
        ):
            raise ActivationError(
                f"{arg} must be a list of (site, layer) pairs, e.g. [('mlp_in', 3)], got {value!r:.80}"
            )
        points[arg] = list(dict.fromkeys((s, check_int("layer", layer, ActivationError)) for s, layer in value))
        for s, layer in points[arg]:
            hook_name(s, layer)
        _check_layers(n_layers, [layer for _, layer in points[arg]])
    rows, gram = points["rows_at"], points["gram_at"]
    if not stats_layers and not rows and not gram:
        raise ActivationError("nothing to collect: give stats_site/stats_layers, rows_at or gram_at")
    order = sorted(
        {(stats_site, layer) for layer in stats_layers} | set(rows) | set(gram), key=lambda k: (k[1], _ORDER[k[0]])
    )
    return stats_layers, rows, gram, order


@dataclass
class ActivationStats(Artifact):
    """Per-group running mean and variance of one site at every requested layer (float64)."""

    site: str
    position: str
    layers: list[int]
    groups: list[tuple[str, str]]  # (lang, label)
    count: Int[Tensor, " group"]
    mean: Float[Tensor, "group layer d"]
    m2: Float[Tensor, "group layer d"]  # sum of squared deviations

    @classmethod
    def empty(cls, site: str, position: str, layers: list[int], width: int, device="cpu") -> ActivationStats:
        """No groups yet; mean and M2 live on `device` (the model's, so updates need no copies), counts on the CPU."""
        z = torch.zeros(0, len(layers), width, dtype=torch.float64, device=device)
        return cls(site, position, layers, [], torch.zeros(0, dtype=torch.long), z, z.clone())

    def to(self, device) -> ActivationStats:
        """The same statistics with mean and M2 on `device`."""
        return ActivationStats(
            self.site,
            self.position,
            self.layers,
            list(self.groups),
            self.count,
            self.mean.to(device),
            self.m2.to(device),
        )

    def _group_index(self, group: tuple[str, str]) -> int:
        if group not in self.groups:
            self.groups.append(group)
            pad = torch.zeros(1, *self.mean.shape[1:], dtype=torch.float64, device=self.mean.device)
            self.mean = torch.cat([self.mean, pad])
            self.m2 = torch.cat([self.m2, pad.clone()])
            self.count = torch.cat([self.count, torch.zeros(1, dtype=torch.long)])
        return self.groups.index(group)

    def update(self, group: tuple[str, str], rows: Float[Tensor, "n layer d"]) -> None:
        """Merge a block of rows into a group's statistics (Chan et al.'s pairwise update)."""
        g = self._group_index(group)
        rows = rows.to(torch.float64)
        n_b = rows.shape[0]
        if n_b == 0:
            return
        mean_b = rows.mean(0)
        m2_b = ((rows - mean_b) ** 2).sum(0)
        n_a = int(self.count[g])
        n = n_a + n_b
        delta = mean_b - self.mean[g]
        self.mean[g] += delta * (n_b / n)
        self.m2[g] += m2_b + delta**2 * (n_a * n_b / n)
        self.count[g] = n

    def _check_compatible(self, other: ActivationStats) -> None:
        same = (self.site, self.position, self.layers, self.mean.shape[-1])
        theirs = (other.site, other.position, other.layers, other.mean.shape[-1])
        if same != theirs:
            raise ValueError(f"cannot merge statistics of (site, position, layers, width) {theirs} into {same}")

    def reindexed(self, groups: Sequence[tuple[str, str]]) -> ActivationStats:
        """The same statistics over `groups`, in that order (a group not collected here has count 0)."""
        groups = [tuple(g) for g in groups]
        extra = [g for g in self.groups if g not in groups]
        if extra:
            raise ValueError(f"reindexed: groups {extra} were collected but are not in the new group list")
        shape = (len(groups), *self.mean.shape[1:])
        mean = torch.zeros(shape, dtype=torch.float64, device=self.mean.device)
        m2, count = mean.clone(), torch.zeros(len(groups), dtype=torch.long)
        for i, g in enumerate(self.groups):
            j = groups.index(g)
            mean[j], m2[j], count[j] = self.mean[i], self.m2[i], self.count[i]
        return ActivationStats(self.site, self.position, list(self.layers), groups, count, mean, m2)

    def merge(self, other: ActivationStats) -> ActivationStats:
        """Statistics of both sets of prompts together (Chan et al.'s parallel merge, exact up to round-off).

        Groups are ours in order, then the other's new ones; an empty group on either side changes nothing."""
        self._check_compatible(other)
        groups = list(self.groups) + [g for g in other.groups if g not in self.groups]
        a, b = self.reindexed(groups), other.reindexed(groups).to(self.mean.device)
        n_a, n_b = a.count.to(torch.float64), b.count.to(torch.float64)
        n = (n_a + n_b).clamp(min=1)
        w_a, w_b = (n_a / n).to(a.mean.device)[:, None, None], (n_b / n).to(a.mean.device)[:, None, None]
        delta = b.mean - a.mean
        mean = a.mean + delta * w_b
        m2 = a.m2 + b.m2 + delta**2 * (w_a * w_b * n.to(a.mean.device)[:, None, None])
        return ActivationStats(self.site, self.position, list(self.layers), groups, a.count + b.count, mean, m2)

    def index(self, lang: str, label: str) -> int:
        if (lang, label) not in self.groups:
            have = ", ".join(f"{a}/{b}" for a, b in self.groups)
            raise KeyError(f"no statistics for language {lang!r} label {label!r}; collected: {have}")
        return self.groups.index((lang, label))

    def group_mean(self, lang: str, label: str) -> Float[Tensor, "layer d"]:
        return self.mean[self.index(lang, label)]

    def group_var(self, lang: str, label: str) -> Float[Tensor, "layer d"]:
        """Unbiased (n - 1) variance."""
        g = self.index(lang, label)
        return self.m2[g] / max(int(self.count[g]) - 1, 1)

    def group_count(self, lang: str, label: str) -> int:
        return int(self.count[self.index(lang, label)])

    @property
    def langs(self) -> list[str]:
        return list(dict.fromkeys(lang for lang, _ in self.groups))

    def __repr__(self) -> str:
        counts = ", ".join(f"{a}/{b}:{int(n)}" for (a, b), n in zip(self.groups, self.count))
        return (
            f"ActivationStats(site={self.site!r}, position={self.position!r}, layers={len(self.layers)}, "
            f"width={self.mean.shape[-1]}, groups=[{counts}])"
        )

    # --- files (`_checks.Artifact`: stats.json and stats.safetensors) ------------------------------------
    _FIELDS = ("site", "position", "layers", "groups")
    _TENSORS = ("count", "mean", "m2")
    _ERROR = ActivationError

    @classmethod
    def _shapes(cls, fields: dict) -> dict:  # a count per group, a mean and M2 per group × layer
        groups, layers = len(fields["groups"]), len(fields["layers"])
        return {"count": [groups], "mean": [groups, layers, None], "m2": [groups, layers, None]}

    @classmethod
    def _legacy_meta(cls, fields: dict) -> str:  # before format 2 the sha256 covered the tensors alone
        return ""

    @classmethod
    def _from_saved(cls, fields: dict, tensors: dict) -> ActivationStats:
        return super()._from_saved({**fields, "groups": [tuple(g) for g in fields["groups"]]}, tensors)


@dataclass
class ActivationRows:
    """Per-prompt rows (float64) at a few (site, layer) points, aligned with `prompts`."""

    position: str
    prompts: list[Prompt]
    rows: dict[tuple[str, int], Float[Tensor, "n d"]] = field(default_factory=dict)
    model: str = ""  # `model_tag` of the model they were collected on ("" when unknown)

    def matrix(
        self, site: str, layer: int, *, lang: str | None = None, ids: Sequence[str] | None = None
    ) -> Float[Tensor, "n d"]:
        """All rows, or one language's rows (in `ids` order when given: parallel sets line up)."""
        if (site, layer) not in self.rows:
            raise KeyError(f"no rows collected at site {site!r} layer {layer}; have {sorted(self.rows)}")
        x = self.rows[(site, layer)]
        if lang is None:
            if ids is not None:
                raise ActivationError("ids need a lang: prompt ids repeat across languages")
            return x
        where = {p.id: i for i, p in enumerate(self.prompts) if p.lang == lang}
        if not where:
            raise KeyError(f"no rows for language {lang!r}")
        ids = list(where) if ids is None else list(ids)
        missing = [i for i in ids if i not in where]
        if missing:
            raise KeyError(f"{lang}: prompt ids not collected: {missing[:5]}{'…' if len(missing) > 5 else ''}")
        return x[[where[i] for i in ids]]


class _StopForward(Exception):
    """Raised from the last needed hook to end a forward pass early."""


@dataclass
class Collection(Artifact):
    """What one pass over the prompts recorded: statistics, per-prompt rows and Gram matrices. Saved as one
    artifact folder (collection.json + collection.safetensors): `safety-neurons run` keeps the unedited
    model's collection so that a second run with other edit settings does not collect again."""

    stats: ActivationStats | None
    rows: ActivationRows
    gram: dict[tuple[str, int], Float[Tensor, "d d"]] = field(default_factory=dict)
    """Σ xᵀx over the real tokens of every prompt (`gram_positions`), per requested (site, layer) (float64)."""
    n_tokens: int = 0  # tokens summed into each Gram matrix
    gram_positions: str = "all"

    # --- files (`_checks.Artifact`): tensors named "stats.mean", "rows.act.21", "gram.act.21", … -----------
    _ERROR = ActivationError
    _FIELDS = ("stats", "position", "prompts", "model", "rows", "gram", "n_tokens", "gram_positions")

    def _saved(self) -> tuple[dict, dict]:
        tensors = {f"rows.{s}.{layer}": x for (s, layer), x in self.rows.rows.items()}
        tensors |= {f"gram.{s}.{layer}": g for (s, layer), g in self.gram.items()}
        stats = None
        if self.stats is not None:
            st = self.stats
            tensors |= {"stats.count": st.count, "stats.mean": st.mean, "stats.m2": st.m2}
            stats = {"site": st.site, "position": st.position, "layers": st.layers, "groups": st.groups}
        fields = {
            "stats": stats,
            "position": self.rows.position,
            "prompts": [asdict(p) for p in self.rows.prompts],
            "model": self.rows.model,
            "rows": [[s, layer] for s, layer in self.rows.rows],
            "gram": [[s, layer] for s, layer in self.gram],
            "n_tokens": self.n_tokens,
            "gram_positions": self.gram_positions,
        }
        return tensors, fields

    @classmethod
    def _shapes(cls, fields: dict) -> dict:
        n, st = len(fields["prompts"]), fields["stats"]
        shapes = {f"rows.{s}.{layer}": [n, None] for s, layer in fields["rows"]}
        shapes |= {f"gram.{s}.{layer}": [None, None] for s, layer in fields["gram"]}
        if st is not None:
            g, L = len(st["groups"]), len(st["layers"])
            shapes |= {"stats.count": [g], "stats.mean": [g, L, None], "stats.m2": [g, L, None]}
        return shapes

    @classmethod
    def _from_saved(cls, fields: dict, tensors: dict) -> Collection:
        st = fields["stats"]
        stats = None
        if st is not None:
            stats = ActivationStats(
                st["site"],
                st["position"],
                st["layers"],
                [tuple(g) for g in st["groups"]],
                tensors["stats.count"],
                tensors["stats.mean"],
                tensors["stats.m2"],
            )
        rows = {(s, layer): tensors[f"rows.{s}.{layer}"] for s, layer in fields["rows"]}
        prompts = [Prompt(**p) for p in fields["prompts"]]
        return cls(
            stats,
            ActivationRows(fields["position"], prompts, rows, fields["model"]),
            {(s, layer): tensors[f"gram.{s}.{layer}"] for s, layer in fields["gram"]},
            fields["n_tokens"],
            fields["gram_positions"],
        )


def _rows_key(prompts: Sequence[Prompt]) -> None:
    keys = [(p.lang, p.id) for p in prompts]
    if len(set(keys)) != len(keys):
        raise ActivationError("duplicate (lang, id) pairs in the prompts")


@torch.no_grad()
def collect_activations(
    model,
    prompts: Sequence[Prompt],
    *,
    stats_site: str | None = "act",
    stats_layers: Iterable[int] | Literal["all"] = "all",
    rows_at: Iterable[tuple[str, int]] = (),
    gram_at: Iterable[tuple[str, int]] = (),
    gram_positions: GramPositions = "all",
    position: Position = "last",
    batch_size: int = 16,
    system: str | None = None,
    progress: bool = True,
) -> Collection:
    """Run the prompts once and stream statistics and the requested per-prompt rows.

    Args:
        model: a `TransformerBridge` (see `load_model`).
        prompts: `Prompt` records; statistics are grouped by (lang, label).
        stats_site: the site whose statistics are accumulated at every layer of `stats_layers`
            (None to skip statistics).
        rows_at: (site, layer) points whose per-prompt rows are kept (the collection's `rows`).
        gram_at: (site, layer) points whose Gram matrix Σ xᵀx over the prompts' tokens is accumulated
            (the collection's `gram`: what an edit needs to stay silent at every position, not only the last).
        gram_positions: "all" real tokens, or the "preserved" ones, those an edit must leave alone: every
            token of a harmless prompt, and the message tokens of a harmful one, without the chat
            template's tokens after the message (`chat.template_suffix_length`) where its answer opens.
        position: "last" prompt token or "mean" over the prompt's real tokens.
    """
    check_model(model, ActivationError)
    prompts = as_records("prompts", prompts, Prompt, ActivationError)
    _rows_key(prompts)
    check_positive_int("batch_size", batch_size, ActivationError)
    stats_layers, rows, gram, points = _plan_collection(
        model.cfg.n_layers,
        stats_site=stats_site,
        stats_layers=stats_layers,
        rows_at=rows_at,
        gram_at=gram_at,
        gram_positions=gram_positions,
        position=position,
    )
    skip = template_suffix_length(model.tokenizer, system=system) if gram and gram_positions == "preserved" else 0

    # Layers may sit on different devices (a `device_map`): each statistic accumulates on the device its
    # layer ran on and is only copied to the CPU at the end. Inputs go where the embedding is (`cfg.device`).
    device = model.cfg.device
    groups = list(dict.fromkeys((p.lang, p.label) for p in prompts))  # the statistics' order: first appearance
    per_device: dict[torch.device, ActivationStats] = {}  # statistics of the layers that ran on each device
    grams: dict[tuple[str, int], Tensor] = {}
    n_tokens = 0

    current: dict[tuple[str, int], Tensor] = {}
    masks: dict[torch.device, tuple[Tensor, Tensor]] = {}  # this batch's masks, copied to each layer's device

    def masks_on(dev):
        if dev not in masks:
            masks[dev] = tuple(m.to(dev) for m in masks[None])
        return masks[dev]

    def make_hook(key):  # everything stays on its layer's device until the pass is over (no sync per hook)
        def hook(acts, hook):
            attention, in_gram = masks_on(acts.device)
            current[key] = reduce_positions(acts, attention, position).to(torch.float64)
            if key in gram:
                real = acts[in_gram].to(torch.float64)
                grams[key] = grams[key] + real.T @ real if key in grams else real.T @ real

        return hook

    def stop_here(acts, hook):
        raise _StopForward  # everything needed is recorded: skip the later layers and the unembedding

    fwd_hooks = [(hook_name(s, layer), make_hook((s, layer))) for s, layer in points]
    fwd_hooks.append((fwd_hooks[-1][0], stop_here))
    texts = [p.text for p in prompts]
    kept_rows: dict[tuple[str, int], Tensor] = {}
    n_batches = -(-len(prompts) // batch_size)
    batches = length_sorted_batches(
        model.tokenizer, texts, batch_size, system=system, n_ctx=model.cfg.n_ctx, names=prompt_names(prompts)
    )
    with model.hooks(fwd_hooks=fwd_hooks):
        for idx, batch in tqdm(
            batches, total=n_batches, desc="collecting activations", disable=not progress, unit="batch"
        ):
            batch = batch.to(device)
            in_gram = batch.attention_mask.bool()
            if skip:  # left padding: a harmful prompt's answer opening is the last `skip` positions of its row
                harmful = torch.tensor([prompts[i].label == "harmful" for i in idx], device=in_gram.device)
                in_gram[harmful, -skip:] = False
            masks.clear()
            masks[None] = (batch.attention_mask, in_gram)
            current.clear()
            try:
                model(batch.input_ids, **batch.model_kwargs())
            except _StopForward:
                pass
            chunk = [prompts[i] for i in idx]
            n_tokens += int(in_gram.sum())
            if stats_layers:
                if not per_device:  # first batch: group the layers by the device they ran on
                    by_dev: dict[torch.device, list[int]] = {}
                    for layer in stats_layers:
                        by_dev.setdefault(current[(stats_site, layer)].device, []).append(layer)
                    for dev, dev_layers in by_dev.items():
                        per_device[dev] = ActivationStats.empty(
                            stats_site, position, dev_layers, site_width(model, stats_site), dev
                        )
                        for group in groups:
                            per_device[dev]._group_index(group)
                for group in dict.fromkeys((p.lang, p.label) for p in chunk):
                    sel = [i for i, p in enumerate(chunk) if (p.lang, p.label) == group]
                    for st in per_device.values():
                        block = torch.stack([current[(stats_site, layer)] for layer in st.layers], dim=1)
                        st.update(group, block[sel])
            for key in rows:
                if key not in kept_rows:
                    kept_rows[key] = torch.empty(len(prompts), current[key].shape[-1], dtype=torch.float64)
                kept_rows[key][idx] = current[key].cpu()
    out_rows = ActivationRows(position, list(prompts), kept_rows, model_tag(model))
    stats = _join_layers([st.to("cpu") for st in per_device.values()]) if stats_layers else None
    grams = {key: g.cpu() for key, g in grams.items()}
    return Collection(stats, out_rows, grams, n_tokens if gram else 0, gram_positions)


def _join_layers(parts: Sequence[ActivationStats]) -> ActivationStats:
    """One set of statistics from parts over disjoint layers (same groups), in layer order."""
    first = parts[0]
    layers = sorted(layer for st in parts for layer in st.layers)
    where = {layer: (st, st.layers.index(layer)) for st in parts for layer in st.layers}
    mean = torch.stack([where[layer][0].mean[:, where[layer][1]] for layer in layers], dim=1)
    m2 = torch.stack([where[layer][0].m2[:, where[layer][1]] for layer in layers], dim=1)
    return ActivationStats(first.site, first.position, layers, list(first.groups), first.count.clone(), mean, m2)


def merge_stats(parts: Sequence[ActivationStats]) -> ActivationStats:
    """The statistics of all parts' prompts together: `ActivationStats.merge` from left to right."""
    parts = as_records("parts", parts, ActivationStats, ActivationError)
    out = parts[0]
    for st in parts[1:]:
        out = out.merge(st)
    return out


def merge_collections(parts: Sequence[Collection]) -> Collection:
    """One `Collection` from collections over disjoint prompt sets (shards) with the same settings.

    Statistics merge exactly (Chan et al.), Gram matrices and token counts add, and rows are concatenated in
    the parts' order (their `prompts` likewise): collecting shards and merging equals one pass over all prompts.
    """
    parts = as_records("parts", parts, Collection, ActivationError)
    first = parts[0]
    for c in parts[1:]:
        if c.gram_positions != first.gram_positions or set(c.gram) != set(first.gram):
            raise ValueError("merge_collections: the parts collected different Gram matrices")
        if set(c.rows.rows) != set(first.rows.rows) or c.rows.position != first.rows.position:
            raise ValueError("merge_collections: the parts collected different rows")
        if (c.stats is None) != (first.stats is None):
            raise ValueError("merge_collections: some parts have statistics and others not")
    prompts = [p for c in parts for p in c.rows.prompts]
    _rows_key(prompts)
    rows = {key: torch.cat([c.rows.rows[key] for c in parts]) for key in first.rows.rows}
    grams = {key: sum((c.gram[key] for c in parts[1:]), first.gram[key].clone()) for key in first.gram}
    stats = merge_stats([c.stats for c in parts]) if first.stats is not None else None
    return Collection(
        stats,
        ActivationRows(first.rows.position, prompts, rows),
        grams,
        sum(c.n_tokens for c in parts),
        first.gram_positions,
    )
