"""Activation collection: hook values equal hand computation, padding is invisible, stats are exact."""

import numpy as np
import pytest
import torch

import safety_neurons as sn

from conftest import make_prompts


def test_hook_post_equals_silu_gate_times_up_from_hf_weights(tiny):
    bridge, hf, _ = tiny
    prompts = make_prompts(3)
    c = sn.collect_activations(
        bridge, prompts, rows_at=[("mlp_in", 1), ("act", 1), ("gate", 1), ("up", 1)], batch_size=4, progress=False
    )
    x = c.rows.matrix("mlp_in", 1).float()
    mlp = hf.model.layers[1].mlp
    gate = x @ mlp.gate_proj.weight.T
    up = x @ mlp.up_proj.weight.T
    act = torch.nn.functional.silu(gate) * up
    assert torch.allclose(c.rows.matrix("gate", 1).float(), gate, atol=1e-5)
    assert torch.allclose(c.rows.matrix("up", 1).float(), up, atol=1e-5)
    assert torch.allclose(c.rows.matrix("act", 1).float(), act, atol=1e-5)


@pytest.mark.parametrize("position", ["last", "mean"])
def test_padded_batch_equals_one_by_one(tiny, position):
    bridge, _, _ = tiny
    prompts = make_prompts(4)
    batched = sn.collect_activations(
        bridge, prompts, rows_at=[("act", 2), ("mlp_in", 0)], position=position, batch_size=len(prompts), progress=False
    )
    single = sn.collect_activations(
        bridge, prompts, rows_at=[("act", 2), ("mlp_in", 0)], position=position, batch_size=1, progress=False
    )
    lengths = {len(p.text.split()) for p in prompts}
    assert len(lengths) > 1  # the batch really is padded
    for key in [("act", 2), ("mlp_in", 0)]:
        assert torch.allclose(batched.rows.rows[key], single.rows.rows[key], atol=1e-5, rtol=1e-5)
    assert torch.allclose(batched.stats.mean, single.stats.mean, atol=1e-5)


def test_statistics_equal_numpy(tiny):
    bridge, _, _ = tiny
    prompts = make_prompts(7, langs=("en", "vi", "bn"))
    c = sn.collect_activations(
        bridge, prompts, stats_site="act", rows_at=[("act", layer) for layer in range(3)], batch_size=3, progress=False
    )
    for lang in ("en", "vi", "bn"):
        for label in ("harmful", "harmless"):
            sel = [i for i, p in enumerate(prompts) if (p.lang, p.label) == (lang, label)]
            for layer in range(3):
                rows = c.rows.matrix("act", layer)[sel].numpy()
                assert c.stats.group_count(lang, label) == len(sel)
                np.testing.assert_allclose(c.stats.group_mean(lang, label)[layer], rows.mean(0), atol=1e-12)
                np.testing.assert_allclose(c.stats.group_var(lang, label)[layer], rows.var(0, ddof=1), atol=1e-10)
    assert c.stats.mean.dtype == torch.float64


def test_rows_line_up_by_id_across_languages(tiny):
    bridge, _, _ = tiny
    prompts = make_prompts(3)
    c = sn.collect_activations(bridge, prompts[::-1], stats_site=None, rows_at=[("mlp_in", 1)], progress=False)
    ids = ["harmful-0", "harmful-2"]
    zh = c.rows.matrix("mlp_in", 1, lang="zh", ids=ids)
    again = sn.collect_activations(
        bridge,
        [p for p in prompts if p.lang == "zh" and p.id in ids],
        stats_site=None,
        rows_at=[("mlp_in", 1)],
        progress=False,
    )
    assert torch.allclose(zh, again.rows.matrix("mlp_in", 1, lang="zh", ids=ids), atol=1e-5)
    with pytest.raises(KeyError, match="not collected"):
        c.rows.matrix("mlp_in", 1, lang="zh", ids=["nope"])


def test_only_requested_hooks_are_registered(tiny, monkeypatch):
    bridge, _, _ = tiny
    seen = []
    original = bridge.hooks

    def spy(fwd_hooks=(), **kw):
        seen.extend(name for name, _ in fwd_hooks)
        return original(fwd_hooks=fwd_hooks, **kw)

    monkeypatch.setattr(bridge, "hooks", spy)
    sn.collect_activations(bridge, make_prompts(1), stats_layers=[0, 2], rows_at=[("mlp_in", 1)], progress=False)
    assert sorted(set(seen)) == ["blocks.0.mlp.hook_post", "blocks.1.ln2.hook_out", "blocks.2.mlp.hook_post"]


def test_stats_save_load_round_trip(tiny, tmp_path):
    bridge, _, _ = tiny
    c = sn.collect_activations(bridge, make_prompts(2), progress=False)
    loaded = sn.ActivationStats.load(c.stats.save(tmp_path / "stats"))
    assert loaded.groups == c.stats.groups and loaded.layers == c.stats.layers
    assert torch.equal(loaded.mean, c.stats.mean) and torch.equal(loaded.m2, c.stats.m2)


def test_bad_input(tiny):
    bridge, _, _ = tiny
    with pytest.raises(ValueError, match="empty"):
        sn.collect_activations(bridge, [], progress=False)
    with pytest.raises(ValueError, match="out of range"):
        sn.collect_activations(bridge, make_prompts(1), stats_layers=[7], progress=False)
    with pytest.raises(ValueError, match="unknown site"):
        sn.collect_activations(bridge, make_prompts(1), rows_at=[("neurons", 0)], progress=False)
    with pytest.raises(ValueError, match="position"):
        sn.collect_activations(bridge, make_prompts(1), position="first", progress=False)
    dup = make_prompts(1)
    with pytest.raises(ValueError, match="duplicate"):
        sn.collect_activations(bridge, dup + dup[:1], progress=False)


def test_preserved_gram_leaves_out_the_answer_opening_of_harmful_prompts(tiny):
    bridge, _, tok = tiny
    prompts = make_prompts(2)[2:7]  # harmful and harmless
    n = sn.chat.template_suffix_length(tok)
    key = ("act", 1)
    every = sn.collect_activations(bridge, prompts, stats_site=None, gram_at=[key], batch_size=2, progress=False)
    message = sn.collect_activations(
        bridge, prompts, stats_site=None, gram_at=[key], gram_positions="preserved", batch_size=2, progress=False
    )
    expect_all, expect_msg, tokens = (
        torch.zeros(48, 48, dtype=torch.float64),
        torch.zeros(48, 48, dtype=torch.float64),
        0,
    )
    for p in prompts:  # one prompt at a time, no padding
        seen = {}

        def keep(a, hook):
            seen["a"] = a[0].double()

        batch = sn.tokenize_chat(tok, [p.text])
        with torch.no_grad(), bridge.hooks(fwd_hooks=[("blocks.1.mlp.hook_post", keep)]):
            bridge(batch.input_ids, **batch.model_kwargs())
        expect_all += seen["a"].T @ seen["a"]
        kept = seen["a"][:-n] if p.label == "harmful" else seen["a"]
        expect_msg += kept.T @ kept
        tokens += len(kept)
    assert torch.allclose(every.gram[key], expect_all, atol=1e-6)
    assert torch.allclose(message.gram[key], expect_msg, atol=1e-6)
    assert {p.label for p in prompts} == {"harmful", "harmless"}
    assert message.n_tokens == tokens and message.gram_positions == "preserved"
    with pytest.raises(ValueError, match="gram_positions"):
        sn.collect_activations(bridge, prompts, stats_site=None, gram_at=[key], gram_positions="last", progress=False)


def test_rows_without_statistics(tiny):
    bridge, _, _ = tiny
    c = sn.collect_activations(bridge, make_prompts(2), stats_layers=[], rows_at=[("act", 1)], progress=False)
    assert c.stats is None and c.rows.rows[("act", 1)].shape == (8, bridge.cfg.d_mlp)
    with pytest.raises(ValueError, match="rows_at must be a list of"):
        sn.collect_activations(bridge, make_prompts(2), rows_at="act", progress=False)
