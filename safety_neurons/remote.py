"""The same sufficient statistics through nnsight, locally or on NDIF for models nobody can host.

Optional: `pip install "safety-neurons[nnsight]"`. An nnsight model over an HF Llama / Qwen2 checkpoint
(`nnsight.LanguageModel("meta-llama/Llama-3.1-70B-Instruct")`) runs each batch in one `trace`; inside it,
the per-group means and M2 of the batch, the requested rows and Gram matrices are computed next to the
model, and only those small tensors come back. They merge into the same `Collection` that
`collect_activations` returns (Chan et al.'s merge across batches), so ranking and `fit_edit(rows=...)` work
unchanged. Remote weights cannot be changed, so an edit is evaluated as an in-trace patch of the MLP
(`edited_logits`), which equals applying it.

    remote=False     run the nnsight model here
    remote="local"   nnsight's serverless dry run: serialise the trace as for NDIF, deserialise, run here
    remote=True      send it to NDIF: needs an API key, once per machine
                     (`nnsight.CONFIG.set_default_api_key("...")`, or the NDIF_API_KEY environment variable)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .activations import (
    SITES,
    ActivationRows,
    ActivationStats,
    Collection,
    GramPositions,
    Position,
    _plan_collection,
    _rows_key,
)
from .chat import length_sorted_batches, template_suffix_length
from .prompts import Prompt

Remote = bool | Literal["local"]


def _require_nnsight():
    try:
        import nnsight
    except ImportError:
        raise ImportError(
            "the nnsight backend needs nnsight, an optional extra: pip install 'safety-neurons[nnsight]' "
            "(or pip install nnsight==0.8.1)"
        ) from None
    return nnsight


def check_remote(remote: Remote) -> None:
    """Raise a clear error before any work when `remote=True` has no NDIF key to send."""
    nnsight = _require_nnsight()
    if remote not in (False, True, "local"):
        raise ValueError(f"remote must be False, True or 'local', got {remote!r}")
    if remote is True and not (os.environ.get("NDIF_API_KEY") or nnsight.CONFIG.API.APIKEY):
        raise RuntimeError(
            "no NDIF API key: get one at https://login.ndif.us, then once per machine run "
            "nnsight.CONFIG.set_default_api_key('<key>') or set the NDIF_API_KEY environment variable"
        )
    if remote:  # the server has no safety_neurons: ship this module's helpers (`_site`) by value
        nnsight.register(sys.modules[__name__])


def _layers(lm):
    try:
        return lm.model.layers
    except AttributeError:
        raise ValueError(
            "the nnsight model has no .model.layers: only HF Llama / Qwen2 causal LMs are supported"
        ) from None


def _site(block, site: str):
    """The nnsight envoy value of `site` in one decoder layer (same points as the bridge's hooks)."""
    if site == "mlp_in":
        return block.post_attention_layernorm.output
    if site == "gate":
        return block.mlp.gate_proj.output
    if site == "up":
        return block.mlp.up_proj.output
    if site == "act":
        return block.mlp.down_proj.input
    if site == "resid":
        out = block.output
        return out[0] if isinstance(out, tuple) else out
    raise ValueError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")


@torch.no_grad()
def collect_nnsight(
    lm,
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
    remote: Remote = False,
    progress: bool = True,
) -> Collection:
    """`collect_activations` through an nnsight model (`remote` as in the module docstring)."""
    check_remote(remote)
    if len(prompts) == 0:
        raise ValueError("no prompts given: the prompt list is empty")
    _rows_key(prompts)
    blocks = _layers(lm)
    stats_layers, rows, gram, points = _plan_collection(
        len(blocks),
        stats_site=stats_site,
        stats_layers=stats_layers,
        rows_at=rows_at,
        gram_at=gram_at,
        gram_positions=gram_positions,
        position=position,
    )
    tok = lm.tokenizer
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    skip = template_suffix_length(tok, system=system) if gram and gram_positions == "preserved" else 0
    groups = list(dict.fromkeys((p.lang, p.label) for p in prompts))
    stats = None
    kept: dict[tuple[str, int], Tensor] = {}
    grams: dict[tuple[str, int], Tensor] = {}
    n_tokens = 0
    batches = length_sorted_batches(tok, [p.text for p in prompts], batch_size, system=system)
    for idx, batch in tqdm(
        batches, total=-(-len(prompts) // batch_size), desc="collecting (nnsight)", disable=not progress, unit="batch"
    ):
        chunk = [prompts[i] for i in idx]
        attention = batch.attention_mask
        in_gram = attention.bool()
        if skip:
            harmful = torch.tensor([p.label == "harmful" for p in chunk])
            in_gram[harmful, -skip:] = False
        weights = attention.to(torch.float64).unsqueeze(-1)
        batch_groups = list(dict.fromkeys((p.lang, p.label) for p in chunk))
        sel = [[i for i, p in enumerate(chunk) if (p.lang, p.label) == g] for g in batch_groups]
        want_stats = {(stats_site, x) for x in stats_layers}
        saved: dict = {}
        inputs = {"input_ids": batch.input_ids, "attention_mask": attention, "position_ids": batch.position_ids}
        # The block below runs next to the model (on NDIF when remote): only torch and the locals above.
        with lm.trace(inputs, remote=remote):
            for key in points:
                acts = _site(blocks[key[1]], key[0])
                if position == "last":
                    v = acts[:, -1].to(torch.float64)
                else:
                    w = weights.to(acts.device)
                    v = (acts.to(torch.float64) * w).sum(1) / w.sum(1).clamp(min=1)
                if key in want_stats:
                    means = torch.stack([v[s].mean(0) for s in sel])
                    m2 = torch.stack([((v[s] - v[s].mean(0)) ** 2).sum(0) for s in sel])
                    saved[("stats",) + key] = torch.stack([means, m2]).cpu().save()
                if key in rows:
                    saved[("rows",) + key] = v.cpu().save()
                if key in gram:
                    real = acts[in_gram.to(acts.device)].to(torch.float64)
                    saved[("gram",) + key] = (real.T @ real).cpu().save()
        n_tokens += int(in_gram.sum())
        if stats_layers:
            block = torch.stack([saved[("stats", stats_site, x)] for x in stats_layers], dim=2)  # 2 group layer d
            part = ActivationStats(
                stats_site,
                position,
                stats_layers,
                batch_groups,
                torch.tensor([len(s) for s in sel]),
                block[0],
                block[1],
            )
            if stats is None:
                stats = ActivationStats.empty(stats_site, position, stats_layers, block.shape[-1]).reindexed(groups)
            stats = stats.merge(part)
        for key in rows:
            x = saved[("rows",) + key]
            if key not in kept:
                kept[key] = torch.empty(len(prompts), x.shape[-1], dtype=torch.float64)
            kept[key][idx] = x
        for key in gram:
            g = saved[("gram",) + key]
            grams[key] = grams[key] + g if key in grams else g
    return Collection(
        stats, ActivationRows(position, list(prompts), kept), grams, n_tokens if gram else 0, gram_positions
    )


@torch.no_grad()
def edited_logits(
    lm,
    edit,
    prompts: Sequence[Prompt] | Sequence[str],
    *,
    batch_size: int = 16,
    system: str | None = None,
    remote: Remote = False,
) -> Float[Tensor, "n vocab"]:
    """Next-token logits at the last prompt token with `edit` patched into the MLPs inside the trace.

    gate / up edits add x·ΔW to the chosen columns of gate_proj / up_proj's output; a w_out edit adds
    a_S·ΔW to down_proj's output: the same arithmetic as changing the weights, without changing them.
    """
    check_remote(remote)
    tok = lm.tokenizer
    blocks = _layers(lm)
    texts = [p.text if isinstance(p, Prompt) else p for p in prompts]
    patches = sorted(((e.layer, e.site, e.neurons.clone(), e.delta.clone()) for e in edit.edits), key=lambda t: t[0])
    out = None
    for idx, batch in length_sorted_batches(tok, texts, batch_size, system=system):
        inputs = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "position_ids": batch.position_ids,
        }
        with lm.trace(inputs, remote=remote):
            for layer, site, neurons, delta in patches:
                mlp = blocks[layer].mlp
                if site == "w_out":
                    a = mlp.down_proj.input
                    add = a[..., neurons.to(a.device)] @ delta.to(a.device, a.dtype)
                    mlp.down_proj.output = mlp.down_proj.output + add
                else:
                    x = blocks[layer].post_attention_layernorm.output
                    proj = mlp.gate_proj if site == "gate" else mlp.up_proj
                    y = proj.output.clone()
                    cols = neurons.to(y.device)
                    y[..., cols] = y[..., cols] + x @ delta.to(x.device, x.dtype)
                    proj.output = y
            logits = lm.lm_head.output[:, -1].float().cpu().save()
        if out is None:
            out = torch.empty(len(texts), logits.shape[-1])
        out[idx] = logits
    return out
