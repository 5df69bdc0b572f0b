"""Views of what the edit does to activations: safety-neuron profiles and a PCA map, before vs after."""

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
    LANG_COLORS,
    LANG_NAMES,
    base_layout,
    check_lang,
    check_mapping,
    check_same_keys,
    lang_label,
    sort_langs,
    to_array,
)


def _check_rows(before, after, *, what: str) -> tuple[dict, dict, list[str]]:
    """Validate before/after {lang: [n, k]} mappings; same languages, same shape per language."""
    check_mapping(before, "before")
    check_mapping(after, "after")
    check_same_keys(before, after, "before", "after")
    langs = sort_langs(before)
    b = {lang: to_array(before[lang], f"before[{lang!r}]", ndim=2) for lang in langs}
    a = {lang: to_array(after[lang], f"after[{lang!r}]", ndim=2) for lang in langs}
    for lang in langs:
        if b[lang].shape != a[lang].shape:
            raise ValueError(
                f"before[{lang!r}] and after[{lang!r}] differ in shape: {b[lang].shape} vs {a[lang].shape}"
            )
        if b[lang].shape[0] == 0:
            raise ValueError(f"before[{lang!r}] has no rows")
        if not (np.isfinite(b[lang]).all() and np.isfinite(a[lang]).all()):
            raise ValueError(f"{what} of {lang!r} contain NaN or inf")
    widths = {lang: b[lang].shape[1] for lang in langs}
    if len(set(widths.values())) != 1:
        raise ValueError(f"all languages must have the same number of columns ({what}); got {widths}")
    if next(iter(widths.values())) == 0:
        raise ValueError(f"{what} have zero columns")
    return b, a, langs


def before_after(
    before: Mapping[str, object],
    after: Mapping[str, object],
    *,
    pivot: str = "en",
    neuron_labels: Sequence[str] | None = None,
) -> go.Figure:
    """The safety neurons' activations on harmful prompts, per language, before vs after the edit.

    `before[lang]` / `after[lang]`: [n, m] activations of the m safety neurons on n harmful prompts;
    rows are parallel translations (row i of every language is the same request), so every language
    has the same n. Top: one small panel per non-pivot language with its mean activation per neuron
    before (dotted) and after (solid) the edit, and the pivot's (English) profile in black; neurons are
    sorted by the pivot's mean before the edit. Bottom: each language's distance to the pivot,
    mean over rows of ‖a_lang[i] − a_pivot[i]‖₂ in the same model state, before vs after.
    """
    check_lang(pivot, "pivot language")
    b, a, langs = _check_rows(before, after, what="activations")
    if pivot not in langs:
        raise ValueError(f"pivot language {pivot!r} missing from before/after (have {langs})")
    others = [lang for lang in langs if lang != pivot]
    if not others:
        raise ValueError(f"give at least one language besides the pivot {pivot!r}")
    rows_n = {lang: b[lang].shape[0] for lang in langs}
    if len(set(rows_n.values())) != 1:
        raise ValueError(f"rows must be parallel translations: every language needs the same n; got {rows_n}")
    m = b[pivot].shape[1]
    if neuron_labels is None:
        neuron_labels = [f"neuron {j}" for j in range(m)]
    else:
        neuron_labels = [str(x) for x in neuron_labels]
        if len(neuron_labels) != m:
            raise ValueError(f"neuron_labels has {len(neuron_labels)} entries; the activations have {m} neurons")

    piv = lang_label(pivot)
    order = np.argsort(-b[pivot].mean(0), kind="stable")
    x = np.arange(1, m + 1)
    names = np.asarray(neuron_labels, dtype=object)[order]
    mode = "lines+markers" if m <= 40 else "lines"

    dist_b = {lang: float(np.linalg.norm(b[lang] - b[pivot], axis=1).mean()) for lang in others}
    dist_a = {lang: float(np.linalg.norm(a[lang] - a[pivot], axis=1).mean()) for lang in others}

    cols = 2 if len(others) > 1 else 1
    prow = math.ceil(len(others) / cols)
    specs = [[{} for _ in range(cols)] for _ in range(prow)] + [[{"colspan": cols}] + [None] * (cols - 1)]
    titles = [lang_label(lang) for lang in others] + [""] * (prow * cols - len(others))
    titles.append(f"Distance to {piv} on the same requests (lower = closer to {LANG_NAMES[pivot]})")
    panel_h, bar_h = 230, 330
    fig = make_subplots(
        rows=prow + 1,
        cols=cols,
        specs=specs,
        subplot_titles=titles,
        vertical_spacing=0.32 / (prow + 1),
        horizontal_spacing=0.08,
        row_heights=[panel_h] * prow + [bar_h],
    )

    for k, lang in enumerate(others):
        r, c = k // cols + 1, k % cols + 1
        first = k == 0
        prof = [
            (f"{piv}, before edit", b[pivot], dict(color="#111111", width=3), "en_b"),
            (f"{piv}, after edit", a[pivot], dict(color="#888888", width=1.5, dash="dash"), "en_a"),
            (f"language, {BEFORE_NAME}", b[lang], dict(color=BEFORE_COLOR, width=2, dash="dot"), "before"),
            (f"language, {AFTER_NAME}", a[lang], dict(color=AFTER_COLOR, width=2.5), "after"),
        ]
        for name, arr, line, group in prof:
            shown = name if group.startswith("en") else name.replace("language", lang_label(lang))
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=arr.mean(0)[order],
                    customdata=names,
                    mode=mode,
                    line=line,
                    marker=dict(size=4),
                    name=shown,
                    legendgroup=group,
                    showlegend=first,
                    hovertemplate="%{customdata}<br>mean activation %{y:.3f}<extra>" + shown + "</extra>",
                ),
                row=r,
                col=c,
            )
        fig.update_xaxes(
            title_text=f"safety neuron (sorted by {LANG_NAMES[pivot]} mean)" if r == prow else None, row=r, col=c
        )
        fig.update_yaxes(title_text="mean activation" if c == 1 else None, row=r, col=c)
    for tr in fig.data:  # the legend entries come from the first panel: give them the generic names
        if tr.showlegend and tr.legendgroup in ("before", "after"):
            tr.name = BEFORE_NAME if tr.legendgroup == "before" else AFTER_NAME

    labels = [lang_label(lang) for lang in others]
    yb, ya = [dist_b[lang] for lang in others], [dist_a[lang] for lang in others]
    change = [f"{(ya_ - yb_) / yb_:+.0%}" if yb_ > 0 else "" for yb_, ya_ in zip(yb, ya)]
    fig.add_trace(
        go.Bar(
            x=labels,
            y=yb,
            name=f"distance {BEFORE_NAME}",
            marker_color=BEFORE_COLOR,
            legendgroup="before",
            showlegend=False,
            hovertemplate="%{x}<br>" + BEFORE_NAME + ": %{y:.3f}<extra></extra>",
        ),
        row=prow + 1,
        col=1,
    )
    fig.add_trace(
        go.Bar(
            x=labels,
            y=ya,
            name=f"distance {AFTER_NAME}",
            marker_color=AFTER_COLOR,
            legendgroup="after",
            showlegend=False,
            text=change,
            textposition="outside",
            customdata=change,
            hovertemplate="%{x}<br>" + AFTER_NAME + ": %{y:.3f} (%{customdata} vs before)<extra></extra>",
        ),
        row=prow + 1,
        col=1,
    )
    fig.update_xaxes(title_text="Language", row=prow + 1, col=1)
    fig.update_yaxes(title_text=f"mean ‖a − a<sub>{pivot}</sub>‖₂", rangemode="tozero", row=prow + 1, col=1)
    n = rows_n[pivot]
    base_layout(
        fig,
        title=(
            f"Safety-neuron activations on {n} harmful requests: other languages vs {piv}, before and after "
            f"the edit<br><sup>{m} safety neurons; after the edit each language should lie on the black "
            f"{LANG_NAMES[pivot]} line and its distance bar should shrink</sup>"
        ),
        height=panel_h * prow + bar_h + 260,
    )
    fig.update_layout(
        barmode="group", legend=dict(orientation="h", x=0, y=-0.06, yanchor="top"), margin=dict(t=120, b=110)
    )
    return fig


def _pca2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, the top two principal axes [2, d] and their explained-variance ratios, by SVD."""
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s**2
    total = var.sum()
    ratio = var[:2] / total if total > 0 else np.zeros(2)
    axes = vt[:2]
    if axes.shape[0] < 2:  # a single fit row spans less than two directions
        axes = np.vstack([axes, np.zeros((2 - axes.shape[0], x.shape[1]))])
        ratio = np.concatenate([ratio, np.zeros(2 - len(ratio))])
    return mean, axes, ratio


def representation_map(
    before: Mapping[str, object],
    after: Mapping[str, object],
    *,
    fit_harmful,
    fit_harmless,
) -> go.Figure:
    """Harmful rows of each language in a 2-D PCA plane fitted on English harmful vs harmless rows.

    `before[lang]` / `after[lang]`: [n, d] representations (e.g. the residual stream or the safety
    neurons' activations) of that language's harmful prompts; `fit_harmful` [k, d] and `fit_harmless`
    [k2, d] are the English rows the plane is fitted on (PC1 oriented so harmful is to the right).
    Hollow markers: before the edit; filled: after; an arrow joins each language's two centroids.
    The English harmless rows are drawn as a grey reference cloud.
    """
    b, a, langs = _check_rows(before, after, what="representations")
    fh = to_array(fit_harmful, "fit_harmful", ndim=2)
    fs = to_array(fit_harmless, "fit_harmless", ndim=2)
    if fh.shape[0] == 0 or fs.shape[0] == 0:
        raise ValueError(f"fit_harmful and fit_harmless need rows; got {fh.shape[0]} and {fs.shape[0]}")
    d = b[langs[0]].shape[1]
    if fh.shape[1] != d or fs.shape[1] != d:
        raise ValueError(
            f"fit_harmful / fit_harmless have width {fh.shape[1]} / {fs.shape[1]}; the rows have width {d}"
        )
    if d < 2:
        raise ValueError(f"a 2-D map needs at least 2 dimensions; the rows have {d}")
    if not (np.isfinite(fh).all() and np.isfinite(fs).all()):
        raise ValueError("fit_harmful / fit_harmless contain NaN or inf")

    mean, axes, ratio = _pca2(np.vstack([fh, fs]))
    if (fh.mean(0) - fs.mean(0)) @ axes[0] < 0:
        axes[0] = -axes[0]
    proj = lambda v: (v - mean) @ axes.T  # noqa: E731

    fig = go.Figure()
    ps = proj(fs)
    fig.add_trace(
        go.Scatter(
            x=ps[:, 0],
            y=ps[:, 1],
            mode="markers",
            name="English harmless (reference)",
            marker=dict(color="#BBBBBB", size=7, opacity=0.6, symbol="diamond"),
            hovertemplate="English harmless<br>PC1 %{x:.2f}, PC2 %{y:.2f}<extra></extra>",
        )
    )
    arrows = []
    for lang in langs:
        color, label = LANG_COLORS[lang], lang_label(lang)
        pb, pa = proj(b[lang]), proj(a[lang])
        rows = np.arange(len(pb))
        fig.add_trace(
            go.Scatter(
                x=pb[:, 0],
                y=pb[:, 1],
                mode="markers",
                name=f"{label}, {BEFORE_NAME}",
                legendgroup=lang,
                showlegend=False,
                customdata=rows,
                marker=dict(symbol="circle-open", color=color, size=8, line=dict(width=1.5)),
                hovertemplate=f"{label}, {BEFORE_NAME}<br>row %{{customdata}}<br>PC1 %{{x:.2f}}, PC2 %{{y:.2f}}"
                "<extra></extra>",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=pa[:, 0],
                y=pa[:, 1],
                mode="markers",
                name=label,
                legendgroup=lang,
                customdata=rows,
                marker=dict(symbol="circle", color=color, size=8, opacity=0.85),
                hovertemplate=f"{label}, {AFTER_NAME}<br>row %{{customdata}}<br>PC1 %{{x:.2f}}, PC2 %{{y:.2f}}"
                "<extra></extra>",
            )
        )
        cb, ca = pb.mean(0), pa.mean(0)
        if np.linalg.norm(ca - cb) > 1e-9:
            arrows.append(
                dict(
                    x=ca[0],
                    y=ca[1],
                    ax=cb[0],
                    ay=cb[1],
                    xref="x",
                    yref="y",
                    axref="x",
                    ayref="y",
                    showarrow=True,
                    arrowhead=3,
                    arrowsize=1.3,
                    arrowwidth=2,
                    arrowcolor=color,
                    text="",
                    opacity=0.9,
                )
            )
    # legend key for the marker styles
    for name, symbol in ((f"○ hollow = {BEFORE_NAME}", "circle-open"), (f"● filled = {AFTER_NAME}", "circle")):
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name=name,
                legendgroup="key",
                marker=dict(symbol=symbol, color="#555555", size=9),
                hoverinfo="skip",
            )
        )
    base_layout(
        fig,
        title=(
            "Harmful requests in the English harmful-vs-harmless PCA plane, before and after the edit"
            "<br><sup>arrows: each language's centre before → after; harmful (refused) is to the right, "
            "grey = English harmless</sup>"
        ),
        height=620,
    )
    fig.update_layout(
        annotations=arrows, legend=dict(title=dict(text="Language (harmful prompts)")), margin=dict(t=110)
    )
    fig.update_xaxes(title_text=f"PC1 ({ratio[0]:.0%} of variance; English harmful → right)", zeroline=True)
    fig.update_yaxes(title_text=f"PC2 ({ratio[1]:.0%} of variance)", zeroline=True)
    return fig


def _site_rows(rows) -> dict:
    """Validate {"before"|"after": {"harmful"|"harmless": {lang: [n, d]}}}; return numpy arrays."""
    if not isinstance(rows, Mapping) or set(rows) != {"before", "after"}:
        raise ValueError(
            "rows must be a mapping with exactly the keys 'before' and 'after', each "
            "{'harmful': {lang: [n, d]}, 'harmless': {lang: [n, d]}}"
        )
    out = {}
    for label in ("harmful", "harmless"):
        for state in ("before", "after"):
            if not isinstance(rows[state], Mapping) or label not in rows[state]:
                raise ValueError(f"rows[{state!r}] has no {label!r} rows")
        b, a, _ = _check_rows(rows["before"][label], rows["after"][label], what=f"{label} rows")
        out[label] = (b, a)
    widths = {next(iter(out[label][0].values())).shape[1] for label in out}
    if len(widths) != 1:
        raise ValueError(f"harmful and harmless rows differ in width: {sorted(widths)}")
    return out


def edit_site_change(rows, *, layer: int | None = None, pivot: str = "en") -> go.Figure:
    """What the edit changes where it acts: the residual stream right after the edited layer, before vs
    after the edit, on the same prompts. (A `w_out` edit leaves that layer's neuron activations as they
    were; what it changes is the MLP output, the vector it adds to the residual stream.)

    `rows["before" | "after"]["harmful" | "harmless"][lang]`: [n, d_model] rows (the residual stream
    after the edited layer at the last prompt token), row i before and after from the same prompt.
    Top: how far the edit moves each prompt, mean ‖after − before‖₂ as a share of mean ‖before‖₂,
    harmful vs harmless prompts (a targeted edit moves the harmful ones and leaves the harmless ones).
    Bottom: the mean coordinate on the pivot's refusal direction (mean harmful − mean harmless pivot row
    before the edit), scaled so 0 = the pivot's harmless mean and 1 = its harmful mean.
    """
    check_lang(pivot, "pivot language")
    data = _site_rows(rows)
    (hb, ha), (sb, sa) = data["harmful"], data["harmless"]
    if pivot not in hb or pivot not in sb:
        raise ValueError(f"the pivot language {pivot!r} needs harmful and harmless rows (its refusal direction)")
    langs = sort_langs(set(hb) | set(sb))
    direction = hb[pivot].mean(0) - sb[pivot].mean(0)
    span = float(direction @ direction)
    if span <= 0:
        raise ValueError(f"{pivot} harmful and harmless rows have the same mean: no refusal direction")
    origin = float(sb[pivot].mean(0) @ direction)

    def coord(x):
        return float(((x @ direction - origin) / span).mean())

    def moved(b, a):
        return float(np.linalg.norm(a - b, axis=1).mean() / max(np.linalg.norm(b, axis=1).mean(), 1e-12))

    where = f"after layer {layer}" if layer is not None else "after the edited layer"
    fig = make_subplots(
        rows=2,
        cols=1,
        vertical_spacing=0.2,
        subplot_titles=(
            f"How far the edit moves the residual stream {where}: mean ‖after − before‖ / mean ‖before‖",
            f"Position on the {LANG_NAMES[pivot]} refusal direction {where} (0 = {LANG_NAMES[pivot]} harmless mean, "
            f"1 = {LANG_NAMES[pivot]} harmful mean)",
        ),
    )
    for label, (b, a), color in (("harmful", (hb, ha), "#C8412F"), ("harmless", (sb, sa), "#7FB7A4")):
        ls = [x for x in langs if x in b]
        v = [moved(b[x], a[x]) for x in ls]
        fig.add_trace(
            go.Bar(
                x=[lang_label(x) for x in ls],
                y=[100 * t for t in v],
                name=f"{label} prompts: moved",
                marker_color=color,
                text=[f"{100 * t:.0f}%" if t >= 0.01 else f"{100 * t:.1g}%" for t in v],
                textposition="outside",
                cliponaxis=False,
                legendgroup=label,
                customdata=[b[x].shape[0] for x in ls],
                hovertemplate="%{x}<br>" + label + ": moved %{y:.2f}% of the norm "
                "(%{customdata} prompts)<extra></extra>",
            ),
            row=1,
            col=1,
        )
    specs = (
        ("harmful", BEFORE_NAME, hb, "#E9A38A"),
        ("harmful", AFTER_NAME, ha, "#C8412F"),
        ("harmless", BEFORE_NAME, sb, "#C3DDD3"),
        ("harmless", AFTER_NAME, sa, "#3E8A70"),
    )
    for label, state, m, color in specs:
        ls = [x for x in langs if x in m]
        v = [coord(m[x]) for x in ls]
        fig.add_trace(
            go.Bar(
                x=[lang_label(x) for x in ls],
                y=v,
                name=f"{label}, {state}",
                marker_color=color,
                text=[f"{t:.2f}" for t in v],
                textposition="outside",
                cliponaxis=False,
                hovertemplate="%{x}<br>" + f"{label} prompts, {state}" + ": %{y:.3f}<extra></extra>",
            ),
            row=2,
            col=1,
        )
    fig.add_hline(
        y=1.0,
        line=dict(color="#111111", dash="dash", width=1),
        row=2,
        col=1,
        annotation_text=f"{LANG_NAMES[pivot]} harmful, before",
        annotation_position="top right",
    )
    base_layout(
        fig,
        title=(
            f"What the edit changes at its site: the residual stream {where}, before vs after<br><sup>the "
            "edit should move harmful prompts toward the refusal side (up in the lower panel) and leave "
            "harmless prompts where they were</sup>"
        ),
        height=860,
    )
    fig.update_layout(
        barmode="group",
        bargap=0.22,
        legend=dict(orientation="h", x=0, y=-0.08, yanchor="top"),
        margin=dict(t=130, b=120),
    )
    fig.update_yaxes(title_text="moved (% of ‖before‖)", rangemode="tozero", ticksuffix="%", row=1, col=1)
    fig.update_yaxes(title_text="refusal-direction coordinate", row=2, col=1)
    return fig
