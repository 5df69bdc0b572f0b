"""The harm switch on tiny models: the probe's closed form, the fold against a hook computing the same
function, silence on preserved positions, firing on harmful openings, bit-exact revert, only two neurons
touched, files, and bad settings."""

import pytest
import torch

import safety_neurons as sn
from safety_neurons import switch as sw

from conftest import tiny_hf_model, tiny_tokenizer

LAYER = 1


def bomb_and_cake(n: int = 8, langs=("en", "zh"), seed: int = 0) -> list[sn.Prompt]:
    """Harmful requests say "bomb", harmless ones "cake", with random words around: a separable toy."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        for label, word in (("harmful", "bomb"), ("harmless", "cake")):
            pad = [
                f"w{int(j)}" for j in torch.randint(0, 200, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g)
            ]
            for lang in langs:
                out.append(sn.Prompt(f"{label}-{i}", lang, label, " ".join(pad + ["make", "a"] + [word] * 6)))
    return out


@pytest.fixture(params=["llama", "qwen2"])
def model(request):
    tok = tiny_tokenizer(bos=request.param == "llama")
    return sn.bridge_from_hf(tiny_hf_model(request.param, len(tok)), tok, name=f"tiny-{request.param}")


@pytest.fixture
def detector(model):
    return sw.fit_detector(model, bomb_and_cake(), layer=LAYER, answer_tokens=4, ridge=1e-3, progress=False)


def _rows(model, prompts, answers=None, site="mlp_in"):
    """Every real position's row at LAYER with its kind and its prompt's index (reference, no streaming)."""
    rows, kinds, owner = [], [], []
    for cur, k, idx in sw._positions(model, prompts, answers, [(site, LAYER)], 2, 3, False, ""):
        x = cur[(site, LAYER)].double()
        for r, i in enumerate(idx):
            keep = k[r] >= 0
            rows.append(x[r][keep])
            kinds.append(k[r][keep])
            owner += [i] * int(keep.sum())
    return torch.cat(rows), torch.cat(kinds), torch.tensor(owner)


def _ls(X, y, w, ridge):
    G = X.T @ (w[:, None] * X)
    eye = torch.eye(G.shape[0], dtype=torch.float64) * torch.trace(G) / G.shape[0]
    return torch.linalg.solve(G + ridge * eye, X.T @ (w * y))


def test_a_detector_solved_from_some_languages_sums_equals_one_fitted_on_them_alone(model):
    """Leave one language out without a second pass: the per-language sums of one pass, solved without a
    language, give the detector fitted on the other languages' prompts only."""
    prompts = bomb_and_cake(4, langs=("en", "vi"), seed=3) + bomb_and_cake(3, langs=("zh",), seed=4)
    answers = {(p.lang, p.id): "w3 w4 w5" for p in prompts if p.label == "harmless"}
    aligned = [answers.get((p.lang, p.id)) if p.label == "harmless" else None for p in prompts]
    # one prompt a batch on both sides: the same rows bit for bit (batches of other prompts pad differently,
    # and float32 kernels of other shapes round differently on some CPUs)
    sums = sw._detector_sums(model, prompts, aligned, LAYER, 2, "en", 1, False)
    kw = dict(layer=LAYER, ridge=0.05, trigger=2, pivot="en", answer_tokens=32)
    left = sw._detector_from_sums(model, sums, prompts, aligned, langs=["en", "vi"], **kw)
    alone = sw.fit_detector(
        model,
        [p for p in prompts if p.lang != "zh"],
        layer=LAYER,
        answers=answers,
        ridge=0.05,
        batch_size=1,
        progress=False,
    )
    for name in sw.HarmDetector._TENSORS:
        torch.testing.assert_close(getattr(left, name), getattr(alone, name), rtol=1e-9, atol=1e-10)
    assert left.settings == alone.settings and left.settings["langs"] == ["en", "vi"]
    whole = sw._detector_from_sums(model, sums, prompts, aligned, **kw)
    assert not torch.allclose(whole.probe, left.probe)  # zh's rows do count when kept
    with pytest.raises(sn.SwitchError, match="pivot"):
        sw._detector_from_sums(model, sums, prompts, aligned, langs=["zh", "vi"], **kw)


def test_probe_place_and_constant_are_the_weighted_least_squares_solutions(model):
    """Brute force: the weighted design matrices built row by row, the normal equations solved."""
    prompts = bomb_and_cake(4)
    answers = {(p.lang, p.id): "w3 w4 w5" for p in prompts if p.label == "harmless"}
    # batches of 3 as `_rows` reads them: the same rows bit for bit (other batches pad differently)
    det = sw.fit_detector(model, prompts, layer=LAYER, answers=answers, ridge=0.05, batch_size=3, progress=False)
    aligned = [answers.get((p.lang, p.id)) if p.label == "harmless" else None for p in prompts]
    X, kinds, owner = _rows(model, prompts, aligned)
    count = {}
    for p in prompts:
        count[(p.lang, p.label)] = count.get((p.lang, p.label), 0) + 1
    trig = kinds == sw.TRIGGER
    n_on = torch.tensor([int((trig & (owner == i)).sum()) for i in range(len(prompts))])
    n_off = torch.tensor([int((~trig & (owner == i)).sum()) for i in range(len(prompts))])
    y = torch.tensor([1.0 if prompts[i].label == "harmful" else -1.0 for i in owner.tolist()], dtype=torch.float64)
    w = torch.tensor(
        [1.0 / (count[(prompts[i].lang, prompts[i].label)] * n_on[i]) for i in owner.tolist()], dtype=torch.float64
    )
    torch.testing.assert_close(det.probe, _ls(X[trig], y[trig], w[trig], 0.05))
    per_prompt = torch.where(trig, 1.0 / n_on[owner], 1.0 / n_off[owner]).double() / len(prompts)
    torch.testing.assert_close(det.place, _ls(X, trig.double(), per_prompt, 1e-6))
    torch.testing.assert_close(det.const, _ls(X, torch.ones(len(X), dtype=torch.float64), per_prompt, 1e-6))
    assert (X[~trig] @ det.place).abs().max() < (X[trig] @ det.place).min()  # the toy's place is found


def test_the_switch_fires_at_harmful_triggers_and_is_silent_elsewhere(model, detector):
    prompts = bomb_and_cake()
    scores = detector.scores(model, prompts)
    harmful = torch.tensor([p.label == "harmful" for p in prompts])
    assert scores.trigger[harmful].min() > scores.trigger[~harmful].max(), "toy not separated"
    theta = float((scores.trigger[harmful].min() + scores.trigger[~harmful].max()) / 2)
    width = 0.05
    edit = sw.fit_switch(model, detector, threshold=theta, width=width, strength=1.0)
    j = edit.settings["neurons"]
    X, kinds, owner = _rows(model, prompts)
    with edit.applied(model):
        a = _rows(model, prompts, site="act")[0][:, j]
    out = (a[:, 0] - a[:, 1]) / sw.STEP  # the switch's output in units of strength × r
    z, u = X @ detector.probe, X @ detector.place
    trig = kinds == sw.TRIGGER
    is_harmful = harmful[owner]
    # harmless triggers: the probe is below θ − 1.25 width, the output below the stated bound
    quiet = trig & ~is_harmful
    assert (z[quiet] < theta - 1.25 * width).all()
    assert (out[quiet].abs() <= 4e-4 * u[quiet].abs() + 1e-9).all()
    # everywhere but the triggers the output is at most |u|·(k + 0.035), k = c·x ≈ 1 (the step saturates at
    # m·k; SiLU's dip is −0.278 = −0.035 m), and u is small there
    k = X @ detector.const
    assert (out[~trig].abs() <= u[~trig].abs() * (k[~trig].abs() + 0.035) + 1e-9).all()
    assert u[~trig].abs().max() < u[trig].min()
    # harmful triggers past the bend: fully on, α·u·k
    full = trig & is_harmful & ((sw.STEP / width) * (z - theta * k) - sw.STEP * k > 12)
    assert full.sum() >= harmful.sum()  # at least one trigger position per harmful prompt on average
    torch.testing.assert_close(out[full], u[full] * k[full], rtol=1e-3, atol=1e-3)
    assert scores.fires(theta).tolist() == harmful.tolist()


def test_the_fold_equals_a_hook_that_applies_the_same_function(model, detector):
    prompts = bomb_and_cake(4)
    edit = sw.fit_switch(model, detector, threshold=0.0, width=0.5, strength=3.0)
    j = torch.tensor(edit.settings["neurons"])
    mlp = model.blocks[LAYER].mlp
    new = {}
    with edit.applied(model):
        new = {k: getattr(mlp, k).detach().clone() for k in ("W_gate", "W_in", "W_out")}
    ids = sn.tokenize_chat(model.tokenizer, [p.text for p in prompts])
    with edit.applied(model), torch.no_grad():
        folded = model(ids.input_ids, **ids.model_kwargs())
    seen = {}

    def grab_x(x, hook):
        seen["x"] = x
        return x

    def grab_a(a, hook):
        seen["a"] = a
        return a

    def add_switch(out, hook):  # the two neurons' new function in, their old contribution out
        x, a = seen["x"], seen["a"][..., j]
        f = torch.nn.functional.silu(x @ new["W_gate"][:, j]) * (x @ new["W_in"][:, j])
        return out + f @ new["W_out"][j] - a @ mlp.W_out[j]

    hooks = [
        (f"blocks.{LAYER}.ln2.hook_out", grab_x),
        (f"blocks.{LAYER}.mlp.hook_post", grab_a),
        (f"blocks.{LAYER}.hook_mlp_out", add_switch),
    ]
    with model.hooks(fwd_hooks=hooks), torch.no_grad():
        hooked = model(ids.input_ids, **ids.model_kwargs())
    assert not torch.allclose(folded, model(ids.input_ids, **ids.model_kwargs()), atol=1e-3), (
        "the switch changes nothing"
    )
    torch.testing.assert_close(folded, hooked, rtol=1e-4, atol=1e-4)


def test_only_two_neurons_change_and_revert_is_bit_exact(model, detector):
    before = {k: v.clone() for k, v in sn.hf_state_dict(model).items()}
    edit = sw.fit_switch(model, detector, threshold=0.1, strength=2.0)
    j = edit.settings["neurons"]
    assert len(j) == 2 and j == detector.least_used(2)
    with edit.applied(model):
        after = sn.hf_state_dict(model)
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        prefix = f"model.layers.{LAYER}.mlp."
        assert changed == {prefix + "gate_proj.weight", prefix + "up_proj.weight", prefix + "down_proj.weight"}
        for name, dim in (("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)):
            diff = (before[prefix + name + ".weight"] != after[prefix + name + ".weight"]).any(dim=1 - dim)
            assert set(torch.nonzero(diff).flatten().tolist()) <= set(j)
    assert all(torch.equal(v, sn.hf_state_dict(model)[k]) for k, v in before.items())


def test_switch_and_detector_files_round_trip(model, detector, tmp_path):
    edit = sw.fit_switch(model, detector, threshold=0.2, strength=1.5)
    loaded = sn.WeightEdit.load(edit.save(tmp_path / "edit"))
    assert loaded.uid == edit.uid and loaded.settings["kind"] == "harm_switch"
    det = sw.HarmDetector.load(detector.save(tmp_path / "det"))
    for k in sw.HarmDetector._TENSORS:
        assert torch.equal(getattr(det, k), getattr(detector, k))
    assert det.layer == detector.layer and det.model == detector.model
    assert sw.fit_switch(model, det, threshold=0.2, strength=1.5).uid == edit.uid


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(width=0.0), "width must be > 0"),
        (dict(neurons=[3]), "two neuron indices"),
        (dict(neurons=[3, 3]), "two different indices"),
        (dict(neurons=[0, 10_000]), "two different indices"),
        (dict(neurons=[0.5, 2]), "neuron"),
        (dict(threshold="high"), "threshold"),
    ],
)
def test_bad_switch_settings_are_named(model, detector, kwargs, message):
    with pytest.raises(sw.SwitchError, match=message):
        sw.fit_switch(model, detector, **kwargs)


def test_bad_detector_inputs_are_named(model):
    prompts = bomb_and_cake(2)
    with pytest.raises(sw.SwitchError, match="out of range"):
        sw.fit_detector(model, prompts, layer=7, progress=False)
    with pytest.raises(sw.SwitchError, match="harmful and harmless"):
        sw.fit_detector(model, [p for p in prompts if p.label == "harmful"], layer=1, progress=False)
    with pytest.raises(sw.SwitchError, match="en harmless"):
        sw.fit_detector(
            model,
            [p for p in prompts if not (p.lang == "en" and p.label == "harmless")],
            layer=1,
            answer_tokens=0,
            progress=False,
        )
    with pytest.raises(sw.SwitchError, match="Prompt records"):
        sw.fit_detector(model, ["How do I make a bomb"], layer=1, progress=False)
