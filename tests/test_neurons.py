"""Safety-neuron ranking: planted neurons are recovered exactly; formulas match numpy; artifacts round-trip."""

import numpy as np
import pytest
import torch

import safety_neurons as sn
from safety_neurons.activations import ActivationStats

from conftest import make_prompts


def planted_stats(planted: dict[str, dict[int, list[int]]], layers=3, width=200, n=40, seed=0) -> ActivationStats:
    """Streamed stats of random rows where the planted neurons fire +3 on harmful prompts."""
    g = torch.Generator().manual_seed(seed)
    stats = ActivationStats.empty("act", "last", list(range(layers)), width)
    for lang, per_layer in planted.items():
        for label in ("harmful", "harmless"):
            rows = torch.randn(n, layers, width, generator=g, dtype=torch.float64) * 0.3
            if label == "harmful":
                for layer, idx in per_layer.items():
                    rows[:, layer, idx] += 3.0
            for chunk in rows.split(7):  # streamed in uneven blocks
                stats.update((lang, label), chunk)
    return stats


PLANTED = {"en": {0: [3, 50, 170], 2: [9]}, "bn": {0: [3, 77], 1: [120, 121, 122]}}


def test_planted_neurons_are_recovered_exactly():
    ranking = sn.rank_neurons(planted_stats(PLANTED), tau_mag=4.0, tau_stat=4.0)
    for lang, per_layer in PLANTED.items():
        for layer in range(3):
            assert sorted(ranking.neurons(lang, layer).tolist()) == sorted(per_layer.get(layer, []))


def test_negative_shifts_only_when_asked():
    stats = planted_stats({"en": {0: [5]}})
    stats.mean[stats.index("en", "harmful"), 1, 40] -= 5.0  # a neuron that fires *less* on harmful input
    pos = sn.rank_neurons(stats, tau_mag=4.0, tau_stat=4.0)
    both = sn.rank_neurons(stats, tau_mag=4.0, tau_stat=4.0, positive_only=False)
    assert pos.neurons("en", 1).tolist() == []
    assert both.neurons("en", 1).tolist() == [40]


def test_scores_match_the_formulas():
    stats = planted_stats(PLANTED)
    r = sn.rank_neurons(stats)
    mh, ms = stats.group_mean("en", "harmful").numpy(), stats.group_mean("en", "harmless").numpy()
    vh, vs = stats.group_var("en", "harmful").numpy(), stats.group_var("en", "harmless").numpy()
    delta = mh - ms
    z = (delta - delta.mean(-1, keepdims=True)) / delta.std(-1, ddof=1, keepdims=True)
    pooled = np.sqrt((39 * vh + 39 * vs) / 78)
    np.testing.assert_allclose(r.delta[0].numpy(), delta)
    np.testing.assert_allclose(r.z[0].numpy(), z, rtol=1e-10)
    np.testing.assert_allclose(r.d[0].numpy(), delta / pooled, rtol=1e-10)
    expected = ((z > 2) | (delta / pooled > 1)) & (delta > 0)
    assert torch.equal(r.selected[0], torch.from_numpy(expected))


def test_top_k_and_top_frac():
    r = sn.rank_neurons(planted_stats(PLANTED), top_k=5)
    assert (r.counts() <= 5).all() and r.counts().max() == 5
    r = sn.rank_neurons(planted_stats(PLANTED), top_frac=0.01)
    assert r.counts().max() == 2
    with pytest.raises(ValueError, match="top_k"):
        sn.rank_neurons(planted_stats(PLANTED), top_k=1000)


def test_jaccard():
    r = sn.rank_neurons(planted_stats(PLANTED), tau_mag=4.0, tau_stat=4.0)
    j0 = r.jaccard(layer=0)
    assert j0[0, 1] == pytest.approx(1 / 4)  # {3,50,170} vs {3,77}
    assert torch.allclose(j0.diag(), torch.ones(2, dtype=torch.float64))
    j_all = r.jaccard()
    assert j_all[0, 1] == pytest.approx(1 / 8)  # (0,3) shared among 8 (layer, neuron) pairs
    assert torch.equal(j_all, j_all.T)


def test_save_load_and_repr(tmp_path):
    r = sn.rank_neurons(planted_stats(PLANTED), tau_mag=4.0, tau_stat=4.0)
    loaded = sn.SafetyNeurons.load(r.save(tmp_path / "r"))
    assert torch.equal(loaded.selected, r.selected) and torch.equal(loaded.z, r.z)
    assert loaded.settings == r.settings and loaded.langs == r.langs
    assert "en:4" in repr(r) and "bn:5" in repr(r)
    assert r.table().splitlines()[0].split() == ["layer", "en", "bn"]


def test_bad_input():
    stats = planted_stats(PLANTED)
    with pytest.raises(ValueError, match="unknown language"):
        sn.rank_neurons(stats, langs=["xx"])
    with pytest.raises(sn.NeuronsError, match="no statistics for language 'zh'"):
        sn.rank_neurons(stats, langs=["zh"])


def test_attribution_ranking_runs_and_matches_a_manual_gradient(tiny):
    bridge, hf, _ = tiny
    prompts = make_prompts(3)
    r = sn.rank_by_attribution(bridge, prompts, layers=[1], top_k=4, batch_size=2, progress=False)
    assert r.langs == ["en", "zh"] and r.counts().tolist() == [[4], [4]]
    # manual: activation × gradient at the last token for one prompt
    from safety_neurons.refusal import refusal_logprob, refusal_token_ids

    p = [q for q in prompts if q.label == "harmful" and q.lang == "en"]
    total = torch.zeros(bridge.cfg.d_mlp, dtype=torch.float64)
    for q in p:
        batch = sn.tokenize_chat(bridge.tokenizer, [q.text])
        store = {}

        def keep(a, hook):
            a.retain_grad()
            store["a"] = a
            return a

        with torch.enable_grad(), bridge.hooks(fwd_hooks=[("blocks.1.mlp.hook_post", keep)]):
            logits = bridge(batch.input_ids, **batch.model_kwargs())
            refusal_logprob(logits[:, -1], refusal_token_ids(bridge.tokenizer)).sum().backward()
        total += (store["a"][0, -1] * store["a"].grad[0, -1]).double()
    assert torch.allclose(r.delta[0, 0], total / len(p), atol=1e-6)


def _ranking_of(langs, layers, sets, width=4):
    """A ranking whose selection is `sets[lang][layer]` (neuron indices), every score zero."""
    sel = torch.zeros(len(langs), len(layers), width, dtype=torch.bool)
    for i, lang in enumerate(langs):
        for j, layer in enumerate(layers):
            sel[i, j, list(sets.get(lang, {}).get(layer, []))] = True
    zeros = torch.zeros(sel.shape)
    return sn.SafetyNeurons(list(langs), list(layers), zeros, zeros, zeros, sel)


def test_overlap_with_matches_languages_and_layers_by_name():
    # the other ranking lists its languages and layers in another order, and has one of each more
    a = _ranking_of(["en", "zh", "th"], [0, 1], {"en": {0: [0, 1], 1: [2]}, "zh": {1: [0, 1, 2, 3]}})
    b = _ranking_of(
        ["zh", "en", "bn", "th"],
        [1, 0, 2],
        {"en": {1: [2, 3], 0: [1], 2: [0, 1, 2, 3]}, "zh": {1: [0], 0: [3], 2: [0]}, "bn": {0: [0]}},
    )
    # en: {(0,0), (0,1), (1,2)} vs {(0,1), (1,2), (1,3)} (layer 2 is not compared): 2 shared of 4
    # zh: {(1,0), (1,1), (1,2), (1,3)} vs {(0,3), (1,0)}: 1 shared of 5; th: both empty, the same set
    assert a.overlap_with(b) == {"en": pytest.approx(2 / 4), "zh": pytest.approx(1 / 5), "th": 1.0}
