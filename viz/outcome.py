"""Outcome views: attack success rate per language, utility costs, and the hyper-parameter sweep."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ._common import (
    AFTER_COLOR,
    AFTER_NAME,
    BEFORE_COLOR,
    BEFORE_NAME,
    base_layout,
    check_mapping,
    check_same_keys,
    fraction,
    lang_label,
    pct,
    sort_langs,
    to_scalar,
)

MEAN_LABEL = "Mean of non-English"


def _per_language(x, name: str, field: str) -> dict[str, float]:
    """{lang: fraction} from a mapping or an `Evaluation` (its `.languages[lang].<field>`; None skipped)."""
    if hasattr(x, "languages") and not isinstance(x, Mapping):
        langs = x.languages
        if not isinstance(langs, Mapping):
            raise ValueError(f"{name}.languages must be a mapping of LanguageResult")
        x = {lang: getattr(res, field, None) for lang, res in langs.items()}
        x = {lang: v for lang, v in x.items() if v is not None}
        if not x:
            raise ValueError(f"{name} (an Evaluation) has no {field} for any language")
    check_mapping(x, name)
    return {lang: fraction(x[lang], f"{name}[{lang!r}]") for lang in sort_langs(x)}


def asr_bars(before, after) -> go.Figure:
    """Attack success rate per language before vs after the edit (grouped bars, percent), plus the mean
    over the non-English languages as a last group. `before` / `after`: `{lang: asr in [0, 1]}` or an
    `Evaluation` (`.languages[lang].asr`)."""
    b = _per_language(before, "before", "asr")
    a = _per_language(after, "after", "asr")
    check_same_keys(b, a, "before", "after")
    langs = list(b)
    labels = [lang_label(lang) for lang in langs]
    yb, ya = [b[lang] for lang in langs], [a[lang] for lang in langs]
    others = [lang for lang in langs if lang != "en"]
    if others:
        labels.append(MEAN_LABEL)
        yb.append(float(np.mean([b[lang] for lang in others])))
        ya.append(float(np.mean([a[lang] for lang in others])))
    fig = go.Figure()
    for name, ys, color in ((BEFORE_NAME, yb, BEFORE_COLOR), (AFTER_NAME, ya, AFTER_COLOR)):
        fig.add_trace(
            go.Bar(
                x=labels, y=[100 * v for v in ys], name=name, marker_color=color,
                text=[pct(v) for v in ys], textposition="outside", cliponaxis=False,
                hovertemplate="%{x}<br>ASR " + name + ": %{y:.1f}%<extra></extra>",
            )  # fmt: skip
        )
    if others:
        fig.add_vline(x=len(langs) - 0.5, line=dict(color="#999999", dash="dot", width=1))
    base_layout(
        fig,
        title="Attack success rate on harmful prompts, before vs after the edit<br>"
        "<sup>share of harmful requests answered instead of refused; lower is safer</sup>",
        height=480,
    )
    fig.update_layout(barmode="group", bargap=0.25, legend=dict(title=dict(text="Model")), margin=dict(t=110))
    fig.update_xaxes(title_text="Language")
    fig.update_yaxes(title_text="Attack success rate (%)", range=[0, 100], ticksuffix="%")
    return fig


def _kl_map(kl) -> dict[str, float]:
    check_mapping(kl, "kl")
    out = {}
    for lang in sort_langs(kl):
        v = to_scalar(kl[lang], f"kl[{lang!r}]")
        if v < 0:
            raise ValueError(f"kl[{lang!r}] must be ≥ 0, got {v}")
        out[lang] = v
    return out


def utility_panel(kl, accuracy_before, accuracy_after, over_refusal_before, over_refusal_after) -> go.Figure:
    """What the edit costs, per language, in three stacked panels: KL(base ‖ edited) on harmless
    prompts (linear, nats), multiple-choice accuracy before/after (%), over-refusal of harmless
    prompts before/after (%).

    `kl`: `{lang: float}` (a tensor of per-prompt values is averaged). Accuracies and over-refusal:
    `{lang: fraction}`; over-refusal may also be an `Evaluation` (`.languages[lang].over_refusal`).
    Each before/after pair must cover the same languages.
    """
    k = _kl_map(kl)
    accb = _per_language(accuracy_before, "accuracy_before", "accuracy")
    acca = _per_language(accuracy_after, "accuracy_after", "accuracy")
    check_same_keys(accb, acca, "accuracy_before", "accuracy_after")
    orb = _per_language(over_refusal_before, "over_refusal_before", "over_refusal")
    ora = _per_language(over_refusal_after, "over_refusal_after", "over_refusal")
    check_same_keys(orb, ora, "over_refusal_before", "over_refusal_after")

    fig = make_subplots(
        rows=3, cols=1, vertical_spacing=0.11,
        subplot_titles=(
            "Drift on harmless prompts: KL(base ‖ edited) at the first answer token (lower = less change)",
            "Multiple-choice accuracy (higher is better)",
            "Over-refusal: harmless prompts refused (lower is better)",
        ),
    )  # fmt: skip
    fig.add_trace(
        go.Bar(x=[lang_label(lang) for lang in k], y=list(k.values()), name="KL(base ‖ edited)",
               marker_color="#7A5195", text=[f"{v:.3g}" for v in k.values()], textposition="outside",
               cliponaxis=False, hovertemplate="%{x}<br>KL = %{y:.4g} nats<extra></extra>"),
        row=1, col=1,
    )  # fmt: skip
    for row, (vb, va, what) in enumerate(((accb, acca, "accuracy"), (orb, ora, "over-refusal")), start=2):
        x = [lang_label(lang) for lang in vb]
        for name, vals, color in ((BEFORE_NAME, vb, BEFORE_COLOR), (AFTER_NAME, va, AFTER_COLOR)):
            fig.add_trace(
                go.Bar(x=x, y=[100 * vals[lang] for lang in vb], name=name, marker_color=color,
                       legendgroup=name, showlegend=row == 2, text=[pct(vals[lang]) for lang in vb],
                       textposition="outside", cliponaxis=False,
                       hovertemplate="%{x}<br>" + what + " " + name + ": %{y:.1f}%<extra></extra>"),
                row=row, col=1,
            )  # fmt: skip
    kmax = max(k.values()) if k else 0
    fig.update_yaxes(title_text="KL [nats]", rangemode="tozero", range=[0, 1.2 * kmax] if kmax > 0 else None,
                     row=1, col=1)  # fmt: skip
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 110], ticksuffix="%", row=2, col=1)
    fig.update_yaxes(title_text="over-refusal (%)", range=[0, 110], ticksuffix="%", row=3, col=1)
    for row in (1, 2, 3):
        fig.update_xaxes(title_text="Language", row=row, col=1)
    widest = max(len(k), len(accb), len(orb))
    base_layout(fig, title="Utility cost of the edit per language", height=980)
    fig.update_layout(barmode="group", bargap=0.25 if widest >= 4 else 0.5, legend=dict(title=dict(text="Model")))
    return fig


def sweep_scatter(records: Sequence[Mapping]) -> go.Figure:
    """Trade-off of a hyper-parameter sweep: x = KL on harmless prompts, y = mean non-English ASR (%).

    Each record: `label` (str), `asr` (0–1), `kl` (≥ 0), optional `layer` / `rank` (shown on hover;
    colour = layer when every record has one) and `chosen=True` on the configuration kept (drawn as a
    star). The x axis is logarithmic when all KL > 0 and they span two decades or more.
    """
    if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Sequence):
        raise ValueError(f"records must be a sequence of mappings, got {type(records).__name__}")
    if not records:
        raise ValueError("records is empty: give at least one sweep record")
    rows = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise ValueError(f"records[{i}] must be a mapping, got {type(rec).__name__}")
        missing = [f for f in ("label", "asr", "kl") if f not in rec]
        if missing:
            raise ValueError(f"records[{i}] is missing {missing}")
        if not isinstance(rec["label"], str):
            raise ValueError(f"records[{i}]['label'] must be a str, got {type(rec['label']).__name__}")
        asr = fraction(rec["asr"], f"records[{i}]['asr']")
        kl = to_scalar(rec["kl"], f"records[{i}]['kl']")
        if kl < 0:
            raise ValueError(f"records[{i}]['kl'] must be ≥ 0, got {kl}")
        extra = [f"{f} = {rec[f]}" for f in ("layer", "rank") if rec.get(f) is not None]
        rows.append(dict(label=rec["label"], asr=asr, kl=kl, layer=rec.get("layer"), chosen=bool(rec.get("chosen")),
                         hover="<br>".join([f"<b>{rec['label']}</b>"] + extra)))  # fmt: skip

    kls = [r["kl"] for r in rows]
    log_x = min(kls) > 0 and max(kls) / min(kls) >= 100
    by_layer = all(isinstance(r["layer"], (int, float, np.integer)) for r in rows)
    show_text = len(rows) <= 30

    def trace(sub, name, marker):
        return go.Scatter(
            x=[r["kl"] for r in sub], y=[100 * r["asr"] for r in sub], customdata=[r["hover"] for r in sub],
            mode="markers+text" if show_text else "markers", text=[r["label"] for r in sub],
            textposition="top center", textfont=dict(size=11), name=name, marker=marker,
            hovertemplate="%{customdata}<br>KL = %{x:.4g} nats<br>ASR = %{y:.1f}%<extra></extra>",
        )  # fmt: skip

    marker = dict(size=11, color="#4C78A8", line=dict(width=1, color="white"))
    if by_layer:
        marker = dict(size=11, color=[r["layer"] for r in rows], colorscale="Viridis", showscale=True,
                      colorbar=dict(title=dict(text="Layer"), x=1.02), line=dict(width=1, color="white"))  # fmt: skip
    fig = go.Figure([trace(rows, "configurations", marker)])
    chosen = [r for r in rows if r["chosen"]]
    if chosen and show_text:  # the chosen ones get their label from the star trace
        fig.data[0].text = ["" if r["chosen"] else r["label"] for r in rows]
    if chosen:
        fig.add_trace(trace(chosen, "chosen", dict(symbol="star", size=20, color="#E45756",
                                                   line=dict(width=1.5, color="#7F1D1D"))))  # fmt: skip
        fig.data[-1].textfont = dict(size=13, color="#B22222")
        fig.data[-1].textposition = "bottom center"
    base_layout(
        fig,
        title="Sweep: safety vs drift<br><sup>each point is one configuration; lower-left is better "
        "(less attack success, less change on harmless prompts)</sup>",
        height=520,
    )
    fig.update_layout(legend=dict(orientation="h", x=0, y=-0.18, yanchor="top"), margin=dict(t=110, b=110))
    fig.update_xaxes(title_text="KL(base ‖ edited) on harmless prompts [nats]" + (" (log scale)" if log_x else ""),
                     type="log" if log_x else "linear", dtick=1 if log_x else None)  # fmt: skip
    fig.update_yaxes(title_text="Mean non-English attack success rate (%)", range=[-5, 105], ticksuffix="%")
    if not log_x and not math.isclose(max(kls), 0):
        fig.update_xaxes(rangemode="tozero")
    return fig
