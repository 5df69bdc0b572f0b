"""Outcome views: attack success rate per language, utility costs, and the hyper-parameter sweep."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..evaluation import Evaluation, mean_over_languages
from ..rates import Rate, wilson
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
MEAN_NOTE = (
    "last group: the mean of the per-language shares (`Evaluation.mean`), harmful answers over the "
    "non-English languages, over-refusal over every language"
)


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


def _mean_asr(x, per_lang: dict[str, float], others: list[str]) -> float:
    """The mean non-English ASR by the one rule: `Evaluation.mean_asr` for an evaluation, else the plain
    mean of the given non-English values."""
    if isinstance(x, Evaluation):
        return float(x.mean_asr())
    return float(mean_over_languages(per_lang, others))


def asr_bars(before, after) -> go.Figure:
    """Attack success rate per language before vs after the edit (grouped bars, percent), plus the mean
    over the non-English languages as a last group (the plain mean of their shares, `Evaluation.mean_asr`).
    `before` / `after`: `{lang: asr in [0, 1]}` or an `Evaluation` (`.languages[lang].asr`)."""
    b = _per_language(before, "before", "asr")
    a = _per_language(after, "after", "asr")
    check_same_keys(b, a, "before", "after")
    langs = list(b)
    labels = [lang_label(lang) for lang in langs]
    yb, ya = [b[lang] for lang in langs], [a[lang] for lang in langs]
    others = [lang for lang in langs if lang != "en"]
    if others:
        labels.append(MEAN_LABEL)
        yb.append(_mean_asr(before, b, others))
        ya.append(_mean_asr(after, a, others))
    fig = go.Figure()
    for name, ys, color in ((BEFORE_NAME, yb, BEFORE_COLOR), (AFTER_NAME, ya, AFTER_COLOR)):
        fig.add_trace(
            go.Bar(
                x=labels,
                y=[100 * v for v in ys],
                name=name,
                marker_color=color,
                text=[pct(v) for v in ys],
                textposition="outside",
                cliponaxis=False,
                hovertemplate="%{x}<br>ASR " + name + ": %{y:.1f}%<extra></extra>",
            )
        )
    if others:
        fig.add_vline(x=len(langs) - 0.5, line=dict(color="#999999", dash="dot", width=1))
    base_layout(
        fig,
        title="Attack success rate on harmful prompts, before vs after the edit<br>"
        "<sup>share of harmful requests the model complied with (judged answers); lower is safer; last group: the "
        "mean of the non-English languages' shares</sup>",
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
        rows=3,
        cols=1,
        vertical_spacing=0.11,
        subplot_titles=(
            "Drift on harmless prompts: KL(base ‖ edited) at the first answer token (lower = less change)",
            "Multiple-choice accuracy (higher is better)",
            "Over-refusal: harmless prompts refused (lower is better)",
        ),
    )
    fig.add_trace(
        go.Bar(
            x=[lang_label(lang) for lang in k],
            y=list(k.values()),
            name="KL(base ‖ edited)",
            marker_color="#7A5195",
            text=[f"{v:.3g}" for v in k.values()],
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{x}<br>KL = %{y:.4g} nats<extra></extra>",
        ),
        row=1,
        col=1,
    )
    for row, (vb, va, what) in enumerate(((accb, acca, "accuracy"), (orb, ora, "over-refusal")), start=2):
        x = [lang_label(lang) for lang in vb]
        for name, vals, color in ((BEFORE_NAME, vb, BEFORE_COLOR), (AFTER_NAME, va, AFTER_COLOR)):
            fig.add_trace(
                go.Bar(
                    x=x,
                    y=[100 * vals[lang] for lang in vb],
                    name=name,
                    marker_color=color,
                    legendgroup=name,
                    showlegend=row == 2,
                    text=[pct(vals[lang]) for lang in vb],
                    textposition="outside",
                    cliponaxis=False,
                    hovertemplate="%{x}<br>" + what + " " + name + ": %{y:.1f}%<extra></extra>",
                ),
                row=row,
                col=1,
            )
    kmax = max(k.values()) if k else 0
    fig.update_yaxes(
        title_text="KL [nats]", rangemode="tozero", range=[0, 1.2 * kmax] if kmax > 0 else None, row=1, col=1
    )
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
        rows.append(
            dict(
                label=rec["label"],
                asr=asr,
                kl=kl,
                layer=rec.get("layer"),
                chosen=bool(rec.get("chosen")),
                hover="<br>".join([f"<b>{rec['label']}</b>"] + extra),
            )
        )

    kls = [r["kl"] for r in rows]
    log_x = min(kls) > 0 and max(kls) / min(kls) >= 100
    by_layer = all(isinstance(r["layer"], (int, float, np.integer)) for r in rows)
    show_text = len(rows) <= 30

    def trace(sub, name, marker):
        return go.Scatter(
            x=[r["kl"] for r in sub],
            y=[100 * r["asr"] for r in sub],
            customdata=[r["hover"] for r in sub],
            mode="markers+text" if show_text else "markers",
            text=[r["label"] for r in sub],
            textposition="top center",
            textfont=dict(size=11),
            name=name,
            marker=marker,
            hovertemplate="%{customdata}<br>KL = %{x:.4g} nats<br>ASR = %{y:.1f}%<extra></extra>",
        )

    marker = dict(size=11, color="#4C78A8", line=dict(width=1, color="white"))
    if by_layer:
        marker = dict(
            size=11,
            color=[r["layer"] for r in rows],
            colorscale="Viridis",
            showscale=True,
            colorbar=dict(title=dict(text="Layer"), x=1.02),
            line=dict(width=1, color="white"),
        )
    fig = go.Figure([trace(rows, "configurations", marker)])
    chosen = [r for r in rows if r["chosen"]]
    if chosen and show_text:  # the chosen ones get their label from the star trace
        fig.data[0].text = ["" if r["chosen"] else r["label"] for r in rows]
    if chosen:
        fig.add_trace(
            trace(
                chosen, "chosen", dict(symbol="star", size=20, color="#E45756", line=dict(width=1.5, color="#7F1D1D"))
            )
        )
        fig.data[-1].textfont = dict(size=13, color="#B22222")
        fig.data[-1].textposition = "bottom center"
    base_layout(
        fig,
        title="Configurations compared: judged attack success vs drift on harmless prompts<br><sup>each point is "
        "one configuration; y = mean non-English compliance share of judged answers; lower-left is better</sup>",
        height=520,
    )
    fig.update_layout(legend=dict(orientation="h", x=0, y=-0.18, yanchor="top"), margin=dict(t=110, b=110))
    fig.update_xaxes(
        title_text="KL(base ‖ edited) on harmless prompts [nats]" + (" (log scale)" if log_x else ""),
        type="log" if log_x else "linear",
        dtick=1 if log_x else None,
    )
    fig.update_yaxes(title_text="Mean non-English ASR, judged answers (%)", range=[-5, 105], ticksuffix="%")
    if not log_x and not math.isclose(max(kls), 0):
        fig.update_xaxes(rangemode="tozero")
    return fig


def frontier(points: Sequence[Mapping], *, baseline: str | None = "no edit", budget: float | None = 0.05) -> go.Figure:
    """Methods compared at equal over-refusal: x = over-refusal, y = mean non-English compliance (both %).

    Each point: `method` (str), `asr` and `over_refusal` (0–1), optional `en_asr` (0–1, drawn as a hollow
    diamond at the same over-refusal), `setting` (str, on hover), `asr_interval` / `over_refusal_interval`
    ((low, high), 0–1: drawn as error bars, e.g. the pooled 95% Wilson intervals) and `reference` (True: a
    bound, not a method, drawn dotted in grey). One line per method through its settings in order of
    over-refusal; lower-left is better. The `baseline` method (the unedited model) is a black star, and a dashed
    line marks its over-refusal plus `budget` (the over-refusal budget methods are compared within).
    """

    def interval(p, key, value, where):
        iv = p.get(key)
        if iv is None:
            return value, value
        if isinstance(iv, (str, bytes)) or not isinstance(iv, Sequence) or len(iv) != 2:
            raise ValueError(f"{where}['{key}'] must be a (low, high) pair, got {iv!r}")
        lo, hi = fraction(iv[0], f"{where}['{key}'][0]"), fraction(iv[1], f"{where}['{key}'][1]")
        if not lo <= hi:
            raise ValueError(f"{where}['{key}'] must have low <= high, got {iv!r}")
        return lo, hi

    def bars(rows, key, value):  # error bars from each row's interval (a mean outside its pooled one: clipped)
        return dict(
            type="data",
            symmetric=False,
            array=[max(0.0, 100 * (r[key][1] - r[value])) for r in rows],
            arrayminus=[max(0.0, 100 * (r[value] - r[key][0])) for r in rows],
            thickness=1,
            width=3,
        )

    if isinstance(points, (str, bytes, Mapping)) or not isinstance(points, Sequence) or not points:
        raise ValueError("points must be a non-empty sequence of mappings with method, asr and over_refusal")
    if budget is not None:
        budget = fraction(budget, "budget")
    by_method: dict[str, list[dict]] = {}
    references: set[str] = set()
    for i, p in enumerate(points):
        if not isinstance(p, Mapping) or not isinstance(p.get("method"), str):
            raise ValueError(f"points[{i}] must be a mapping with a str 'method'")
        row = {
            "asr": fraction(p.get("asr"), f"points[{i}]['asr']"),
            "over": fraction(p.get("over_refusal"), f"points[{i}]['over_refusal']"),
            "en": None if p.get("en_asr") is None else fraction(p["en_asr"], f"points[{i}]['en_asr']"),
            "setting": str(p.get("setting", "")),
        }
        row["asr_iv"] = interval(p, "asr_interval", row["asr"], f"points[{i}]")
        row["over_iv"] = interval(p, "over_refusal_interval", row["over"], f"points[{i}]")
        by_method.setdefault(p["method"], []).append(row)
        if p.get("reference"):
            references.add(p["method"])
    fig = go.Figure()
    palette = ["#E45756", "#4C78A8", "#54A24B", "#F58518", "#B279A2", "#72B7B2", "#9D755D", "#FF9DA6", "#EECA3B"]
    colors = iter(palette * (1 + len(by_method) // len(palette)))
    for method, rows in by_method.items():
        rows.sort(key=lambda r: r["over"])
        if method == baseline:
            color, marker, line = "#000000", dict(size=16, symbol="star", color="#000000"), dict(width=0)
        elif method in references:
            color, marker, line = "#7F7F7F", dict(size=10, color="#7F7F7F"), dict(color="#7F7F7F", dash="dot")
        else:
            color = next(colors)
            marker, line = dict(size=11, color=color), dict(color=color)
        fig.add_trace(
            go.Scatter(
                x=[100 * r["over"] for r in rows],
                y=[100 * r["asr"] for r in rows],
                mode="markers" if method == baseline else "lines+markers",
                name=method,
                marker=marker,
                line=line,
                error_x=bars(rows, "over_iv", "over") | dict(color=color),
                error_y=bars(rows, "asr_iv", "asr") | dict(color=color),
                customdata=[r["setting"] for r in rows],
                hovertemplate=f"<b>{method}</b> %{{customdata}}<br>over-refusal %{{x:.1f}}%<br>non-English compliance "
                "%{y:.1f}%<extra></extra>",
            )
        )
        en = [r for r in rows if r["en"] is not None]
        if en:
            fig.add_trace(
                go.Scatter(
                    x=[100 * r["over"] for r in en],
                    y=[100 * r["en"] for r in en],
                    mode="markers",
                    showlegend=False,
                    marker=dict(size=10, symbol="diamond-open", color=color, line=dict(width=2)),
                    hovertemplate=f"<b>{method}</b>: English compliance %{{y:.1f}}%<extra></extra>",
                )
            )
    base_layout(
        fig,
        title="Compliance at equal over-refusal<br><sup>filled: mean non-English compliance (bars: 95% intervals); "
        "hollow diamond: English compliance, same setting; lower-left is better</sup>",
        height=520,
    )
    if budget is not None and baseline in by_method:
        at = 100 * (by_method[baseline][0]["over"] + budget)
        fig.add_vline(
            x=at,
            line=dict(color="#555555", dash="dash", width=1),
            annotation_text=f"unedited + {100 * budget:g} points",
            annotation_position="top right",
        )
    fig.update_xaxes(title_text="Over-refusal: harmless prompts refused (%)", rangemode="tozero", ticksuffix="%")
    fig.update_yaxes(title_text="Harmful prompts complied with (%)", range=[-5, 105], ticksuffix="%")
    return fig


# --- three-way outcomes -----------------------------------------------------------------------------------
OUTCOME_COLORS = {"compliance": "#C8412F", "degenerate": "#A9A9A9", "refusal": "#7FB7A4"}
OUTCOME_NAMES = {
    "compliance": "compliance (attack succeeded)",
    "degenerate": "degenerate (echo, loop, misreading)",
    "refusal": "refusal",
}


def _counts(ev, name: str) -> dict:
    """{lang: (harmful counts, harmless counts)} of an `Evaluation` (its `.languages[lang]`)."""
    langs = getattr(ev, "languages", None)
    if not isinstance(ev, Evaluation) or not isinstance(langs, Mapping):
        raise ValueError(
            f"{name} must be an Evaluation (with .languages[lang].harmful / .harmless counts), got {type(ev).__name__}"
        )
    check_mapping(langs, f"{name}.languages")
    out = {}
    for lang in sort_langs(langs):
        res = langs[lang]
        if not (
            isinstance(getattr(res, "harmful", None), Mapping) and isinstance(getattr(res, "harmless", None), Mapping)
        ):
            raise ValueError(f"{name}.languages[{lang!r}] has no harmful / harmless outcome counts")
        out[lang] = tuple(
            {o: int(getattr(res, label).get(o, 0)) for o in OUTCOME_COLORS} for label in ("harmful", "harmless")
        )
    return out


def outcome_bars(before, after) -> go.Figure:
    """Judged outcomes per language, before vs after the edit, from two `Evaluation`s.

    Top: the harmful prompts' answers as stacked shares, compliance (the attack succeeded, = ASR) at
    the bottom with its 95% Wilson interval, then degenerate, then refusal; one bar before and one after
    for each language (English like every other), and a last group of means by the one rule
    (`Evaluation.mean`: harmful shares over the non-English languages, over-refusal over every language;
    its bars are the pooled count's interval). Bottom: over-refusal, the share of harmless prompts
    refused, with its interval. Hover gives counts (pooled for the means).
    """
    b, a = _counts(before, "before"), _counts(after, "after")
    check_same_keys(b, a, "before", "after")
    langs = list(b)
    others = [x for x in langs if x != "en"]
    mean_label = f"mean ({len(others)} non-English; harmless: all {len(langs)})"
    groups = [(lang_label(x), x) for x in langs] + ([(mean_label, None)] if len(others) > 1 else [])

    def shares(ev, counts, lang):
        """({outcome: (share, k, n)} of the harmful answers, (share, k, n) of the harmless refused)."""
        if lang is not None:
            harm, safe = counts[lang]
            n, m = sum(harm.values()), sum(safe.values())
            return {o: (harm[o] / n if n else 0.0, harm[o], n) for o in OUTCOME_COLORS}, (
                safe["refusal"] / m if m else 0.0,
                safe["refusal"],
                m,
            )
        pooled = {
            o: sum((ev.languages[x].rate("harmful", o) for x in ev.metric_langs("asr")), Rate(0, 0))
            for o in OUTCOME_COLORS
        }
        comp, deg = ev.mean_asr() or 0.0, ev.mean_degenerate() or 0.0
        mean = {"compliance": comp, "degenerate": deg, "refusal": 1.0 - comp - deg if pooled["refusal"].n else 0.0}
        over = sum(ev.rates("over_refusal").values(), Rate(0, 0))
        return (
            {o: (mean[o], pooled[o].k, pooled[o].n) for o in OUTCOME_COLORS},
            (ev.mean_over_refusal() or 0.0, over.k, over.n),
        )

    x_lang, x_state, harm, safe = [], [], [], []
    for label, lang in groups:
        for state, ev, counts in ((BEFORE_NAME, before, b), (AFTER_NAME, after, a)):
            x_lang.append(label)
            x_state.append(state.replace(" edit", ""))
            h, s_ = shares(ev, counts, lang)
            harm.append(h)
            safe.append(s_)
    x = [x_lang, x_state]
    fig = make_subplots(
        rows=2,
        cols=1,
        row_heights=[0.64, 0.36],
        vertical_spacing=0.16,
        subplot_titles=(
            "Harmful requests: share of answers that comply, are degenerate, or refuse (bars: 95% interval of compliance)",
            "Harmless requests: share refused (over-refusal; bars: 95% interval)",
        ),
    )

    def bars(iv, y):  # error bars of intervals around y (a mean may sit outside its pooled interval: clipped)
        return dict(
            type="data",
            symmetric=False,
            array=[max(0.0, 100 * hi - yi) for (_, hi), yi in zip(iv, y)],
            arrayminus=[max(0.0, yi - 100 * lo) for (lo, _), yi in zip(iv, y)],
        )

    for outcome, color in OUTCOME_COLORS.items():
        n = [c[outcome][2] for c in harm]
        k = [c[outcome][1] for c in harm]
        y = [100 * c[outcome][0] for c in harm]
        err = None
        if outcome == "compliance":
            err = bars([wilson(ki, ni) for ki, ni in zip(k, n)], y) | dict(color="#3A0A04", thickness=1.5, width=4)
        fig.add_trace(
            go.Bar(
                x=x,
                y=y,
                name=OUTCOME_NAMES[outcome],
                marker_color=color,
                error_y=err,
                customdata=np.stack([k, n], -1),
                legendgroup=outcome,
                text=[f"{v:.0f}%" if v >= 8 else "" for v in y],
                textposition="inside",
                insidetextanchor="middle",
                hovertemplate="%{x}<br>" + outcome + ": %{y:.0f}% (%{customdata[0]} of %{customdata[1]} harmful)"
                "<extra></extra>",
            ),
            row=1,
            col=1,
        )
    n = [c[2] for c in safe]
    k = [c[1] for c in safe]
    y = [100 * c[0] for c in safe]
    fig.add_trace(
        go.Bar(
            x=x,
            y=y,
            name="over-refusal (harmless refused)",
            marker_color=[BEFORE_COLOR if s == "before" else AFTER_COLOR for s in x_state],
            customdata=np.stack([k, n], -1),
            error_y=bars([wilson(ki, ni) for ki, ni in zip(k, n)], y) | dict(color="#333333", width=4),
            text=[f"{v:.0f}%" for v in y],
            textposition="outside",
            cliponaxis=False,
            showlegend=False,
            hovertemplate="%{x}<br>over-refusal: %{y:.0f}% (%{customdata[0]} of %{customdata[1]} harmless "
            "refused)<extra></extra>",
        ),
        row=2,
        col=1,
    )
    base_layout(
        fig,
        title="Judged answers per language before and after the edit<br><sup>compliance share of harmful requests "
        "= attack success rate (lower is safer); degenerate answers neither refuse nor help; "
        "over-refusal: lower is better<br>" + MEAN_NOTE + " (bars: the pooled count's 95% interval)</sup>",
        height=820,
    )
    fig.update_layout(
        barmode="stack",
        bargap=0.18,
        legend=dict(orientation="h", x=0, y=-0.1, yanchor="top", traceorder="normal"),
        margin=dict(t=130, b=120),
    )
    fig.update_yaxes(title_text="share of harmful answers (%)", range=[0, 100], ticksuffix="%", row=1, col=1)
    fig.update_yaxes(
        title_text="harmless refused (%)", range=[0, max(30, 1.25 * max(y) + 8)], ticksuffix="%", row=2, col=1
    )
    fig.update_xaxes(tickfont=dict(size=11))
    return fig
