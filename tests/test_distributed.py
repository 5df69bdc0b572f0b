"""Sharded collection: the statistics merge exactly, and 2 gloo processes equal one process."""

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import safety_neurons as sn
from safety_neurons.distributed import shard

from conftest import make_prompts, tiny_hf_model, tiny_tokenizer


def _stats_of(blocks: list[tuple[tuple[str, str], np.ndarray]], layers, width) -> sn.ActivationStats:
    st = sn.ActivationStats.empty("act", "last", layers, width)
    for group, x in blocks:
        st.update(group, torch.from_numpy(x))
    return st


def test_merge_equals_numpy_over_uneven_shards_and_a_shard_without_a_group():
    rng = np.random.default_rng(0)
    layers, width = [0, 2, 5], 7
    groups = [("en", "harmful"), ("en", "harmless"), ("zh", "harmful")]
    # shard 0: all three groups in uneven blocks; shard 1: no zh/harmful; shard 2: one row of one group
    plan = [
        [(groups[0], 5), (groups[1], 1), (groups[2], 9), (groups[0], 3)],
        [(groups[1], 4), (groups[0], 11)],
        [(groups[2], 1)],
    ]
    shards, everything = [], {g: [] for g in groups}
    for blocks in plan:
        data = [(g, rng.normal(3.0, 2.0, size=(n, len(layers), width))) for g, n in blocks]
        for g, x in data:
            everything[g].append(x)
        shards.append(_stats_of(data, layers, width))
    merged = sn.merge_stats(shards)
    assert merged.groups == [groups[0], groups[1], groups[2]]
    for g in groups:
        x = np.concatenate(everything[g])
        assert merged.group_count(*g) == len(x)
        np.testing.assert_allclose(merged.group_mean(*g).numpy(), x.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(merged.group_var(*g).numpy(), x.var(0, ddof=1), rtol=1e-12, atol=1e-12)
    # the other order gives the same numbers (groups in first-appearance order of that order)
    other = sn.merge_stats(shards[::-1])
    for g in groups:
        torch.testing.assert_close(other.group_var(*g), merged.group_var(*g), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="cannot merge"):
        merged.merge(sn.ActivationStats.empty("gate", "last", layers, width))


def test_shards_cover_every_prompt_once():
    items = list(range(11))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(x for p in parts for x in p) == items and [len(p) for p in parts] == [4, 4, 3]
    with pytest.raises(ValueError, match="rank 3"):
        shard(items, 3, 3)


def _tiny():
    """The tiny Qwen2 fixture model, the same (seeded) in every process."""
    tok = tiny_tokenizer()
    return sn.bridge_from_hf(tiny_hf_model("qwen2", len(tok)), tok, name="tiny-qwen2")


def _prompts():
    # en and zh in both labels, plus one vi harmful prompt that only one rank's shard holds
    return make_prompts(5) + [sn.Prompt("harmful-0", "vi", "harmful", "w1 w2 w3")]


# One prompt a forward pass: each prompt's float32 activations are then bit-identical in one process and in
# two, and what remains is the float64 round-off of the merge. (A float64 model would allow padded batches,
# but the bridge's padded float64 forward gives NaN at layer 1 here.)
COLLECT = dict(
    rows_at=[("act", 1), ("resid", 1)], gram_at=[("act", 1)], gram_positions="preserved", batch_size=1, progress=False
)
# the edit uses every prompt collected (zh and the one vi prompt), so the sharded Gram matrix is the one it uses
SPEC = sn.EditSpec.linear(layers=1, refusal_boost=0.0, preserve=["harmless"], rank=4, ridge=1e-2)


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = _tiny()
        prompts = _prompts()
        c = sn.collect_sharded(model, prompts, **COLLECT)
        result = {
            "stats": (c.stats.groups, c.stats.count, c.stats.mean, c.stats.m2),
            "rows": c.rows.rows,
            "ids": [(p.lang, p.id) for p in c.rows.prompts],
            "gram": c.gram,
            "n_tokens": c.n_tokens,
        }
        if sn.distributed.is_main():
            edit = sn.fit_edit(model, prompts, SPEC, rows=c, progress=False)
            result["delta"] = [e.delta for e in edit.edits]
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)

    model = _tiny()
    prompts = _prompts()
    one = sn.collect_activations(model, prompts, **COLLECT)
    edit = sn.fit_edit(model, prompts, SPEC, rows=one, progress=False)
    assert edit.edits[0].delta.norm() > 0
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    tight = dict(rtol=1e-10, atol=1e-12)
    for r in (r0, r1):  # every rank ends with the whole collection
        groups, count, mean, m2 = r["stats"]
        assert groups == one.stats.groups and ("vi", "harmful") in groups
        assert torch.equal(count, one.stats.count)
        torch.testing.assert_close(mean, one.stats.mean, **tight)
        torch.testing.assert_close(m2, one.stats.m2, **tight)
        assert r["ids"] == [(p.lang, p.id) for p in prompts]
        assert set(r["rows"]) == set(one.rows.rows)
        for key, x in one.rows.rows.items():
            torch.testing.assert_close(r["rows"][key], x, **tight)
        torch.testing.assert_close(r["gram"][("act", 1)], one.gram[("act", 1)], **tight)
        assert r["n_tokens"] == one.n_tokens
    assert "delta" not in r1  # only rank 0 solves
    for d, e in zip(r0["delta"], edit.edits, strict=True):
        torch.testing.assert_close(d, e.delta, rtol=1e-8, atol=1e-10)


def test_merged_shard_collections_equal_one_pass(tiny):
    bridge, _, _ = tiny
    prompts = make_prompts(4)
    kw = dict(rows_at=[("mlp_in", 2)], gram_at=[("gate", 0)], batch_size=len(prompts), progress=False)
    parts = [sn.collect_activations(bridge, shard(prompts, r, 3), **kw) for r in range(3)]
    merged = sn.merge_collections(parts)
    # batch of one each time, so the float32 forward passes see exactly the same inputs
    one = sn.collect_activations(bridge, [p for r in range(3) for p in shard(prompts, r, 3)], **{**kw, "batch_size": 1})
    assert merged.n_tokens == one.n_tokens and merged.rows.prompts == one.rows.prompts
    torch.testing.assert_close(merged.rows.rows[("mlp_in", 2)], one.rows.rows[("mlp_in", 2)], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged.gram[("gate", 0)], one.gram[("gate", 0)], rtol=1e-5, atol=1e-4)
    for g in one.stats.groups:
        torch.testing.assert_close(merged.stats.group_mean(*g), one.stats.group_mean(*g), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="duplicate"):
        sn.merge_collections([parts[0], parts[0]])
