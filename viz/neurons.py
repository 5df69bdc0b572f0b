"""Views of a `SafetyNeurons` ranking: score heatmap, counts per layer, cross-language overlap."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ._common import LANG_COLORS, base_layout, check_lang, lang_label, to_array

_SCORE_TITLES = {"z": "z-score", "d": "Cohen's d"}


def _check_ranking(ranking) -> dict:
    """Validate a `SafetyNeurons`-like object; return its fields as numpy arrays."""
    missing = [f for f in ("langs", "layers", "delta", "z", "d", "selected") if not hasattr(ranking, f)]
    if missing:
        raise ValueError(f"ranking must be a SafetyNeurons (missing fields {missing}), got {type(ranking).__name__}")
    langs, layers = list(ranking.langs), [int(x) for x in ranking.layers]
    if not langs:
        raise ValueError("ranking has no languages (ranking.langs is empty)")
    if not layers:
        raise ValueError("ranking has no layers (ranking.layers is empty)")
    for lang in langs:
        check_lang(lang, "language in ranking.langs")
    if len(set(langs)) != len(langs):
        raise ValueError(f"ranking.langs has duplicates: {langs}")
    out = {"langs": langs, "layers": layers}
    for f in ("delta", "z", "d", "selected"):
        arr = to_array(getattr(ranking, f), f"ranking.{f}", ndim=3, dtype=bool if f == "selected" else np.float64)
        want = (len(langs), len(layers))
        if arr.shape[:2] != want or arr.shape[2] == 0:
            raise ValueError(
                f"ranking.{f} has shape {tuple(arr.shape)}; expected [lang={want[0]}, layer={want[1]}, d_mlp>0]"
            )
        out[f] = arr
    shapes = {f: out[f].shape for f in ("delta", "z", "d", "selected")}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"ranking tensors disagree in shape: {shapes}")
    return out


def neuron_heatmap(ranking, *, score: str = "z", top: int = 64) -> go.Figure:
    """Layers × the `top` highest-scoring neurons of each layer, coloured by `score` ('z' or 'd').

    Columns are ranks within a layer (1 = strongest), so each row shows that layer's own best neurons;
    hover gives the neuron index and its Δ, z and d. A dropdown switches language (one colour scale,
    centred at 0, shared by all languages so they compare).
    """
    r = _check_ranking(ranking)
    if score not in _SCORE_TITLES:
        raise ValueError(f"score must be 'z' or 'd', got {score!r}")
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be a positive integer, got {top!r}")
    s = r[score]
    if np.isnan(s).all():
        raise ValueError(f"ranking.{score} is all NaN (an attribution ranking has no Cohen's d); use score='z'")
    langs, layers = r["langs"], r["layers"]
    d_mlp = s.shape[-1]
    top = min(int(top), d_mlp)

    key = np.where(np.isnan(s), -np.inf, s)
    order = np.argsort(-key, axis=-1, kind="stable")[..., :top]  # [lang, layer, top]
    take = lambda a: np.take_along_axis(a, order, axis=-1)  # noqa: E731
    vals, dl, zz, dd, sel = take(s), take(r["delta"]), take(r["z"]), take(r["d"]), take(r["selected"])
    finite = np.abs(vals[np.isfinite(vals)])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0

    fig = go.Figure()
    ranks = np.arange(1, top + 1)
    titles = []
    for i, lang in enumerate(langs):
        custom = np.stack([order[i], dl[i], zz[i], dd[i], sel[i].astype(float)], axis=-1)
        text = np.where(sel[i], "yes", "no")
        fig.add_trace(
            go.Heatmap(
                z=vals[i], x=ranks, y=layers, customdata=custom, text=text,
                name=lang_label(lang), visible=i == 0,
                colorscale="RdBu_r", zmid=0, zmin=-vmax, zmax=vmax,
                colorbar=dict(title=dict(text=_SCORE_TITLES[score], side="right")),
                hovertemplate=(
                    "Layer %{y}, rank %{x}<br>Neuron %{customdata[0]}<br>"
                    "Δ = %{customdata[1]:.3f}<br>z = %{customdata[2]:.2f}<br>d = %{customdata[3]:.2f}<br>"
                    "selected: %{text}<extra>" + lang_label(lang) + "</extra>"
                ),
            )  # fmt: skip
        )
        n_sel = int(r["selected"][i].sum())
        titles.append(
            f"Safety-neuron scores, {lang_label(lang)}: top {top} neurons per layer by {score} "
            f"({n_sel} selected in all layers)"
        )
    buttons = [
        dict(label=lang_label(lang), method="update",
             args=[{"visible": [j == i for j in range(len(langs))]}, {"title.text": titles[i]}])
        for i, lang in enumerate(langs)
    ]  # fmt: skip
    base_layout(fig, title=titles[0], height=max(420, 16 * len(layers) + 220))
    fig.update_layout(
        updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.0, yanchor="bottom",
                          showactive=True, active=0, pad=dict(b=6))],
        margin=dict(r=110),
        annotations=[dict(text="Language:", x=1.0, xref="paper", y=1.0, yref="paper", xanchor="right",
                          yanchor="bottom", xshift=-175, yshift=10, showarrow=False)],
    )  # fmt: skip
    fig.update_xaxes(title_text=f"Rank within layer (1 = highest {score})")
    fig.update_yaxes(title_text="Layer")
    return fig


def neuron_counts(ranking) -> go.Figure:
    """Number of selected safety neurons at each layer, one line per language."""
    r = _check_ranking(ranking)
    counts = r["selected"].sum(-1)  # [lang, layer]
    fig = go.Figure()
    for i, lang in enumerate(r["langs"]):
        fig.add_trace(
            go.Scatter(
                x=r["layers"], y=counts[i], mode="lines+markers", name=lang_label(lang),
                line=dict(color=LANG_COLORS[lang], width=3 if lang == "en" else 2),
                marker=dict(size=6),
                hovertemplate="Layer %{x}: %{y} safety neurons<extra>" + lang_label(lang) + "</extra>",
            )  # fmt: skip
        )
    rule = getattr(ranking, "settings", {}) or {}
    rule = f" (rule: {rule['rule']})" if isinstance(rule, dict) and rule.get("rule") else ""
    base_layout(fig, title=f"Safety neurons per layer and language{rule}", height=460)
    fig.update_layout(legend=dict(title=dict(text="Language")), hovermode="closest")
    fig.update_xaxes(title_text="Layer")
    fig.update_yaxes(title_text="Safety neurons selected (count)", rangemode="tozero")
    return fig


def jaccard_heatmap(ranking) -> go.Figure:
    """Language × language Jaccard overlap of the selected sets, annotated; a slider picks all layers
    (first step, `ranking.jaccard()`) or one layer (`ranking.jaccard(layer)`)."""
    r = _check_ranking(ranking)
    langs, layers, sel = r["langs"], r["layers"], r["selected"]
    labels = [lang_label(lang) for lang in langs]
    has_method = callable(getattr(ranking, "jaccard", None))

    def matrix(layer):
        m = sel.reshape(len(langs), -1) if layer is None else sel[:, layers.index(layer)]
        m = m.astype(np.float64)
        inter = m @ m.T
        sizes = m.sum(1)
        union = sizes[:, None] + sizes[None, :] - inter
        jac = to_array(ranking.jaccard(layer), "ranking.jaccard()", ndim=2) if has_method else (
            np.where(union > 0, inter / np.maximum(union, 1), 1.0))  # fmt: skip
        if jac.shape != (len(langs), len(langs)):
            raise ValueError(f"ranking.jaccard() returned shape {jac.shape}; expected {(len(langs),) * 2}")
        custom = np.stack([inter, np.broadcast_to(sizes[:, None], inter.shape),
                           np.broadcast_to(sizes[None, :], inter.shape)], -1)  # fmt: skip
        return jac, custom

    steps_spec = [(None, "all layers")] + [(layer, f"layer {layer}") for layer in layers]
    fig = go.Figure()
    for k, (layer, name) in enumerate(steps_spec):
        jac, custom = matrix(layer)
        fig.add_trace(
            go.Heatmap(
                z=jac, x=labels, y=labels, customdata=custom, name=name, visible=k == 0,
                zmin=0, zmax=1, colorscale="Blues", texttemplate="%{z:.2f}", textfont=dict(size=12),
                colorbar=dict(title=dict(text="Jaccard |A∩B| / |A∪B|", side="right")),
                hovertemplate=(
                    "%{y} vs %{x}<br>Jaccard = %{z:.3f}<br>shared neurons = %{customdata[0]}<br>"
                    "sizes: %{customdata[1]} and %{customdata[2]}<extra>" + name + "</extra>"
                ),
            )  # fmt: skip
        )
    titles = [f"Overlap of safety-neuron sets between languages ({name})" for _, name in steps_spec]
    steps = [
        dict(label=name if layer is None else f"L{layer}", method="update",
             args=[{"visible": [j == k for j in range(len(steps_spec))]}, {"title.text": titles[k]}])
        for k, (layer, name) in enumerate(steps_spec)
    ]  # fmt: skip
    side = 70 * len(langs) + 380
    base_layout(fig, title=titles[0], height=max(480, side), width=None)
    fig.update_layout(
        sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix="Showing: ", visible=True),
                      pad=dict(t=115), x=0.0, len=1.0)],
        margin=dict(b=200),
    )  # fmt: skip
    fig.update_xaxes(title_text="Language B", tickangle=-30)
    fig.update_yaxes(title_text="Language A", autorange="reversed")
    return fig
