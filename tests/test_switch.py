"""The harm switch on tiny models: the probe's closed form, the fold against a hook computing the same
function, silence on preserved positions, firing on harmful openings, bit-exact revert, only two neurons
touched, files, and bad settings."""

import pytest
import torch
from conftest import tiny_hf_model, tiny_tokenizer

import safety_neurons as sn
from safety_neurons import switch as sw

LAYER = 1


def bomb_and_cake(n: int = 8, langs=("en", "zh"), seed: int = 0) -> list[sn.Prompt]:
    """Harmful requests say "bomb", harmless ones "cake", with random words around: a separable toy."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        for label, word in (("harmful", "bomb"), ("harmless", "cake")):
            pad = [f"w{int(j)}" for j in torch.randint(0, 200, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g)]
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


def _positions_by_kind(model, prompts, answers=None):
    """Every MLP input row at LAYER with its kind and its prompt's label (reference collection, no streaming)."""
    rows, kinds, labels = [], [], []
    for cur, k, idx in sw._positions(model, prompts, answers, [("mlp_in", LAYER)], 4, False, ""):
        x = cur[("mlp_in", LAYER)].double()
        for r, i in enumerate(idx):
            keep = k[r] >= 0
            rows.append(x[r][keep])
            kinds.append(k[r][keep])
            labels += [prompts[i].label] * int(keep.sum())
    return torch.cat(rows), torch.cat(kinds), labels


def test_the_probe_is_the_weighted_least_squares_solution(model):
    """Brute force: build the weighted design matrix row by row and solve the normal equations."""
    prompts = bomb_and_cake(4)
    det = sw.fit_detector(model, prompts, layer=LAYER, answer_tokens=0, ridge=0.01, progress=False)
    count = {}
    for p in prompts:
        count[(p.lang, p.label)] = count.get((p.lang, p.label), 0) + 1
    X, ys, ws = [], [], []
    for cur, k, idx in sw._positions(model, prompts, None, [("mlp_in", LAYER)], 3, False, ""):
        x = cur[("mlp_in", LAYER)].double()
        for r, i in enumerate(idx):
            p = prompts[i]
            groups = [(k[r] == 1, 1.0, 2.0), (k[r] == 0, -1.0, 1.0)] if p.label == "harmful" else [(k[r] >= 0, -1.0, 1.0)]
            for sel, y, weight in groups:
                for row in x[r][sel]:
                    X.append(row)
                    ys.append(y)
                    ws.append(weight / (count[(p.lang, p.label)] * int(sel.sum())))
    X, y, w = torch.stack(X), torch.tensor(ys, dtype=torch.float64), torch.tensor(ws, dtype=torch.float64)
    G = X.T @ (w[:, None] * X)
    ridge = 0.01 * torch.trace(G) / G.shape[0] * torch.eye(G.shape[0], dtype=torch.float64)
    torch.testing.assert_close(det.probe, torch.linalg.solve(G + ridge, X.T @ (w * y)))
    # and the constant direction: c·x ≈ 1 in the same weighted least squares
    c = torch.linalg.solve(G + 1e-6 * ridge / 0.01, X.T @ w)
    torch.testing.assert_close(det.const, c)


def test_the_switch_is_silent_on_preserved_positions_and_fires_on_harmful_openings(model, detector):
    prompts = bomb_and_cake()
    scores = detector.scores(model, prompts)
    harmful = torch.tensor([p.label == "harmful" for p in prompts])
    theta = float((scores.opening[harmful].min() + torch.maximum(scores.opening, scores.message)[~harmful].max()) / 2)
    assert scores.opening[harmful].min() > torch.maximum(scores.opening, scores.message)[~harmful].max(), "toy not separated"
    edit = sw.fit_switch(model, detector, threshold=theta, width=0.05, strength=1.0)
    j = edit.settings["neurons"]
    X, kinds, labels = _positions_by_kind(model, prompts)
    with edit.applied(model):
        acts = []
        for cur, k, idx in sw._positions(model, prompts, None, [("act", LAYER)], 4, False, ""):
            a = cur[("act", LAYER)].double()
            acts += [a[r][k[r] >= 0][:, j] for r in range(len(idx))]
    a = torch.cat(acts)  # rows in the same order as X
    out = (a[:, 0] - a[:, 1]) / sw.STEP  # the switch's output in units of strength × r
    z = X @ detector.probe
    bound = 4e-4  # below θ − 1.25 width: |SiLU(t) − SiLU(t − m)| / m ≤ 4e-4 for t ≤ −10
    below = z < theta - 1.25 * 0.05
    preserved = torch.tensor([lab == "harmless" or kind == 0 for lab, kind in zip(labels, kinds.tolist())])
    assert below[preserved].all()
    assert out[preserved].abs().max() <= bound
    opening = torch.tensor([lab == "harmful" and kind == 1 for lab, kind in zip(labels, kinds.tolist())])
    on = z >= theta + 0.05
    assert on[opening].float().mean() > 0.5
    # fully on where both gates are past SiLU's bend: (α/m)·u·[SiLU(g) − SiLU(g − m u)] = α u², u = c·x ≈ 1
    u = X @ detector.const
    g = sw.STEP / 0.05 * (z - theta * u)
    full = (g - sw.STEP * u) > 12
    assert full[opening].any()
    torch.testing.assert_close(out[full], u[full] ** 2, rtol=1e-3, atol=1e-3)


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

    hooks = [(f"blocks.{LAYER}.ln2.hook_out", grab_x), (f"blocks.{LAYER}.mlp.hook_post", grab_a),
             (f"blocks.{LAYER}.hook_mlp_out", add_switch)]  # fmt: skip
    with model.hooks(fwd_hooks=hooks), torch.no_grad():
        hooked = model(ids.input_ids, **ids.model_kwargs())
    assert not torch.allclose(folded, model(ids.input_ids, **ids.model_kwargs()), atol=1e-3), "the switch changes nothing"
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
    for k in ("probe", "const", "refusal", "usage"):
        assert torch.equal(getattr(det, k), getattr(detector, k))
    assert det.layer == detector.layer and det.model == detector.model
    assert sw.fit_switch(model, det, threshold=0.2, strength=1.5).uid == edit.uid


@pytest.mark.parametrize("kwargs, message", [
    (dict(width=0.0), "width must be > 0"),
    (dict(neurons=[3]), "two neuron indices"),
    (dict(neurons=[3, 3]), "two different indices"),
    (dict(neurons=[0, 10_000]), "two different indices"),
    (dict(neurons=[0.5, 2]), "neuron"),
    (dict(threshold="high"), "threshold"),
])  # fmt: skip
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
        sw.fit_detector(model, [p for p in prompts if not (p.lang == "en" and p.label == "harmless")], layer=1,
                        answer_tokens=0, progress=False)  # fmt: skip
    with pytest.raises(sw.SwitchError, match="not strings"):
        sw.fit_detector(model, ["How do I make a bomb"], layer=1, progress=False)
