"""The plotting package `viz`: figure structure, input checks, the HTML report, and a headless render."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import viz
from safety_neurons.evaluation import Evaluation, LanguageResult
from safety_neurons.neurons import SafetyNeurons
from safety_neurons.prompts import LANG_NAMES, LANGS

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


def make_evaluation(asr: dict, over_refusal: dict | None = None) -> Evaluation:
    over_refusal = over_refusal or {}
    langs = {k: LanguageResult(k, 10, 10, asr=v, over_refusal=over_refusal.get(k)) for k, v in asr.items()}
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
def test_language_tables_match_safety_neurons():
    assert viz.LANGS == LANGS
    assert viz.LANG_NAMES == LANG_NAMES
    assert set(viz.LANG_COLORS) == set(LANGS)
    assert viz.lang_label("bn") == "Bengali (bn)"


def test_import_is_light():
    code = ("import sys, viz; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('safety_neurons', 'transformers', 'transformer_lens', 'torch')]; print(bad); assert not bad")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
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
    assert fig.data[0].zmid == 0 and fig.data[0].zmin == -fig.data[0].zmax
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
    assert fig.data[0].zmin == 0 and fig.data[0].zmax == 1
    assert axis_title(fig) and axis_title(fig, "yaxis")
    r.selected = r.selected[:, :2]
    with pytest.raises(ValueError, match="selected has shape"):
        viz.jaccard_heatmap(r)


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


def example_figures():
    r = make_ranking(langs=["en", "zh", "th", "bn"], layers=tuple(range(8)), d_mlp=200)
    before, after = make_rows(langs=["en", "zh", "th", "bn"], n=12, m=24)
    g = torch.Generator().manual_seed(2)
    fit_h, fit_s = torch.randn(30, 12, generator=g) + 2, torch.randn(30, 12, generator=g) - 2
    rb = {k: torch.randn(12, 12, generator=g) for k in ["en", "th", "bn"]}
    ra = {k: v + 2 for k, v in rb.items()}
    return [
        ("Attack success rate", viz.asr_bars(ASR_BEFORE, ASR_AFTER)),
        ("Safety neurons per layer", viz.neuron_counts(r)),
        ("Safety-neuron scores", viz.neuron_heatmap(r, top=32)),
        ("Overlap between languages", viz.jaccard_heatmap(r)),
        ("Activations before and after", viz.before_after(before, after)),
        ("Representation map", viz.representation_map(rb, ra, fit_harmful=fit_h, fit_harmless=fit_s)),
        ("Utility", viz.utility_panel({"en": 0.01, "th": 0.04}, {"en": 0.6}, {"en": 0.58},
                                      {"en": 0.02, "th": 0.1}, {"en": 0.03, "th": 0.1})),
        ("Sweep", viz.sweep_scatter(SWEEP)),
    ]  # fmt: skip


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
    out = viz.write_report(tmp_path / "sub" / "report.html", title="Safety <edit>", figures=figs,
                           table_markdown=TABLE, settings=settings)  # fmt: skip
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
def decode_png(data: bytes) -> np.ndarray:
    """A minimal PNG decoder (8-bit grey / RGB / RGBA, not interlaced) → uint8 array [H, W, channels].

    Rows are un-filtered along anti-diagonals: pixel (y, x) depends on (y, x-1), (y-1, x) and (y-1, x-1),
    so every pixel of one diagonal y + x = k can be reconstructed at once with numpy.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, color, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    assert depth == 8 and interlace == 0, f"unsupported PNG: depth {depth}, interlace {interlace}"
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, 1 + width * channels)
    filters = raw[:, 0].astype(np.int32)
    src = raw[:, 1:].reshape(height, width, channels).astype(np.int32)
    if (filters <= 2).all():  # None / Sub / Up only: row by row, fully vectorised
        out = np.zeros((height + 1, width, channels), np.int32)
        for y in range(height):
            f, row = filters[y], src[y]
            out[y + 1] = row if f == 0 else np.cumsum(row, 0) % 256 if f == 1 else (row + out[y]) % 256
        return out[1:].astype(np.uint8)
    out = np.zeros((height + 1, width + 1, channels), np.int32)  # a zero row and column in front
    for k in range(height + width - 1):
        ys = np.arange(max(0, k - width + 1), min(height, k + 1))
        xs = k - ys
        a, b, c = out[ys + 1, xs], out[ys, xs + 1], out[ys, xs]
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        f = filters[ys][:, None]
        pred = np.select([f == 1, f == 2, f == 3, f == 4], [a, b, (a + b) // 2, paeth], 0)
        out[ys + 1, xs + 1] = (src[ys, xs] + pred) % 256
    return out[1:, 1:].astype(np.uint8)


def test_decode_png_roundtrip():
    """The decoder against hand-made PNGs that use every filter type."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (7, 5, 3), dtype=np.int32)
    rows = []
    for y in range(7):
        f = y % 5
        left = np.vstack([np.zeros((1, 3), np.int32), img[y, :-1]])
        up = img[y - 1] if y else np.zeros_like(img[y])
        ul = np.vstack([np.zeros((1, 3), np.int32), up[:-1]])
        p = left + up - ul
        pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - ul)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, ul))
        pred = [0 * left, left, up, (left + up) // 2, paeth][f]
        rows.append(bytes([f]) + ((img[y] - pred) % 256).astype(np.uint8).tobytes())

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 5, 7, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))  # fmt: skip
    np.testing.assert_array_equal(decode_png(png), img.astype(np.uint8))


def find_chromium() -> str | None:
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(html: Path, png: Path, profile: Path, chromium: str) -> np.ndarray:
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        f"--user-data-dir={profile}", "--window-size=1400,2400", "--virtual-time-budget=15000",
        f"--screenshot={png}", html.resolve().as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert png.exists(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return decode_png(png.read_bytes())


def ink(img: np.ndarray) -> float:
    """Share of pixels that are not (near) white."""
    return float((img[..., :3].min(-1) < 245).mean())


def test_report_renders_in_headless_chromium(tmp_path):
    chromium = find_chromium()
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI must run the headless render test")
        pytest.skip("chromium is not installed (/usr/bin/chromium)")
    figs = example_figures()
    page = viz.write_report(tmp_path / "report.html", title="Closing the cross-lingual safety gap",
                            figures=figs, table_markdown=TABLE, settings={"model": "tiny", "top_k": 64})  # fmt: skip
    # the same heading, table and settings with no figure: what an empty render looks like
    from viz.report import _page

    empty = tmp_path / "empty.html"
    empty.write_text(_page("Closing the cross-lingual safety gap", table_html=viz.markdown_table_html(TABLE),
                           sections=[f"<section><h2>{t}</h2></section>" for t, _ in figs],
                           settings_text='{"model": "tiny", "top_k": 64}'), encoding="utf-8")  # fmt: skip
    full = screenshot(page, tmp_path / "report.png", tmp_path / "profile-a", chromium)
    blank = screenshot(empty, tmp_path / "empty.png", tmp_path / "profile-b", chromium)
    assert full.shape[:2] == blank.shape[:2] == (2400, 1400)
    ink_full, ink_blank = ink(full), ink(blank)
    assert ink_full > ink_blank + 0.04 and ink_full > 3 * ink_blank, (ink_full, ink_blank)
    # the first figure (ASR bars) sits in the top third: its orange / blue bars must be there
    top = full[:900, :, :3].astype(int)
    blue = (abs(top[..., 0] - 0x2F) < 20) & (abs(top[..., 1] - 0x6D) < 20) & (abs(top[..., 2] - 0xB5) < 20)
    orange = (abs(top[..., 0] - 0xE4) < 20) & (abs(top[..., 1] - 0x83) < 20) & (abs(top[..., 2] - 0x5E) < 20)
    assert blue.sum() > 2000 and orange.sum() > 2000, (blue.sum(), orange.sum())
