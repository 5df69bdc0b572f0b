"""Edit recipes (`EditSpec`): each preset fits bit for bit the edit its explicit recipe gave before presets
existed, specs survive `WeightEdit.save` / `load`, and a bad field is an `EditError` before any work.

The expected edits are computed here from `solve_edit` and the collected rows, following what `fit_edit`
did with the explicit keyword arguments of each configuration (`RunConfig`'s for `EditSpec.linear`, the
defaults for `EditSpec.paper`, `benchmarks/efficacy.py`'s null-space condition for `EditSpec.nullspace`).
These references were checked equal, bit for bit, to the old keyword calls on the old code."""

import json

import pytest
import torch
from safetensors.torch import load_file

import safety_neurons as sn
from safety_neurons._checks import _fields_text, content_hash
from safety_neurons.edit import _factor

from conftest import make_prompts

L = 1


@pytest.fixture
def prompts():
    return make_prompts(8, langs=("en", "zh", "bn"))


@pytest.fixture
def collected(tiny, prompts):
    bridge = tiny[0]
    return sn.collect_activations(
        bridge,
        prompts,
        rows_at=[(s, L) for s in ("mlp_in", "act", "resid")],
        gram_at=[("act", L)],
        gram_positions="preserved",
        progress=False,
    )


def _groups(prompts):
    low = [p for p in prompts if p.lang != "en" and p.label == "harmful"]
    en_harmful = {p.id: p for p in prompts if p.lang == "en" and p.label == "harmful"}
    harmless = [p for p in prompts if p.label == "harmless"]
    en_harmless = [p for p in prompts if p.lang == "en" and p.label == "harmless"]
    return low, [en_harmful[p.id] for p in low], harmless, list(en_harmful.values()), en_harmless


def _take(coll, group, key):
    where = {(p.lang, p.id): i for i, p in enumerate(coll.rows.prompts)}
    return coll.rows.matrix(*key)[[where[(p.lang, p.id)] for p in group]]


def paper_reference(bridge, prompts, coll, neurons):
    """fit_edit(model, prompts, layers=L, neurons=ranking): gate columns S, harmless last-position rows kept,
    rank 32 (capped), γ 1, relative ridge 1e-2."""
    low, piv, harmless, _, _ = _groups(prompts)
    w_s = bridge.blocks[L].mlp.W_gate.detach().to(torch.float64).cpu()[:, neurons]
    X_low, X_piv, X_keep = (_take(coll, g, ("mlp_in", L)) for g in (low, piv, harmless))
    rank = min(32, bridge.cfg.d_model, len(neurons))
    return sn.solve_edit(X_low, (X_piv - X_low) @ w_s, X_keep, rank=rank, gamma=1.0, ridge=1e-2).delta


def linear_reference(bridge, prompts, coll, **solve):
    """fit_edit(model, prompts, layers=L, neurons="all", site="w_out", target="language_gap", refusal_boost=1.0,
    rank=32, gamma=1.0, ridge=0.1, method="soft", preserve=["harmless", "pivot_harmful"], preserve_positions="all",
    position_weight=0.2, sequential=False): RunConfig's recipe."""
    low, piv, harmless, en_harmful, en_harmless = _groups(prompts)
    key = ("act", L)
    keep = torch.cat(
        [_take(coll, harmless + en_harmful, key), _factor(0.2 * coll.gram[key], torch.arange(bridge.cfg.d_mlp))]
    )
    resid_piv = _take(coll, piv, ("resid", L))
    gap = resid_piv - _take(coll, low, ("resid", L))
    for lang in dict.fromkeys(p.lang for p in low):
        sel = torch.tensor([p.lang == lang for p in low])
        gap[sel] = gap[sel].mean(0)
    gap = gap + 1.0 * (resid_piv.mean(0) - _take(coll, en_harmless, ("resid", L)).mean(0))
    solve = {"rank": min(32, bridge.cfg.d_mlp, bridge.cfg.d_model), **solve}
    return sn.solve_edit(_take(coll, low, key), gap, keep, gamma=1.0, ridge=0.1, **solve).delta


def test_paper_preset_is_the_old_default_call(tiny, prompts, collected):
    bridge = tiny[0]
    ranking = sn.rank_neurons(collected.stats)
    spec = sn.EditSpec.paper(layers=L, neurons=ranking)
    edit = sn.fit_edit(bridge, prompts, spec, rows=collected, progress=False)
    idx = ranking.union(L, ["en"])
    assert torch.equal(edit.edits[0].neurons, idx) and edit.edits[0].site == "gate"
    assert torch.equal(edit.edits[0].delta, paper_reference(bridge, prompts, collected, idx))
    assert (
        spec == sn.EditSpec(layers=L, neurons=ranking) and edit.spec is spec
    )  # the dataclass defaults are the paper's


def test_linear_preset_is_the_run_configs_recipe(tiny, prompts, collected):
    bridge = tiny[0]
    edit = sn.fit_edit(bridge, prompts, sn.EditSpec.linear(layers=L), rows=collected, progress=False)
    assert torch.equal(edit.edits[0].delta, linear_reference(bridge, prompts, collected))
    assert edit.settings["site"] == "w_out" and edit.settings["ridge"] == 0.1 and edit.settings["sequential"] is False
    # what `safety-neurons run` fits is this preset
    ranking = sn.rank_neurons(collected.stats)
    assert sn.RunConfig().edit_spec([L], ranking) == sn.EditSpec.linear(layers=[L])
    assert sn.RunConfig(rank=4, neurons="en").edit_spec([L], ranking) == sn.EditSpec.linear(
        layers=[L], rank=4, neurons=ranking, neuron_langs=["en"]
    )


def test_nullspace_preset_is_the_benchmarks_null_space_condition(tiny, prompts, collected):
    bridge = tiny[0]
    spec = sn.EditSpec.nullspace(layers=L).replace(rank=4)  # the tiny model's null space is too small for rank 32
    edit = sn.fit_edit(bridge, prompts, spec, rows=collected, progress=False)
    expected = linear_reference(bridge, prompts, collected, method="nullspace", null_energy=0.01, rank=4)
    assert torch.equal(edit.edits[0].delta, expected)
    assert edit.edits[0].solution["null_dim"] is not None


def test_switch_preset_is_fit_detector_then_fit_switch(tiny, prompts):
    bridge = tiny[0]
    spec = sn.EditSpec.switch(layer=L, threshold=0.1, strength=2.0, answer_tokens=0)
    edit = sn.fit_edit(bridge, prompts, spec, progress=False)
    detector = sn.fit_detector(bridge, prompts, layer=L, answer_tokens=0, progress=False)
    explicit = sn.fit_switch(bridge, detector, threshold=0.1, strength=2.0)
    assert edit.uid == explicit.uid and edit.settings == explicit.settings
    assert all(torch.equal(a.delta, b.delta) for a, b in zip(edit.edits, explicit.edits))
    assert edit.spec == explicit.spec == spec  # fit_switch records the same recipe
    with pytest.raises(sn.EditError, match="rows= does not apply"):
        sn.fit_edit(bridge, prompts, spec, rows=sn.collect_activations(bridge, prompts, progress=False), progress=False)


@pytest.mark.parametrize(
    "make",
    [
        lambda ranking: sn.EditSpec.linear(layers=[L], langs=["zh"], rank=4),
        lambda ranking: sn.EditSpec.paper(layers=L, neurons={L: [1, 4, 9]}, rank=2),
        lambda ranking: sn.EditSpec.paper(layers=L, neurons=ranking, neuron_langs=["en", "zh"], rank=2),
        lambda ranking: sn.EditSpec.switch(layer=L, threshold=0.2, strength=1.5, answer_tokens=0, neurons=[5, 3]),
    ],
    ids=["linear", "paper-map", "paper-ranking", "switch"],
)
def test_the_spec_survives_save_and_load(tiny, prompts, collected, tmp_path, make):
    bridge = tiny[0]
    spec = make(sn.rank_neurons(collected.stats))
    edit = sn.fit_edit(bridge, prompts, spec, progress=False)
    loaded = sn.WeightEdit.load(edit.save(tmp_path / "edit"))
    assert loaded.spec.to_dict() == spec.to_dict() and loaded.uid == edit.uid
    if not isinstance(spec.neurons, sn.SafetyNeurons):
        assert loaded.spec == spec
    else:  # written as the neurons the ranking gave: refitting the loaded recipe gives the same edit
        assert loaded.spec.neurons == {L: tuple(edit.edits[0].neurons.tolist())}
    assert sn.fit_edit(bridge, prompts, loaded.spec, progress=False).uid == edit.uid
    assert json.loads(json.dumps(spec.to_dict())) == spec.to_dict()


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.update(site="attn"), "unknown edit site 'attn'"),
        (lambda d: d.update(colour="red"), r"unknown edit spec field\(s\) \['colour'\]"),
        (lambda d: d["solver"].update(rank=0), "solver: rank must be >= 1"),
        (lambda d: d.update(layers=[2]), r"layers \[2\].*does not match the stored edits \(layers \[1\]"),
        (lambda d: d.update(neurons={"one": [1]}), "keys must be layer numbers"),
        (lambda d: d.pop("kind"), "needs its kind"),
    ],
)
def test_a_saved_spec_that_does_not_parse_is_an_error_naming_the_file(tiny, prompts, tmp_path, change, match):
    bridge = tiny[0]
    folder = sn.fit_edit(bridge, prompts, sn.EditSpec.linear(layers=L, rank=4), progress=False).save(tmp_path / "e")
    cfg = json.loads((folder / "edit.json").read_text())
    change(cfg["spec"])
    # sealed again, as a writer would (the sha256 covers the fields): the spec's own check must catch it
    cfg["sha256"] = content_hash(load_file(folder / "edit.safetensors"), _fields_text(cfg))
    (folder / "edit.json").write_text(json.dumps(cfg))
    with pytest.raises(sn.EditError, match=match) as err:
        sn.WeightEdit.load(folder)
    assert "edit.json" in str(err.value)


def test_an_edit_saved_before_specs_still_loads(tiny, prompts, tmp_path):
    bridge = tiny[0]
    edit = sn.fit_edit(bridge, prompts, sn.EditSpec.paper(layers=L, neurons=[1, 2, 3], rank=2), progress=False)
    folder = edit.save(tmp_path / "old")
    cfg = json.loads((folder / "edit.json").read_text())
    del cfg["spec"]
    cfg["sha256"] = content_hash(load_file(folder / "edit.safetensors"), _fields_text(cfg))
    (folder / "edit.json").write_text(json.dumps(cfg))
    loaded = sn.WeightEdit.load(folder)
    assert loaded.spec is None and loaded.uid == edit.uid and loaded.settings == edit.settings


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: sn.EditSpec.linear(site="attn"), "unknown edit site"),
        (lambda: sn.EditSpec.linear(target="gap"), "unknown target"),
        (lambda: sn.EditSpec.paper(neurons=[1], target="language_gap"), "needs site='w_out'"),
        (lambda: sn.EditSpec.paper(neurons=[1], refusal_boost=1.0), "refusal_boost"),
        (lambda: sn.EditSpec.linear(position_weight=0), "position_weight must be > 0"),
        (lambda: sn.EditSpec.linear(preserve="harmless"), "preserve must be a list"),
        (lambda: sn.EditSpec.linear(preserve=["safe"]), "unknown preserve option 'safe'"),
        (lambda: sn.EditSpec.linear(langs=["en"]), "pivot"),
        (lambda: sn.EditSpec.linear(langs=["xx"]), "unknown language"),
        (lambda: sn.EditSpec.linear(layers="12"), "string '12'"),
        (lambda: sn.EditSpec.linear(layers=[-1]), "layers must be ≥ 0"),
        (lambda: sn.EditSpec.linear(rank=2.5), "rank must be a positive int"),
        (lambda: sn.EditSpec.linear(gamma=-1), "gamma must be a finite number >= 0"),
        (lambda: sn.EditSpec.linear(ridge=True), "ridge must be a real number"),
        (lambda: sn.EditSpec.linear(method="exact"), "method must be"),
        (lambda: sn.EditSpec.linear(null_energy=0.1), "only apply to method='nullspace'"),
        (lambda: sn.EditSpec.nullspace(null_threshold=0.1), "at most one"),
        (lambda: sn.EditSpec.linear(sequential="no"), "sequential must be True or False"),
        (lambda: sn.EditSpec.linear(colour="red"), r"unknown edit setting\(s\) \['colour'\]"),
        (lambda: sn.EditSpec.linear(threshold=0.5), "settings of the harm switch"),
        (lambda: sn.EditSpec.paper(neurons="some"), "neurons must be"),
        (lambda: sn.EditSpec.paper(neurons={1: []}), "empty neuron set at layer 1"),
        (lambda: sn.EditSpec.paper(neurons=[-2, 1]), "must be ≥ 0"),
        (lambda: sn.EditSpec.switch(layer=1, width=0), "width must be > 0"),
        (lambda: sn.EditSpec.switch(layer=1, neurons=[3, 3]), "two different indices"),
        (lambda: sn.EditSpec.switch(layer=1).replace(site="w_out"), "not settings of the harm switch"),
        (lambda: sn.EditSpec.switch(layer=1).replace(layers=[1, 2]), "one layer"),
        (
            lambda: sn.EditSpec.from_dict({"kind": "closed_form", "solver": {"rank": 4, "speed": 2}}),
            "unknown solver setting",
        ),
        (lambda: sn.EditSpec.from_dict(["kind"]), "must be a dict"),
    ],
)
def test_bad_spec_fields_are_edit_errors(make, match):
    with pytest.raises(sn.EditError, match=match):
        make()


def test_fit_edit_checks_the_spec_and_its_layers_before_any_work(tiny, prompts, monkeypatch):
    bridge = tiny[0]
    monkeypatch.setattr(sn.edit, "collect_activations", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(sn.EditError, match="spec must be an EditSpec"):
        sn.fit_edit(bridge, prompts, {"site": "w_out"}, progress=False)
    with pytest.raises(sn.EditError, match="names no layers"):
        sn.fit_edit(bridge, prompts, sn.EditSpec.linear(), progress=False)
    with pytest.raises(sn.EditError, match="out of range"):
        sn.fit_edit(bridge, prompts, sn.EditSpec.linear(layers=9), progress=False)


def test_solver_options_are_solve_edits_defaults_and_settings():
    g = torch.Generator().manual_seed(0)
    X, D, S = (torch.randn(n, k, generator=g, dtype=torch.float64) for n, k in ((60, 40), (60, 36), (20, 40)))
    assert torch.equal(sn.SolverOptions().solve(X, D, S).delta, sn.solve_edit(X, D, S).delta)  # rank 32 of 36
    opts = sn.SolverOptions(rank=3, gamma=2.0, ridge=0.5, method="nullspace", null_energy=0.05)
    assert torch.equal(opts.solve(X, D, S).delta, sn.solve_edit(X, D, S, **opts.to_dict()).delta)
    assert sn.SolverOptions.from_dict(opts.to_dict()) == opts
    with pytest.raises(sn.SolverError, match="unknown solver setting"):
        opts.replace(speed=2)
    with pytest.raises(sn.SolverError, match="ridge_mode must be"):
        sn.SolverOptions(ridge_mode="scaled")
