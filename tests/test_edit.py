"""The weight edit on tiny models: it does what the closed form predicts, and nothing else, undoably."""

import pytest
import torch

import safety_neurons as sn

from conftest import make_prompts

S = [1, 4, 9, 16, 25, 36]


def rows(bridge, prompts, site, layer):
    return sn.collect_activations(bridge, prompts, stats_site=None, rows_at=[(site, layer)], progress=False).rows


def all_params(model):
    return {k: v.detach().clone() for k, v in sn.hf_state_dict(model).items()}


@pytest.fixture
def prompts():
    return make_prompts(8, langs=("en", "zh", "bn"))


def test_gate_edit_moves_preactivations_to_the_predicted_values(tiny, prompts):
    bridge, hf, _ = tiny
    edit = sn.fit_edit(bridge, prompts, sn.EditSpec.paper(layers=1, neurons={1: S}, rank=4), progress=False)
    low = [p for p in prompts if p.label == "harmful" and p.lang != "en"]
    x = rows(bridge, low, "mlp_in", 1).matrix("mlp_in", 1)
    w_s = bridge.blocks[1].mlp.W_gate.detach().double()[:, S]
    predicted = x @ (w_s + edit.edits[0].delta)
    before = rows(bridge, low, "gate", 1).matrix("gate", 1)[:, S]
    with edit.applied(bridge):
        after = rows(bridge, low, "gate", 1).matrix("gate", 1)[:, S]
        outside = rows(bridge, low, "gate", 1).matrix("gate", 1)
    assert torch.allclose(after, predicted, atol=1e-4)
    assert not torch.allclose(after, before, atol=1e-3)
    untouched = [j for j in range(bridge.cfg.d_mlp) if j not in S]
    full_before = rows(bridge, low, "gate", 1).matrix("gate", 1)
    assert torch.equal(outside[:, untouched], full_before[:, untouched])  # only S moved
    # and they moved toward the English translations' values
    piv = [p for p in prompts if p.label == "harmful" and p.lang == "en"]
    target = rows(bridge, piv, "gate", 1).matrix("gate", 1, lang="en", ids=[p.id for p in low])[:, S]
    assert (after - target).norm() < 0.8 * (before - target).norm()


def test_w_out_fold_equals_the_map_applied_by_a_hook(tiny, prompts):
    bridge, _, _ = tiny
    edit = sn.fit_edit(
        bridge, prompts, sn.EditSpec.paper(layers=2, neurons={2: S}, site="w_out", rank=3), progress=False
    )
    e = edit.edits[0]
    batch = sn.tokenize_chat(bridge.tokenizer, [p.text for p in prompts[:6]])
    idx = e.neurons

    def mapped(acts, hook):
        acts = acts.clone()
        a_s = acts[..., idx]
        acts[..., idx] = (a_s.double() + a_s.double() @ e.neuron_map).to(acts.dtype)
        return acts

    with torch.no_grad():
        with bridge.hooks(fwd_hooks=[("blocks.2.mlp.hook_post", mapped)]):
            by_hook = bridge(batch.input_ids, **batch.model_kwargs())
        with edit.applied(bridge):
            by_fold = bridge(batch.input_ids, **batch.model_kwargs())
        plain = bridge(batch.input_ids, **batch.model_kwargs())
    assert torch.allclose(by_fold, by_hook, atol=1e-4)
    assert not torch.allclose(by_fold, plain, atol=1e-3)


@pytest.mark.parametrize("site", ["gate", "up", "w_out"])
def test_revert_is_bit_exact_and_apply_touches_only_the_site(tiny, prompts, site):
    bridge, _, _ = tiny
    before = all_params(bridge)
    edit = sn.fit_edit(
        bridge, prompts, sn.EditSpec.paper(layers=[0, 2], neurons={0: S, 2: S[:3]}, site=site, rank=2), progress=False
    )
    assert all(torch.equal(v, before[k]) for k, v in all_params(bridge).items())  # fitting leaves no trace
    edit.apply(bridge)
    changed = {k for k, v in all_params(bridge).items() if not torch.equal(v, before[k])}
    hf_name = {"gate": "gate_proj", "up": "up_proj", "w_out": "down_proj"}[site]
    assert changed and all(hf_name in k and (".0." in k or ".2." in k) for k in changed)
    edit.revert(bridge)
    assert all(torch.equal(v, before[k]) for k, v in all_params(bridge).items())


def test_a_scaled_edit_moves_the_weights_that_share_of_the_way_and_reverts_exactly(tiny, prompts):
    bridge, _, _ = tiny
    before = all_params(bridge)
    spec = sn.EditSpec.paper(layers=2, neurons={2: S}, site="w_out", rank=3)
    edit = sn.fit_edit(bridge, prompts, spec, progress=False)
    with edit.applied(bridge):
        full = all_params(bridge)
    half = edit.scaled(0.5)
    assert half.uid != edit.uid and half.settings["scale"] == 0.5 and half.scaled(2.0).settings["scale"] == 1.0
    assert torch.equal(half.edits[0].neuron_map, 0.5 * edit.edits[0].neuron_map)
    with half.applied(bridge):  # the fingerprint of the unedited slice still matches
        mid = all_params(bridge)
    for k in before:  # every weight halfway between the unedited and the fully edited model
        assert torch.allclose(mid[k], (before[k] + full[k]) / 2, atol=1e-6)
    assert any(not torch.equal(mid[k], before[k]) for k in before)
    assert all(torch.equal(v, before[k]) for k, v in all_params(bridge).items())  # reverted bit for bit
    with edit.scaled(0.0).applied(bridge):
        assert all(torch.equal(v, before[k]) for k, v in all_params(bridge).items())
    with pytest.raises(sn.EditError, match="strength must be finite"):
        edit.scaled(float("nan"))
    switch = sn.WeightEdit(edit.edits, {"kind": "harm_switch"})
    with pytest.raises(sn.EditError, match="not additive"):
        switch.scaled(0.5)


def test_apply_twice_and_wrong_model_are_refused(tiny, prompts):
    bridge, hf, _ = tiny
    edit = sn.fit_edit(bridge, prompts, sn.EditSpec.paper(layers=1, neurons={1: S}, rank=2), progress=False)
    with edit.applied(bridge):
        with pytest.raises(sn.EditError, match="already applied"):
            edit.apply(bridge)
    other_tok = bridge.tokenizer
    from conftest import tiny_hf_model

    other = sn.bridge_from_hf(
        tiny_hf_model("qwen2" if "Qwen" in type(hf).__name__ else "llama", len(other_tok), seed=1), other_tok
    )
    with pytest.raises(sn.EditError, match="fingerprint"):
        edit.apply(other)
    with pytest.raises(sn.EditError, match="not applied"):
        edit.revert(bridge)


def test_save_load_apply_reproduces_logits_and_hf_export(tiny, prompts, tmp_path):
    from transformers import AutoModelForCausalLM

    bridge, _, _ = tiny
    edit = sn.fit_edit(bridge, prompts, sn.EditSpec.paper(layers=[1, 2], neurons={1: S, 2: S}, rank=3), progress=False)
    batch = sn.tokenize_chat(bridge.tokenizer, [p.text for p in prompts[:5]])
    with torch.no_grad(), edit.applied(bridge):
        expected = bridge(batch.input_ids, **batch.model_kwargs())
    loaded = sn.WeightEdit.load(edit.save(tmp_path / "edit"))
    assert loaded.uid == edit.uid and loaded.settings == edit.settings and loaded.fingerprint == edit.fingerprint
    with torch.no_grad(), loaded.applied(bridge):
        assert torch.equal(bridge(batch.input_ids, **batch.model_kwargs()), expected)
    out = edit.export(bridge, tmp_path / "hf")
    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    with torch.no_grad():
        got = reloaded(batch.input_ids, **batch.model_kwargs()).logits
    mask = batch.attention_mask.bool()
    assert torch.allclose(got[mask], expected[mask], atol=1e-5)
    assert not edit.is_applied(bridge)


def test_multi_layer_fits_later_layers_on_edited_inputs(tiny, prompts):
    bridge, _, _ = tiny
    edit = sn.fit_edit(bridge, prompts, sn.EditSpec.paper(layers=[0, 1], neurons={0: S, 1: S}, rank=3), progress=False)
    low = [p for p in prompts if p.label == "harmful" and p.lang != "en"]
    first = sn.WeightEdit([edit.edits[0]])
    with first.applied(bridge):
        x1 = rows(bridge, low, "mlp_in", 1).matrix("mlp_in", 1)  # layer-1 inputs with layer 0 edited
    w_s = bridge.blocks[1].mlp.W_gate.detach().double()[:, S]
    with edit.applied(bridge):
        got = rows(bridge, low, "gate", 1).matrix("gate", 1)[:, S]
    assert torch.allclose(got, x1 @ (w_s + edit.edits[1].delta), atol=1e-4)


def test_nullspace_edit_leaves_preserved_rows_alone(tiny, prompts):
    bridge, _, _ = tiny
    safe = [p for p in prompts if p.label == "harmless" and p.lang == "en"]
    few = [p for p in prompts if p.label == "harmful"] + safe  # 8 preserved rows in d_model = 32
    spec = sn.EditSpec.paper(layers=1, neurons={1: S}, rank=3, method="nullspace", null_threshold=1e-8)
    edit = sn.fit_edit(bridge, few, spec, progress=False)
    assert edit.edits[0].solution["null_dim"] == bridge.cfg.d_model - len(safe)
    before = rows(bridge, safe, "gate", 1).matrix("gate", 1)
    with edit.applied(bridge):
        after = rows(bridge, safe, "gate", 1).matrix("gate", 1)
    assert torch.allclose(after, before, atol=1e-5)


def test_clear_errors(tiny, prompts):
    bridge, _, _ = tiny
    spec = sn.EditSpec.paper(layers=1, neurons={1: S})
    with pytest.raises(sn.EditError, match="empty neuron set"):
        spec.replace(neurons={1: []})
    with pytest.raises(sn.EditError, match="mismatched parallel sets"):
        sn.fit_edit(bridge, [p for p in prompts if p.lang != "en"], spec, progress=False)
    with pytest.raises(sn.EditError, match="unknown edit site"):
        spec.replace(site="attn")
    with pytest.raises(sn.EditError, match="out of range"):
        sn.fit_edit(bridge, prompts, spec.replace(layers=9, neurons={9: S}), progress=False)
    with pytest.raises(ValueError, match="rank"):
        spec.replace(rank=0)
    capped = sn.fit_edit(bridge, prompts, spec.replace(rank=50), progress=False)  # capped, documented
    assert capped.edits[0].solution["rank"] <= len(S)
    with pytest.raises(ValueError, match="unknown language"):
        spec.replace(langs=["xx"])
    with pytest.raises(sn.EditError, match="harmless"):
        sn.fit_edit(bridge, [p for p in prompts if p.label == "harmful"], spec, progress=False)


def test_neuron_scaling_and_refusal_direction(tiny, prompts):
    bridge, _, _ = tiny
    batch = sn.tokenize_chat(bridge.tokenizer, [p.text for p in prompts[:4]])
    with torch.no_grad():
        plain = bridge(batch.input_ids, **batch.model_kwargs())
        with sn.NeuronScaling({1: S}, alpha=1.0).applied(bridge):
            assert torch.allclose(bridge(batch.input_ids, **batch.model_kwargs()), plain)
        with sn.NeuronScaling({1: S}, alpha=3.0).applied(bridge):
            scaled = bridge(batch.input_ids, **batch.model_kwargs())
        assert not torch.allclose(scaled, plain, atol=1e-3)
        assert torch.equal(bridge(batch.input_ids, **batch.model_kwargs()), plain)  # hooks are gone
    rd = sn.RefusalDirection.fit(bridge, prompts, layer=1, langs=["en"], coeff=0.0, progress=False)
    assert rd.direction.norm().item() == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad(), rd.applied(bridge):
        assert torch.allclose(bridge(batch.input_ids, **batch.model_kwargs()), plain, atol=1e-6)
    rd.coeff = 1.0
    seen = {}
    with (
        torch.no_grad(),
        rd.applied(bridge),
        bridge.hooks(fwd_hooks=[("blocks.2.hook_resid_pre", lambda x, hook: seen.setdefault("x", x.clone()))]),
    ):
        bridge(batch.input_ids, **batch.model_kwargs())
    with (
        torch.no_grad(),
        bridge.hooks(fwd_hooks=[("blocks.2.hook_resid_pre", lambda x, hook: seen.setdefault("y", x.clone()))]),
    ):
        bridge(batch.input_ids, **batch.model_kwargs())
    assert torch.allclose(seen["x"] - seen["y"], (rd.norm * rd.direction).expand_as(seen["x"]), atol=1e-4)


@pytest.mark.parametrize("site", ["gate", "w_out"])
def test_preserving_all_positions_keeps_every_token_of_harmless_prompts_closer(tiny, prompts, site):
    bridge, _, _ = tiny
    safe = [p for p in prompts if p.label == "harmless"]
    batch = sn.tokenize_chat(bridge.tokenizer, [p.text for p in safe])
    mask = batch.attention_mask.bool()

    def drift(edit):
        with torch.no_grad():
            base = bridge(batch.input_ids, **batch.model_kwargs())
            with edit.applied(bridge):
                moved = bridge(batch.input_ids, **batch.model_kwargs())
        return (moved - base)[mask].norm().item()

    spec = sn.EditSpec.paper(layers=1, neurons={1: S}, site=site, rank=3, gamma=10.0)
    last = sn.fit_edit(bridge, prompts, spec.replace(preserve_positions="last"), progress=False)
    every = sn.fit_edit(bridge, prompts, spec.replace(preserve_positions="all"), progress=False)
    assert every.settings["preserve_positions"] == "all"
    assert drift(every) < drift(last)


def _last_resid(bridge, prompts, layer):
    return rows(bridge, prompts, "resid", layer).matrix("resid", layer)


@pytest.mark.parametrize("boost", [0.0, 0.5])
def test_language_gap_target_moves_each_prompt_by_its_languages_mean_gap(tiny, prompts, boost):
    bridge, _, _ = tiny
    layer = 1
    low = [p for p in prompts if p.label == "harmful" and p.lang != "en"]
    en_h = [p for p in prompts if p.label == "harmful" and p.lang == "en"]
    en_s = [p for p in prompts if p.label == "harmless" and p.lang == "en"]
    # 16 fitted rows, 48 keys, no rank limit, a vanishing ridge, nothing preserved: an exact fit
    spec = sn.EditSpec.linear(
        layers=layer, refusal_boost=boost, rank=None, ridge=1e-10, preserve=(), preserve_positions="last"
    )
    edit = sn.fit_edit(bridge, prompts, spec, progress=False)
    before, piv = _last_resid(bridge, low, layer), _last_resid(bridge, en_h, layer)
    en_ids = {p.id: i for i, p in enumerate(en_h)}
    gap = piv[[en_ids[p.id] for p in low]] - before
    r = piv.mean(0) - _last_resid(bridge, en_s, layer).mean(0)
    with edit.applied(bridge):
        moved = _last_resid(bridge, low, layer) - before
    for lang in ("zh", "bn"):
        sel = torch.tensor([p.lang == lang for p in low])
        want = gap[sel].mean(0) + boost * r
        assert torch.allclose(moved[sel], want.expand_as(moved[sel]), atol=1e-3 * want.norm())
    assert edit.settings["target"] == "language_gap" and edit.settings["refusal_boost"] == boost


def test_residual_target_matches_each_prompts_own_gap_on_an_exact_fit(tiny, prompts):
    bridge, _, _ = tiny
    low = [p for p in prompts if p.label == "harmful" and p.lang != "en"]
    en_h = [p for p in prompts if p.label == "harmful" and p.lang == "en"]
    spec = sn.EditSpec.linear(
        layers=1, target="residual", refusal_boost=0.0, rank=None, ridge=1e-10, preserve=(), preserve_positions="last"
    )
    edit = sn.fit_edit(bridge, prompts, spec, progress=False)
    before = _last_resid(bridge, low, 1)
    target = _last_resid(bridge, en_h, 1)[[[p.id for p in en_h].index(p.id) for p in low]]
    assert not torch.allclose(before, target, atol=1e-3 * target.norm(dim=1).max())  # there is a gap to close
    with edit.applied(bridge):
        assert torch.allclose(_last_resid(bridge, low, 1), target, atol=1e-3 * target.norm(dim=1).max())


def test_a_collections_message_gram_gives_the_same_edit_as_collecting_it(tiny, prompts):
    bridge, _, _ = tiny
    coll = sn.collect_activations(
        bridge,
        prompts,
        stats_site=None,
        rows_at=[("act", 1), ("resid", 1)],
        gram_at=[("act", 1)],
        gram_positions="preserved",
        progress=False,
    )
    spec = sn.EditSpec.linear(layers=1, rank=4, ridge=1e-2)
    given = sn.fit_edit(bridge, prompts, spec, rows=coll, progress=False)
    own = sn.fit_edit(bridge, prompts, spec, progress=False)
    assert torch.allclose(given.edits[0].delta, own.edits[0].delta, rtol=1e-4, atol=1e-6)  # batching differs
    assert own.settings["preserve_positions"] == "all" and own.settings["position_weight"] == 0.2


@pytest.mark.parametrize("change", [{"langs": ["zh"]}, {"preserve": ["pivot_harmful"]}], ids=["no-bn", "no-anchor"])
def test_a_collection_over_more_prompts_gives_the_same_edit_as_none(tiny, prompts, change):
    """A Collection's Gram matrix sums over every prompt it holds. A call that uses fewer of them (here without
    Bengali, as the benchmarks' `ours_no_bn` row, or without the non-English harmless prompts) must still get
    the edit it gets without `rows=`: it once kept the collection's Gram over the other prompts too."""
    bridge, _, _ = tiny
    coll = sn.collect_activations(
        bridge,
        prompts,
        stats_site=None,
        rows_at=[("act", 1), ("resid", 1)],
        gram_at=[("act", 1)],
        gram_positions="preserved",
        progress=False,
    )
    spec = sn.EditSpec.linear(layers=1, rank=4, **change)
    given = sn.fit_edit(bridge, prompts, spec, rows=coll, progress=False)
    own = sn.fit_edit(bridge, prompts, spec, progress=False)
    assert torch.allclose(given.edits[0].delta, own.edits[0].delta, rtol=1e-4, atol=1e-6)  # batching differs


def test_new_options_reject_bad_input(tiny, prompts):
    bridge, _, _ = tiny
    with pytest.raises(sn.EditError, match="refusal_boost"):
        sn.EditSpec.paper(layers=1, neurons={1: S}, refusal_boost=1.0)
    with pytest.raises(sn.EditError, match="position_weight"):
        sn.EditSpec.paper(layers=1, neurons={1: S}, preserve_positions="all", position_weight=0)
    no_en_harmless = [p for p in prompts if not (p.lang == "en" and p.label == "harmless")]
    with pytest.raises(sn.EditError, match="refusal direction"):
        sn.fit_edit(bridge, no_en_harmless, sn.EditSpec.linear(layers=1), progress=False)
