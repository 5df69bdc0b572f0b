"""The plotting package `viz`: figure structure, input checks, the HTML report, and a headless render."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from safety_neurons import viz
from safety_neurons.evaluation import Evaluation, LanguageResult
from safety_neurons.neurons import SafetyNeurons
from safety_neurons.prompts import LANGS

LANGS3 = ["en", "zh", "bn"]


# --- synthetic inputs ---------------------------------------------------------------------------------
def make_ranking(langs=LANGS3, layers=(0, 1, 2, 3), d_mlp=50, seed=0) -> SafetyNeurons:
    g = torch.Generator().manual_seed(seed)
    shape = (len(langs), len(layers), d_mlp)
    delta = torch.randn(shape, generator=g)
    z = (delta - delta.mean(-1, keepdim=True)) / delta.std(-1, keepdim=True)
    d = delta / (0.5 + torch.rand(shape, generator=g))
    selected = (z > 1.0) & (delta > 0)
    return SafetyNeurons(list(langs), list(layers), delta, z, d, selected, {"rule": "z>1"})


def make_rows(langs=LANGS3, n=6, m=10, seed=0, pull=0.8):
    """Activations [n, m] per language before / after an edit that pulls each language toward English."""
    g = torch.Generator().manual_seed(seed)
    en = torch.rand(n, m, generator=g) * 2
    before = {lang: en if lang == "en" else en * 0.3 + torch.rand(n, m, generator=g) for lang in langs}
    after = {lang: v if lang == "en" else v + pull * (en - v) for lang, v in before.items()}
    return before, after


def make_evaluation(
    asr: dict, over_refusal: dict | None = None, degenerate: dict | None = None, n: int = 100
) -> Evaluation:
    """Counts out of n harmful and n harmless prompts a language (an asr of None: no harmful prompts)."""
    over_refusal, degenerate = over_refusal or {}, degenerate or {}
    langs = {}
    for lang, v in asr.items():
        harmful = {}
        if v is not None:
            k, dk = round(v * n), round(degenerate.get(lang, 0) * n)
            harmful = {"compliance": k, "degenerate": dk, "refusal": n - k - dk}
        r = round(over_refusal.get(lang, 0) * n)
        langs[lang] = LanguageResult(lang, harmful=harmful, harmless={"refusal": r, "compliance": n - r})
    return Evaluation("phrase", langs)


ASR_BEFORE = {"en": 0.05, "zh": 0.3, "bn": 0.7, "th": 0.55}
ASR_AFTER = {"en": 0.04, "zh": 0.1, "bn": 0.2, "th": 0.15}
SWEEP = [
    {"label": "L10 r8", "asr": 0.4, "kl": 0.002, "layer": 10, "rank": 8},
    {"label": "L12 r16", "asr": 0.2, "kl": 0.01, "layer": 12, "rank": 16, "chosen": True},
    {"label": "L14 r32", "asr": 0.1, "kl": 0.3, "layer": 14, "rank": 32},
]


def axis_title(fig, axis="xaxis") -> str:
    return fig.layout[axis].title.text or ""


# --- shared -----------------------------------------------------------------------------------------
def test_every_language_has_a_colour_and_a_label():
    assert set(viz.LANG_COLORS) == set(LANGS)
    assert viz.lang_label("bn") == "Bengali (bn)"


def test_plotting_is_loaded_only_when_asked_for():
    code = (
        "import sys, safety_neurons; assert 'plotly' not in sys.modules and 'safety_neurons.viz' not in sys.modules; "
        "from safety_neurons import viz; assert 'plotly' in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


# --- neurons ----------------------------------------------------------------------------------------
def test_neuron_heatmap_structure_and_values():
    r = make_ranking()
    fig = viz.neuron_heatmap(r, top=8)
    assert isinstance(fig, go.Figure)
    assert [t.type for t in fig.data] == ["heatmap"] * 3
    assert [t.name for t in fig.data] == ["English (en)", "Chinese (zh)", "Bengali (bn)"]
    assert [t.visible for t in fig.data] == [True, False, False]
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == [t.name for t in fig.data]
    assert buttons[2].args[0]["visible"] == [False, False, True]
    assert axis_title(fig, "yaxis") == "Layer" and "Rank" in axis_title(fig, "xaxis")
    # colour range fitted to the shown values (2nd–98th percentile), not a symmetric range mostly unused
    shown = np.concatenate([np.asarray(t.z).ravel() for t in fig.data])
    np.testing.assert_allclose([fig.data[0].zmin, fig.data[0].zmax], np.percentile(shown, [2, 98]))
    z = np.asarray(fig.data[1].z)
    assert z.shape == (4, 8)
    np.testing.assert_allclose(z[:, 0], r.z[1].max(-1).values.numpy(), rtol=1e-6)
    assert (np.diff(z, axis=1) <= 1e-12).all()  # ranked within each layer
    custom = np.asarray(fig.data[1].customdata)
    assert custom[2, 0, 0] == r.z[1, 2].argmax().item()  # neuron index in hover data
    np.testing.assert_allclose(custom[2, 0, 1], r.delta[1, 2, int(custom[2, 0, 0])].item(), rtol=1e-6)
    hover = fig.data[0].hovertemplate
    assert all(s in hover for s in ("Layer", "Neuron", "Δ", "z =", "d ="))
    assert "z-score" in fig.data[0].colorbar.title.text


def test_neuron_heatmap_d_and_clipping_and_numpy():
    r = make_ranking()
    fig = viz.neuron_heatmap(r, score="d", top=10_000)
    assert np.asarray(fig.data[0].z).shape == (4, 50)
    assert "Cohen" in fig.data[0].colorbar.title.text
    # numpy arrays work as well as tensors
    rn = SafetyNeurons(r.langs, r.layers, r.delta.numpy(), r.z.numpy(), r.d.numpy(), r.selected.numpy())
    assert len(viz.neuron_heatmap(rn).data) == 3


@pytest.mark.parametrize(
    "change, kwargs, match",
    [
        (lambda r: setattr(r, "langs", ["en", "xx", "bn"]), {}, "unknown language"),
        (lambda r: setattr(r, "langs", []), {}, "no languages"),
        (lambda r: setattr(r, "z", r.z[:, :, :10]), {}, "disagree in shape"),
        (lambda r: setattr(r, "d", r.d[:2]), {}, r"ranking\.d has shape"),
        (lambda r: None, {"score": "delta"}, "score must be"),
        (lambda r: None, {"top": 0}, "top must be"),
        (lambda r: setattr(r, "d", torch.full_like(r.d, float("nan"))), {"score": "d"}, "all NaN"),
    ],
)
def test_neuron_heatmap_rejects_bad_input(change, kwargs, match):
    r = make_ranking()
    change(r)
    with pytest.raises(ValueError, match=match):
        viz.neuron_heatmap(r, **kwargs)


def test_neuron_heatmap_rejects_non_ranking():
    with pytest.raises(ValueError, match="SafetyNeurons"):
        viz.neuron_heatmap({"z": 1})


def test_neuron_counts():
    r = make_ranking()
    fig = viz.neuron_counts(r)
    assert [t.type for t in fig.data] == ["scatter"] * 3
    assert [t.name for t in fig.data] == ["English (en)", "Chinese (zh)", "Bengali (bn)"]
    np.testing.assert_array_equal(fig.data[2].y, r.counts()[2].numpy())
    np.testing.assert_array_equal(fig.data[0].x, [0, 1, 2, 3])
    assert axis_title(fig) == "Layer" and "count" in axis_title(fig, "yaxis")
    assert fig.layout.legend.title.text == "Language"
    with pytest.raises(ValueError, match="unknown language"):
        viz.neuron_counts(make_ranking(langs=["en", "fr"]))


def test_jaccard_heatmap_slider():
    r = make_ranking()
    fig = viz.jaccard_heatmap(r)
    assert [t.type for t in fig.data] == ["heatmap"] * 5
    steps = fig.layout.sliders[0].steps
    assert len(steps) == 5 and steps[0].label == "all layers"
    assert steps[3].args[0]["visible"] == [False, False, False, True, False]
    np.testing.assert_allclose(np.asarray(fig.data[0].z), r.jaccard().numpy())
    np.testing.assert_allclose(np.asarray(fig.data[3].z), r.jaccard(2).numpy())
    assert list(fig.data[0].x) == ["English (en)", "Chinese (zh)", "Bengali (bn)"]
    assert fig.data[0].texttemplate  # annotated cells
    # colour fitted to the overlaps of different languages over every slider step (the diagonal saturates)
    off = ~np.eye(3, dtype=bool)
    top_off = max(np.asarray(t.z)[off].max() for t in fig.data)
    assert fig.data[0].zmin == 0 and fig.data[0].zmax == pytest.approx(min(1.0, 1.05 * top_off))
    assert axis_title(fig) and axis_title(fig, "yaxis")
    r.selected = r.selected[:, :2]
    with pytest.raises(ValueError, match="selected has shape"):
        viz.jaccard_heatmap(r)


def test_layer_language_heatmap():
    r = make_ranking()
    fig = viz.layer_language_heatmap(r)
    (hm,) = fig.data
    np.testing.assert_array_equal(np.asarray(hm.z), r.counts().T.numpy())  # layers × languages
    assert list(hm.x) == ["English (en)", "Chinese (zh)", "Bengali (bn)"] and list(hm.y) == ["L0", "L1", "L2", "L3"]
    counts = r.counts().double().numpy()
    np.testing.assert_allclose([hm.zmin, hm.zmax], np.percentile(counts, [2, 98]))  # fitted, not 0..max
    assert "per layer and language" in fig.layout.title.text


def test_shared_neurons_heatmap_orders_shared_first():
    r = make_ranking(d_mlp=30)
    sel = torch.zeros_like(r.selected)
    sel[:, 2, 7] = True  # shared by all three languages
    sel[0, 1, 3] = sel[2, 1, 3] = True  # en + bn
    sel[1, 0, 5] = True  # only zh
    r.selected = sel
    fig = viz.shared_neurons_heatmap(r, top=10)
    hm, dots = fig.data
    assert list(hm.y) == ["L2 N7 · all languages", "L1 N3 · 2 languages", "L0 N5 · only zh"]
    np.testing.assert_allclose(np.asarray(hm.z)[0], r.z[:, 2, 7].numpy())
    assert sorted(zip(dots.x, dots.y))[0] == ("Bengali (bn)", "L1 N3 · 2 languages")
    assert len(dots.x) == 3 + 2 + 1  # one dot per (neuron, language) selected
    assert "shared or language-specific" in fig.layout.title.text
    r.selected = torch.zeros_like(sel)
    with pytest.raises(ValueError, match="no neuron is selected"):
        viz.shared_neurons_heatmap(r)


def make_site_rows(langs=LANGS3, n=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    direction = torch.zeros(d)
    direction[0] = 1.0
    rows = {"before": {}, "after": {}}
    for label, shift in (("harmful", 2.0), ("harmless", 0.0)):
        b = {lang: torch.randn(n, d, generator=g) * 0.1 + shift * direction for lang in langs}
        rows["before"][label] = b
        # the edit adds 2 × direction to every non-English harmful row and leaves the harmless rows alone
        rows["after"][label] = {
            k: v + (2.0 * direction if label == "harmful" and k != "en" else 0) for k, v in b.items()
        }
    return rows


def test_edit_site_change():
    rows = make_site_rows()
    fig = viz.edit_site_change(rows, layer=5)
    moved_h, moved_s, *coords = fig.data
    assert [t.name for t in coords] == [
        "harmful, before edit",
        "harmful, after edit",
        "harmless, before edit",
        "harmless, after edit",
    ]
    assert list(moved_s.y) == [0.0, 0.0, 0.0] and moved_h.y[0] == 0.0  # English and harmless rows untouched
    b = rows["before"]["harmful"]["zh"]
    np.testing.assert_allclose(moved_h.y[1], 100 * 2.0 / b.norm(dim=1).mean().item(), rtol=1e-6)
    # coordinates: 0 = English harmless mean, 1 = English harmful mean; the edit adds 2 / span to the others
    hb, hs = rows["before"]["harmful"]["en"].double(), rows["before"]["harmless"]["en"].double()
    direction = hb.mean(0) - hs.mean(0)
    span = (direction @ direction).item()
    np.testing.assert_allclose(coords[0].y[0], 1.0, rtol=1e-9)
    np.testing.assert_allclose(coords[2].y[0], 0.0, atol=1e-9)
    np.testing.assert_allclose(
        np.asarray(coords[1].y) - np.asarray(coords[0].y), [0.0] + [2.0 * direction[0].item() / span] * 2, rtol=1e-6
    )
    np.testing.assert_allclose(coords[3].y, coords[2].y)
    assert "layer 5" in fig.layout.title.text and "residual stream" in fig.layout.title.text
    with pytest.raises(ValueError, match="'before' and 'after'"):
        viz.edit_site_change({"before": rows["before"]})
    with pytest.raises(ValueError, match="has no 'harmless' rows"):
        viz.edit_site_change({"before": {"harmful": rows["before"]["harmful"]}, "after": rows["after"]})
    bad = make_site_rows(langs=["zh", "bn"])
    with pytest.raises(ValueError, match="pivot language 'en' needs"):
        viz.edit_site_change(bad)


# --- edit ---------------------------------------------------------------------------------------------
def test_before_after_structure_and_distances():
    before, after = make_rows()
    labels = [f"L3 N{j}" for j in range(10)]
    fig = viz.before_after(before, after, neuron_labels=labels)
    scat = [t for t in fig.data if t.type == "scatter"]
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(scat) == 2 * 4 and len(bars) == 2
    assert [t.name for t in bars] == ["distance before edit", "distance after edit"]
    assert list(bars[0].x) == ["Chinese (zh)", "Bengali (bn)"]
    want = [float((before[k] - before["en"]).norm(dim=1).mean()) for k in ("zh", "bn")]
    np.testing.assert_allclose(bars[0].y, want, rtol=1e-6)
    np.testing.assert_allclose(bars[1].y, [w * 0.2 for w in want], rtol=1e-6)  # pulled 80 % onto English
    assert list(bars[1].text) == ["-80%", "-80%"]
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert legend == ["English (en), before edit", "English (en), after edit", "before edit", "after edit"]
    # profiles sorted by the English mean, descending; labels follow the sort
    en = scat[0]
    assert (np.diff(np.asarray(en.y)) <= 1e-12).all()
    assert en.customdata[0] == labels[int(before["en"].mean(0).argmax())]
    titles = [a.text for a in fig.layout.annotations]
    assert "Chinese (zh)" in titles and "Bengali (bn)" in titles
    assert "Language" in axis_title(fig, "xaxis3") and "‖" in axis_title(fig, "yaxis3")
    assert "mean activation" in axis_title(fig, "yaxis")


def test_before_after_numpy_and_single_language():
    before, after = make_rows(langs=["en", "th"])
    fig = viz.before_after({k: v.numpy() for k, v in before.items()}, {k: v.numpy() for k, v in after.items()})
    assert sum(t.type == "bar" for t in fig.data) == 2 and len(fig.data) == 6


@pytest.mark.parametrize(
    "mutate, kwargs, match",
    [
        (lambda b, a: a.pop("bn"), {}, "same languages.*only in before"),
        (lambda b, a: (b.pop("en"), a.pop("en")), {}, "pivot language 'en' missing"),
        (lambda b, a: (b.update(xx=b["zh"]), a.update(xx=a["zh"])), {}, "unknown language"),
        (lambda b, a: a.update(bn=a["bn"][:, :5]), {}, "differ in shape"),
        (lambda b, a: (b.update(bn=b["bn"][:4]), a.update(bn=a["bn"][:4])), {}, "parallel"),
        (lambda b, a: (b.update(bn=b["bn"][:, :4]), a.update(bn=a["bn"][:, :4])), {}, "same number of columns"),
        (lambda b, a: a.update(zh=a["zh"][0]), {}, "2 dimensions"),
        (lambda b, a: None, {"neuron_labels": ["a", "b"]}, "neuron_labels has 2"),
        (lambda b, a: None, {"pivot": "fr"}, "unknown pivot"),
        (lambda b, a: (b.clear(), a.clear()), {}, "empty"),
        (lambda b, a: (b.pop("zh"), b.pop("bn"), a.pop("zh"), a.pop("bn")), {}, "besides the pivot"),
    ],
)
def test_before_after_rejects_bad_input(mutate, kwargs, match):
    before, after = make_rows()
    before, after = dict(before), dict(after)
    mutate(before, after)
    with pytest.raises(ValueError, match=match):
        viz.before_after(before, after, **kwargs)


def test_representation_map():
    g = torch.Generator().manual_seed(1)
    d = 16
    fit_h = torch.randn(20, d, generator=g) + 3 * torch.eye(d)[0]
    fit_s = torch.randn(15, d, generator=g) - 3 * torch.eye(d)[0]
    before = {lang: torch.randn(6, d, generator=g) - 2 * torch.eye(d)[0] for lang in LANGS3}
    after = {lang: v + 4 * torch.eye(d)[0] for lang, v in before.items()}
    fig = viz.representation_map(before, after, fit_harmful=fit_h, fit_harmless=fit_s)
    assert [t.type for t in fig.data] == ["scatter"] * (1 + 2 * 3 + 2)
    assert fig.data[0].name == "English harmless (reference)"
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert legend[1:4] == ["English (en)", "Chinese (zh)", "Bengali (bn)"]
    assert fig.data[1].marker.symbol == "circle-open" and fig.data[2].marker.symbol == "circle"
    assert fig.data[1].legendgroup == fig.data[2].legendgroup == "en"
    assert "PC1" in axis_title(fig) and "variance" in axis_title(fig) and "PC2" in axis_title(fig, "yaxis")
    # PCA by hand: harmless on the left of PC1, the edit moves harmful rows right
    assert np.mean(fig.data[0].x) < 0
    assert np.mean(fig.data[2].x) > np.mean(fig.data[1].x)
    assert len(fig.layout.annotations) == 3  # one arrow per language
    x = torch.cat([fit_h, fit_s]).double()
    pc1 = torch.linalg.svd(x - x.mean(0), full_matrices=False).Vh[0]
    want = ((fit_s.double() - x.mean(0)) @ pc1).numpy()
    np.testing.assert_allclose(np.abs(fig.data[0].x), np.abs(want), rtol=1e-6)


def test_representation_map_rejects_bad_input():
    before, after = make_rows(m=8)
    fit = torch.rand(5, 8)
    with pytest.raises(ValueError, match="width 7"):
        viz.representation_map(before, after, fit_harmful=fit[:, :7], fit_harmless=fit)
    with pytest.raises(ValueError, match="need rows"):
        viz.representation_map(before, after, fit_harmful=fit[:0], fit_harmless=fit)
    with pytest.raises(ValueError, match="fit_harmless must have 2 dimensions"):
        viz.representation_map(before, after, fit_harmful=fit, fit_harmless=fit[0])
    with pytest.raises(ValueError, match="same languages"):
        viz.representation_map(before, {"en": after["en"]}, fit_harmful=fit, fit_harmless=fit)


# --- outcome ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("as_eval", [False, True])
def test_asr_bars(as_eval):
    before = make_evaluation(ASR_BEFORE) if as_eval else ASR_BEFORE
    after = make_evaluation(ASR_AFTER) if as_eval else {k: torch.tensor(v) for k, v in ASR_AFTER.items()}
    fig = viz.asr_bars(before, after)
    assert [t.type for t in fig.data] == ["bar", "bar"]
    assert [t.name for t in fig.data] == ["before edit", "after edit"]
    x = list(fig.data[0].x)
    assert x == ["English (en)", "Chinese (zh)", "Thai (th)", "Bengali (bn)", "Mean of non-English"]
    np.testing.assert_allclose(fig.data[0].y, [5, 30, 55, 70, 100 * (0.3 + 0.55 + 0.7) / 3])
    np.testing.assert_allclose(fig.data[1].y[-1], 100 * (0.1 + 0.15 + 0.2) / 3)
    assert list(fig.layout.yaxis.range) == [0, 100] and "%" in axis_title(fig, "yaxis")
    assert axis_title(fig) == "Language"
    assert fig.data[0].text[0] == "5%"


def test_asr_bars_rejects_bad_input():
    with pytest.raises(ValueError, match="same languages.*only in before.*'th'"):
        viz.asr_bars(ASR_BEFORE, {k: v for k, v in ASR_AFTER.items() if k != "th"})
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\].*percent"):
        viz.asr_bars({**ASR_BEFORE, "bn": 70}, ASR_AFTER)
    with pytest.raises(ValueError, match="unknown language"):
        viz.asr_bars({**ASR_BEFORE, "fr": 0.1}, {**ASR_AFTER, "fr": 0.1})
    with pytest.raises(ValueError, match="empty"):
        viz.asr_bars({}, {})
    with pytest.raises(ValueError, match="has no asr"):
        viz.asr_bars(make_evaluation({"en": None}), ASR_AFTER)


def test_outcome_bars_three_way_with_intervals():
    from safety_neurons.rates import wilson

    before = make_evaluation(
        {"en": 0.4, "zh": 0.5, "bn": 0.1}, {"en": 0.05, "zh": 0.1, "bn": 0.0}, {"zh": 0.2, "bn": 0.7}, n=20
    )
    after = make_evaluation(
        {"en": 0.6, "zh": 0.2, "bn": 0.0}, {"en": 0.05, "zh": 0.2, "bn": 0.9}, {"zh": 0.1, "bn": 0.1}, n=20
    )
    fig = viz.outcome_bars(before, after)
    comp, deg, ref, over = fig.data
    assert [t.type for t in fig.data] == ["bar"] * 4 and fig.layout.barmode == "stack"
    groups, states = (list(v) for v in comp.x)
    assert groups[::2] == ["English (en)", "Chinese (zh)", "Bengali (bn)", "mean (2 non-English; harmless: all 3)"]
    assert states[:2] == ["before", "after"]
    np.testing.assert_allclose(comp.y, [40, 60, 50, 20, 10, 0, 30, 10])
    np.testing.assert_allclose(deg.y, [0, 0, 20, 10, 70, 10, 45, 10])
    np.testing.assert_allclose(np.add(np.add(comp.y, deg.y), ref.y), 100)  # the stack covers every answer
    lo, hi = wilson(12, 40)  # pooled compliance before: 10 + 2 of 40
    np.testing.assert_allclose([comp.error_y.arrayminus[6], comp.error_y.array[6]], [30 - 100 * lo, 100 * hi - 30])
    assert list(comp.customdata[6]) == [12, 40]  # counts in the hover
    # over-refusal's mean is over every language, English included: (5 + 20 + 90) / 3 after
    np.testing.assert_allclose(over.y, [5, 5, 10, 20, 0, 90, 5, 115 / 3])
    assert "Judged answers" in fig.layout.title.text and "95% interval" in fig.layout.annotations[0].text
    assert "mean of the per-language shares" in fig.layout.title.text
    with pytest.raises(ValueError, match="must be an Evaluation"):
        viz.outcome_bars(ASR_BEFORE, ASR_AFTER)
    with pytest.raises(ValueError, match="same languages"):
        viz.outcome_bars(before, make_evaluation({"en": 0.1}))


def test_outcome_bars_mean_group_is_the_mean_of_the_languages_not_the_pooled_share():
    def ev(zh, bn, en_refused):
        return Evaluation(
            "phrase",
            {
                "en": LanguageResult(
                    "en", {"compliance": 1, "refusal": 1}, {"refusal": en_refused, "compliance": 4 - en_refused}
                ),
                "zh": LanguageResult("zh", {"compliance": zh, "refusal": 10 - zh}, {"refusal": 1, "compliance": 9}),
                "bn": LanguageResult("bn", {"compliance": bn, "degenerate": 3, "refusal": 27 - bn}, {"compliance": 30}),
            },
        )

    fig = viz.outcome_bars(ev(5, 3, 2), ev(1, 0, 0))
    comp, deg, ref, over = fig.data
    # compliance: zh 5/10, bn 3/30: mean 30%, pooled 8/40 = 20% (the pooled count stays in the hover)
    np.testing.assert_allclose(comp.y[-2:], [100 * (0.5 + 0.1) / 2, 100 * (0.1 + 0.0) / 2])
    assert list(comp.customdata[-2]) == [8, 40]
    np.testing.assert_allclose(deg.y[-2:], [100 * 0.1 / 2, 100 * 0.1 / 2])
    # over-refusal over every language: en 2/4, zh 1/10, bn 0/30 → mean 20%, pooled 3/44
    np.testing.assert_allclose(over.y[-2], 100 * (0.5 + 0.1 + 0.0) / 3)
    assert list(over.customdata[-2]) == [3, 44]
    assert min(over.error_y.array) >= 0 and min(over.error_y.arrayminus) >= 0


def answer_records(state: str) -> list[dict]:
    recs = []
    for lang in ("en", "th"):
        for i in range(4):
            changed = state == "after" and i in (1, 3)
            out = "refusal" if changed else "compliance"
            recs.append(
                dict(
                    id=f"h{i}",
                    lang=lang,
                    label="harmful",
                    prompt=f"<b>request</b> {i}",
                    answer="I can't help." if changed else f"Sure <script>x()</script> {i}",
                    outcome=out,
                    kind=None,
                    reason="",
                )
            )
        recs.append(
            dict(
                id="s0",
                lang=lang,
                label="harmless",
                prompt="hello",
                answer="hi " * 200,
                outcome="degenerate" if state == "after" else "compliance",
                kind="loop",
                reason="",
            )
        )
    return recs


def test_answer_examples_changed_first_and_escaped():
    before = Evaluation.from_answers("phrase", answer_records("before"))
    section = viz.answer_examples(before, answer_records("after"), per_lang=3, max_chars=50)
    assert isinstance(section, viz.HtmlSection)
    page = section.html
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;request&lt;/b&gt;" in page
    rows = re.findall(r"<tr( class=\"changed\")?>(.*?)</tr>", page.split("<tbody>")[1])
    assert len(rows) == 6 and [bool(c) for c, _ in rows] == [True, True, True] * 2  # 3 changed a language
    first = rows[0][1]
    assert "English (en)" in first and "3 of 5 verdicts changed" in first and "request&lt;/b&gt; 1" in first
    assert "harmless" in rows[2][1] and "degenerate · loop" in rows[2][1]  # harmful before harmless
    assert "hi hi" in page and "hi " * 30 not in page  # cut at max_chars
    with pytest.raises(ValueError, match="share no answer"):
        viz.answer_examples(before, [dict(r, id="other") for r in answer_records("after")])
    with pytest.raises(ValueError, match="missing"):
        viz.answer_examples(before, [{"id": 1}])


def test_utility_panel():
    kl = {"en": 0.001, "zh": torch.tensor([0.01, 0.03]), "bn": np.float64(0.05)}
    acc_b, acc_a = {"en": 0.6, "zh": 0.5}, {"en": 0.58, "zh": 0.5}
    orb = make_evaluation({k: 0.1 for k in LANGS3}, {"en": 0.02, "zh": 0.05, "bn": 0.1})
    ora = {"en": 0.03, "zh": 0.05, "bn": 0.08}
    fig = viz.utility_panel(kl, acc_b, acc_a, orb, ora)
    assert [t.type for t in fig.data] == ["bar"] * 5
    assert [t.name for t in fig.data] == ["KL(base ‖ edited)"] + ["before edit", "after edit"] * 2
    np.testing.assert_allclose(fig.data[0].y, [0.001, 0.02, 0.05])
    np.testing.assert_allclose(fig.data[3].y, [2, 5, 10])
    assert "KL" in axis_title(fig, "yaxis") and "nats" in axis_title(fig, "yaxis")
    assert "accuracy (%)" == axis_title(fig, "yaxis2") and "over-refusal (%)" == axis_title(fig, "yaxis3")
    assert all(axis_title(fig, f"xaxis{i}") == "Language" for i in ("", "2", "3"))
    with pytest.raises(ValueError, match="accuracy_before and accuracy_after"):
        viz.utility_panel(kl, acc_b, {"en": 0.5}, orb, ora)
    with pytest.raises(ValueError, match="must be ≥ 0"):
        viz.utility_panel({"en": -1.0}, acc_b, acc_a, orb, ora)
    with pytest.raises(ValueError, match="kl is empty"):
        viz.utility_panel({}, acc_b, acc_a, orb, ora)


def test_sweep_scatter():
    fig = viz.sweep_scatter(SWEEP)
    assert [t.type for t in fig.data] == ["scatter", "scatter"]
    assert [t.name for t in fig.data] == ["configurations", "chosen"]
    assert list(fig.data[0].text) == ["L10 r8", "", "L14 r32"]  # the chosen one is labelled by its star
    assert list(fig.data[1].text) == ["L12 r16"]
    np.testing.assert_allclose(fig.data[0].y, [40, 20, 10])
    assert list(fig.data[1].x) == [0.01] and fig.data[1].marker.symbol == "star"
    assert fig.layout.xaxis.type == "log" and "KL" in axis_title(fig) and "log" in axis_title(fig)
    assert "%" in axis_title(fig, "yaxis")
    assert "rank = 16" in fig.data[0].customdata[1]
    plain = viz.sweep_scatter([{k: v for k, v in r.items() if k != "chosen"} for r in SWEEP[:2]])
    assert len(plain.data) == 1 and plain.layout.xaxis.type == "linear"


@pytest.mark.parametrize(
    "records, match",
    [
        ([], "records is empty"),
        ({"label": "x"}, "sequence of mappings"),
        ([{"label": "a", "asr": 0.1}], r"missing \['kl'\]"),
        ([{"label": "a", "asr": 40, "kl": 0.1}], r"records\[0\]\['asr'\] must be a fraction"),
        ([{"label": 3, "asr": 0.4, "kl": 0.1}], "label'] must be a str"),
        ([{"label": "a", "asr": 0.4, "kl": -0.1}], "must be ≥ 0"),
    ],
)
def test_sweep_scatter_rejects_bad_input(records, match):
    with pytest.raises(ValueError, match=match):
        viz.sweep_scatter(records)


# --- report ---------------------------------------------------------------------------------------------
TABLE = """\
| language | ASR before | ASR after |
|:---|---:|:---:|
| Bengali (bn) | 70% | **20%** |
| Thai (th) | 55% | `15%` |
"""


def test_markdown_table_html():
    out = viz.markdown_table_html("Note: <b>x</b>\n\n" + TABLE)
    assert out.count("<table") == 1 and out.count("<tr>") == 3 and out.count("<th ") == 3
    assert '<th style="text-align:right">ASR before</th>' in out
    assert '<td style="text-align:center"><strong>20%</strong></td>' in out
    assert "<code>15%</code>" in out and "&lt;b&gt;x&lt;/b&gt;" in out
    assert "<td" in viz.markdown_table_html("| a | b |\n|---|---|\n| 1 |")  # short rows are padded
    with pytest.raises(ValueError, match="separator"):
        viz.markdown_table_html("| a | b |\n| 1 | 2 |")
    with pytest.raises(ValueError, match="has 3 cells"):
        viz.markdown_table_html("| a | b |\n|---|---|\n| 1 | 2 | 3 |")


def test_write_report(tmp_path):
    figs = [("Attack success rate", viz.asr_bars(ASR_BEFORE, ASR_AFTER)), ("Sweep", viz.sweep_scatter(SWEEP))]
    settings = {"model": "tiny", "layers": [10, 12], "z": torch.tensor([1.5, 2.0]), "path": tmp_path}
    out = viz.write_report(
        tmp_path / "sub" / "report.html", title="Safety <edit>", figures=figs, table_markdown=TABLE, settings=settings
    )
    assert isinstance(out, Path) and out.exists()
    page = out.read_text(encoding="utf-8")
    assert page.count("plotly.js v") == 1  # the bundle, inlined once
    # nothing is fetched at view time: no <script src=...> at all (the bundle itself merely mentions
    # cdn.plot.ly as a config default, so the test looks at script tags, not at the bare string)
    assert not re.search(r"<script[^>]*\bsrc\s*=", page)
    assert not re.search(r"""src\s*=\s*["']?(https?:)?//""", page)
    assert "<h1>Safety &lt;edit&gt;</h1>" in page
    assert "<h2>Attack success rate</h2>" in page and "<h2>Sweep</h2>" in page
    assert page.count('class="plotly-graph-div"') == 2
    assert "<table" in page and "Bengali (bn)" in page
    assert '"layers": [10, 12]' in page and '"z": [1.5, 2.0]' in page and '"model": "tiny"' in page
    assert 'id="view-attack-success-rate"' in page and 'id="view-sweep"' in page  # divs named by their titles


def test_write_report_html_sections(tmp_path):
    """An `HtmlSection` goes in as it is, in its place; plotly.js is inlined with the first plot."""
    section = viz.HtmlSection('<p class="mine">examples</p>')
    figs = [("Examples", section), ("Sweep", viz.sweep_scatter(SWEEP))]
    page = viz.write_report(tmp_path / "r.html", title="t", figures=figs).read_text(encoding="utf-8")
    assert page.index('<p class="mine">examples</p>') < page.index("plotly.js v") < page.index('id="view-sweep"')
    assert '<section id="view-examples"><h2>Examples</h2>' in page and page.count("plotly.js v") == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"figures": []}, "figures is empty"),
        ({"figures": [("a", {"data": []})]}, r"figures\[0\] must be"),
        ({"title": ""}, "title must be"),
        ({"table_markdown": "| a |\n| b |"}, "separator"),
        ({"settings": ["x"]}, "settings must be a mapping"),
    ],
)
def test_write_report_rejects_bad_input(tmp_path, kwargs, match):
    base = {"title": "t", "figures": [("a", go.Figure())]}
    with pytest.raises(ValueError, match=match):
        viz.write_report(tmp_path / "r.html", **{**base, **kwargs})


# --- headless render --------------------------------------------------------------------------------------
def find_chromium() -> str | None:
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_cmd(chromium: str, profile: Path, *extra: str) -> list[str]:
    return [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=20000",
        *extra,
    ]


def pipeline_report(out: Path) -> Path:
    """The report as `safety-neurons run` writes it (`pipeline._write_report` of a `RunResult`), from
    synthetic stages."""
    from types import SimpleNamespace

    from safety_neurons.pipeline import RunConfig, RunResult, _write_report

    g = torch.Generator().manual_seed(3)
    langs = list(LANGS)

    def evaluation(p_comply: float) -> Evaluation:
        recs = []
        for lang in langs:
            for i in range(6):
                for label in ("harmful", "harmless"):
                    u = torch.rand(1, generator=g).item()
                    out = (
                        ("compliance" if u < p_comply else "degenerate" if u < p_comply + 0.2 else "refusal")
                        if label == "harmful"
                        else ("refusal" if u < 0.1 else "compliance")
                    )
                    recs.append(
                        dict(
                            id=f"{label}-{i}",
                            lang=lang,
                            label=label,
                            prompt=f"<b>request {i}</b> ({lang})",
                            answer="I can't help with that." if out == "refusal" else f"Sure: <i>step</i> {i}",
                            outcome=out,
                            kind="echo" if out == "degenerate" else None,
                            reason="",
                        )
                    )
        return Evaluation.from_answers("phrase", recs)

    rows = {"before": {}, "after": {}}
    direction = torch.randn(16, generator=g)
    for label, shift in (("harmful", 1.0), ("harmless", 0.0)):
        rows["before"][label] = {x: torch.randn(6, 16, generator=g) + shift * direction for x in langs}
        rows["after"][label] = {
            x: v + (0.5 * direction if label == "harmful" else 0) for x, v in rows["before"][label].items()
        }
    kl = {x: 0.01 * (i + 1) for i, x in enumerate(langs)}
    acc = {x: 0.6 for x in langs}
    result = RunResult(
        config=RunConfig(),
        model={"name": "synthetic"},
        judge="phrase",
        ranking=make_ranking(langs=langs, layers=tuple(range(12)), d_mlp=120),
        selection=SWEEP,
        layers=[9],
        edit=SimpleNamespace(edits=[SimpleNamespace(layer=9)]),
        before=evaluation(0.5),
        after=evaluation(0.2),
        kl_first_token=kl,
        kl_first_4_tokens=kl,
        mc_before=acc,
        mc_after=acc,
        site_rows=rows,
    )
    return _write_report(out, result)


# What each view draws once plotly has run: (a word of its section id, a mark of its traces, how many at least)
VIEWS = [
    ("judged-answers", 'class="point"', 4 * 9 * 2),  # 4 bar traces × 9 groups × before/after
    ("example-answers", "<tr", 1 + 8 * 3),  # header + 3 examples a language
    ("utility", 'class="point"', 8 * 5),
    ("safety-neurons-per-layer", 'class="hm"', 1),
    ("shared-and-language-specific", 'class="hm"', 1),
    ("overlap", 'class="hm"', 1),
    ("what-the-edit-changes-at-its-site", 'class="point"', 8 * 6),
    ("plane", 'class="trace scatter', 8 * 2),
    ("layer-selection", 'class="trace scatter', 2),
]


def test_report_renders_in_headless_chromium(tmp_path):
    """The report opened in Chromium: every view of the run is drawn (its DOM holds the rendered plot
    and its traces' marks), and the screenshot shows the outcome bars' colours."""
    from PIL import Image

    chromium = find_chromium()
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI must run the headless render test")
        pytest.skip("chromium is not installed (/usr/bin/chromium)")
    page = pipeline_report(tmp_path)
    source = page.read_text(encoding="utf-8")
    assert "<script>x" not in source and "&lt;b&gt;request" in source  # answers escaped
    proc = subprocess.run(
        chromium_cmd(chromium, tmp_path / "profile-a", "--dump-dom", page.resolve().as_uri()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = proc.stdout
    assert "</html>" in dom, f"chromium printed no DOM (rc {proc.returncode}): {proc.stderr[-2000:]}"
    sections = {
        m.group(1): body
        for m, body in zip(re.finditer(r'<section id="([^"]+)"', dom), re.split(r'<section id="[^"]+"', dom)[1:])
    }
    assert len(sections) == len(VIEWS), list(sections)
    for (word, mark, least), (sid, body) in zip(VIEWS, sections.items()):
        assert word in sid, (word, sid)
        if mark != "<tr":
            assert '<svg class="main-svg"' in body, f"{sid}: plotly drew nothing"
        assert body.count(mark) >= least, (sid, mark, body.count(mark), least)

    png = tmp_path / "report.png"
    proc = subprocess.run(
        chromium_cmd(
            chromium, tmp_path / "profile-b", "--window-size=1400,2000", f"--screenshot={png}", page.resolve().as_uri()
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert png.exists(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert img.shape[:2] == (2000, 1400)
    assert (img.min(-1) < 245).mean() > 0.08  # not a blank page
    top = img[:1200]  # the results table and the outcome bars

    def pixels(hex_color: str) -> int:
        rgb = [int(hex_color[i : i + 2], 16) for i in (1, 3, 5)]
        return int((np.abs(top - rgb) < 18).all(-1).sum())

    for color in (
        viz.outcome.OUTCOME_COLORS["compliance"],
        viz.outcome.OUTCOME_COLORS["refusal"],
        viz.outcome.OUTCOME_COLORS["degenerate"],
    ):
        assert pixels(color) > 3000, (color, pixels(color))


def test_frontier_draws_one_line_per_method_with_english_marked():
    points = [
        {"method": "switch", "setting": "θ=0.3", "asr": 0.41, "over_refusal": 0.05, "en_asr": 0.27},
        {"method": "switch", "setting": "θ=0.6", "asr": 0.53, "over_refusal": 0.05},
        {"method": "linear", "asr": 0.38, "over_refusal": 0.20, "en_asr": 0.67},
    ]
    fig = viz.frontier(points)
    assert isinstance(fig, go.Figure)
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["switch", "linear"]
    assert list(lines[0].y) == pytest.approx([41.0, 53.0]) and list(lines[1].x) == pytest.approx([20.0])
    english = [t for t in fig.data if t.mode == "markers"]
    assert [list(t.y) for t in english] == [pytest.approx([27.0]), pytest.approx([67.0])]
    with pytest.raises(ValueError, match="points"):
        viz.frontier([])
    with pytest.raises(ValueError, match="asr"):
        viz.frontier([{"method": "m", "asr": 1.5, "over_refusal": 0.1}])
    with_bars = viz.frontier(
        [
            {
                "method": "m",
                "asr": 0.4,
                "over_refusal": 0.1,
                "asr_interval": (0.3, 0.5),
                "over_refusal_interval": (0.05, 0.2),
            }
        ]
    )
    line = with_bars.data[0]
    assert list(line.error_y.array) == pytest.approx([10.0]) and list(line.error_y.arrayminus) == pytest.approx([10.0])
    assert list(line.error_x.array) == pytest.approx([10.0]) and list(line.error_x.arrayminus) == pytest.approx([5.0])
    assert list(lines[0].error_y.array) == [0.0, 0.0]  # no interval given: no bar
    styled = viz.frontier(
        [
            {"method": "no edit", "asr": 0.57, "over_refusal": 0.05},
            {"method": "switch", "asr": 0.46, "over_refusal": 0.05},
            {"method": "oracle", "asr": 0.22, "over_refusal": 0.05, "reference": True},
        ]
    )
    base, switch, oracle = (t for t in styled.data if t.name)
    assert base.mode == "markers" and base.marker.symbol == "star" and base.marker.color == "#000000"
    assert oracle.line.dash == "dot" and switch.line.dash is None and switch.marker.color != base.marker.color
    assert [s.x0 for s in styled.layout.shapes] == pytest.approx([10.0])  # the budget: unedited + 5 points
    assert not viz.frontier(points, budget=None).layout.shapes
    with pytest.raises(ValueError, match="asr_interval"):
        viz.frontier([{"method": "m", "asr": 0.4, "over_refusal": 0.1, "asr_interval": (0.5, 0.3)}])
