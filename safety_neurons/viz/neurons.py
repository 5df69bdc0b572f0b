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
    fitted to the 2nd–98th percentile of the shown values, shared by all languages so they compare).
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
    lo, hi = _fitted_range(vals)  # fitted to the shown values: the top-ranked scores are mostly positive

    fig = go.Figure()
    ranks = np.arange(1, top + 1)
    titles = []
    for i, lang in enumerate(langs):
        custom = np.stack([order[i], dl[i], zz[i], dd[i], sel[i].astype(float)], axis=-1)
        text = np.where(sel[i], "yes", "no")
        fig.add_trace(
            go.Heatmap(
                z=vals[i],
                x=ranks,
                y=layers,
                customdata=custom,
                text=text,
                name=lang_label(lang),
                visible=i == 0,
                colorscale="Viridis",
                zmin=lo,
                zmax=hi,
                colorbar=dict(title=dict(text=_SCORE_TITLES[score], side="right")),
                hovertemplate=(
                    "Layer %{y}, rank %{x}<br>Neuron %{customdata[0]}<br>"
                    "Δ = %{customdata[1]:.3f}<br>z = %{customdata[2]:.2f}<br>d = %{customdata[3]:.2f}<br>"
                    "selected: %{text}<extra>" + lang_label(lang) + "</extra>"
                ),
            )
        )
        n_sel = int(r["selected"][i].sum())
        titles.append(
            f"Safety-neuron scores, {lang_label(lang)}: top {top} neurons per layer by {score} "
            f"({n_sel} selected in all layers)"
        )
    buttons = [
        dict(
            label=lang_label(lang),
            method="update",
            args=[{"visible": [j == i for j in range(len(langs))]}, {"title.text": titles[i]}],
        )
        for i, lang in enumerate(langs)
    ]
    base_layout(fig, title=titles[0], height=max(420, 16 * len(layers) + 220))
    fig.update_layout(
        updatemenus=[
            dict(
                buttons=buttons,
                direction="down",
                x=1.0,
                xanchor="right",
                y=1.0,
                yanchor="bottom",
                showactive=True,
                active=0,
                pad=dict(b=6),
            )
        ],
        margin=dict(r=110),
        annotations=[
            dict(
                text="Language:",
                x=1.0,
                xref="paper",
                y=1.0,
                yref="paper",
                xanchor="right",
                yanchor="bottom",
                xshift=-175,
                yshift=10,
                showarrow=False,
            )
        ],
    )
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
                x=r["layers"],
                y=counts[i],
                mode="lines+markers",
                name=lang_label(lang),
                line=dict(color=LANG_COLORS[lang], width=3 if lang == "en" else 2),
                marker=dict(size=6),
                hovertemplate="Layer %{x}: %{y} safety neurons<extra>" + lang_label(lang) + "</extra>",
            )
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
    (first step, `ranking.jaccard()`) or one layer (`ranking.jaccard(layer)`). The colour runs from 0 to
    the largest overlap between two different languages (the diagonal saturates)."""
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
        jac = (
            to_array(ranking.jaccard(layer), "ranking.jaccard()", ndim=2)
            if has_method
            else (np.where(union > 0, inter / np.maximum(union, 1), 1.0))
        )
        if jac.shape != (len(langs), len(langs)):
            raise ValueError(f"ranking.jaccard() returned shape {jac.shape}; expected {(len(langs),) * 2}")
        custom = np.stack(
            [inter, np.broadcast_to(sizes[:, None], inter.shape), np.broadcast_to(sizes[None, :], inter.shape)], -1
        )
        return jac, custom

    steps_spec = [(None, "all layers")] + [(layer, f"layer {layer}") for layer in layers]
    off = ~np.eye(len(langs), dtype=bool)
    # colour fitted to the overlaps between different languages (the diagonal, 1, saturates)
    top_off = (
        max((float(matrix(layer)[0][off].max()) for layer, _ in steps_spec), default=1.0) if len(langs) > 1 else 1.0
    )
    zmax = min(1.0, top_off * 1.05) if top_off > 0 else 1.0
    fig = go.Figure()
    for k, (layer, name) in enumerate(steps_spec):
        jac, custom = matrix(layer)
        fig.add_trace(
            go.Heatmap(
                z=jac,
                x=labels,
                y=labels,
                customdata=custom,
                name=name,
                visible=k == 0,
                zmin=0,
                zmax=zmax,
                colorscale="Blues",
                texttemplate="%{z:.2f}",
                textfont=dict(size=12),
                colorbar=dict(title=dict(text="Jaccard |A∩B| / |A∪B|", side="right")),
                hovertemplate=(
                    "%{y} vs %{x}<br>Jaccard = %{z:.3f}<br>shared neurons = %{customdata[0]}<br>"
                    "sizes: %{customdata[1]} and %{customdata[2]}<extra>" + name + "</extra>"
                ),
            )
        )
    titles = [f"Overlap of safety-neuron sets between languages ({name})" for _, name in steps_spec]
    steps = [
        dict(
            label=name if layer is None else f"L{layer}",
            method="update",
            args=[{"visible": [j == k for j in range(len(steps_spec))]}, {"title.text": titles[k]}],
        )
        for k, (layer, name) in enumerate(steps_spec)
    ]
    side = 70 * len(langs) + 380
    base_layout(fig, title=titles[0], height=max(480, side), width=None)
    fig.update_layout(
        sliders=[
            dict(
                active=0,
                steps=steps,
                currentvalue=dict(prefix="Showing: ", visible=True),
                pad=dict(t=115),
                x=0.0,
                len=1.0,
            )
        ],
        margin=dict(b=200),
    )
    fig.update_xaxes(title_text="Language B", tickangle=-30)
    fig.update_yaxes(title_text="Language A", autorange="reversed")
    return fig


def _fitted_range(values: np.ndarray, lo_q: float = 2.0, hi_q: float = 98.0) -> tuple[float, float]:
    """A colour range fitted to the data: the 2nd–98th percentile of the finite values (so a few outliers
    neither saturate nor wash out the rest), widened to a non-empty interval."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = (float(x) for x in np.percentile(v, [lo_q, hi_q]))
    if hi <= lo:
        lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def layer_language_heatmap(ranking) -> go.Figure:
    """Layers × languages: how many safety neurons each language has at each layer (annotated counts),
    colour fitted to the counts (their 2nd–98th percentile, so the layers' differences show)."""
    r = _check_ranking(ranking)
    langs, layers = r["langs"], r["layers"]
    counts = r["selected"].sum(-1).T  # [layer, lang]
    share = counts / r["selected"].shape[-1]
    lo, hi = _fitted_range(counts.astype(float))
    fig = go.Figure(
        go.Heatmap(
            z=counts,
            x=[lang_label(x) for x in langs],
            y=[f"L{layer}" for layer in layers],
            customdata=100 * share,
            zmin=lo,
            zmax=hi,
            colorscale="YlGnBu",
            texttemplate="%{z}" if len(layers) <= 40 else None,
            textfont=dict(size=11),
            colorbar=dict(title=dict(text="safety neurons", side="right")),
            hovertemplate="%{x}, layer %{y}: %{z} safety neurons (%{customdata:.2f}% of the layer)<extra></extra>",
        )
    )
    total = int(r["selected"].sum())
    rule = getattr(ranking, "settings", {}) or {}
    rule = f" (rule {rule['rule']})" if isinstance(rule, dict) and rule.get("rule") else ""
    base_layout(
        fig,
        title=f"Safety neurons selected per layer and language<br><sup>{total} (layer, neuron, "
        f"language) selections in all{rule}; colour fitted to the counts</sup>",
        height=max(420, 22 * len(layers) + 220),
    )
    fig.update_xaxes(side="top")
    fig.update_layout(margin=dict(t=120))
    fig.update_yaxes(title_text="Layer", autorange="reversed", type="category")
    return fig


def shared_neurons_heatmap(ranking, *, top: int = 40) -> go.Figure:
    """Top neurons × languages: shared and language-specific safety neurons side by side. About half of
    the `top` rows go to each language's strongest neurons of its own (selected by it alone, by z), the
    rest to the neurons selected by the most languages (ties: highest mean z), shared ones first. Colour:
    each language's z-score (scale fitted to the shown values); a dot where the language selected it."""
    r = _check_ranking(ranking)
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be a positive integer, got {top!r}")
    langs, layers = r["langs"], r["layers"]
    sel, z = r["selected"], r["z"]  # [lang, layer, d_mlp]
    n_langs = sel.sum(0)  # [layer, d_mlp]
    if not n_langs.any():
        raise ValueError("no neuron is selected in any language: nothing to show")
    mean_z = np.nan_to_num(z.mean(0), nan=-np.inf).ravel()
    counts = n_langs.ravel()
    # about half the rows for each language's strongest neurons of its own, the rest for the most shared ones
    per = max(1, int(top) // (2 * len(langs))) if len(langs) > 1 else 0
    specific = []
    for i in range(len(langs)):
        own = np.flatnonzero((counts == 1) & sel[i].ravel())
        specific += list(own[np.argsort(-np.nan_to_num(z[i].ravel()[own], nan=-np.inf), kind="stable")][:per])
    shared = np.flatnonzero(counts >= (2 if len(langs) > 1 else 1))
    shared = shared[np.lexsort((-mean_z[shared], -counts[shared]))][: max(int(top) - len(specific), 0)]
    order = np.concatenate([shared, np.asarray(specific, dtype=shared.dtype)])[: int(top)]
    li, ni = np.unravel_index(order, n_langs.shape)
    vals = z[:, li, ni].T  # [top, lang]
    mark = sel[:, li, ni].T
    kinds = [
        "all languages" if k == len(langs) else ("only " + langs[int(np.argmax(m))]) if k == 1 else f"{k} languages"
        for k, m in zip(n_langs[li, ni], mark)
    ]
    labels = [f"L{layers[a]} N{b} · {k}" for a, b, k in zip(li, ni, kinds)]
    lo, hi = _fitted_range(vals)
    fig = go.Figure(
        go.Heatmap(
            z=vals,
            x=[lang_label(x) for x in langs],
            y=labels,
            zmin=lo,
            zmax=hi,
            colorscale="Viridis",
            customdata=np.array([[k] * len(langs) for k in kinds], dtype=object),
            colorbar=dict(title=dict(text="z-score", side="right")),
            hovertemplate="%{y}, %{x}<br>z = %{z:.2f}<br>selected by %{customdata}<extra></extra>",
        )
    )
    xs = [lang_label(x) for x in langs]
    yy, xx = np.nonzero(mark)
    fig.add_trace(
        go.Scatter(
            x=[xs[j] for j in xx],
            y=[labels[i] for i in yy],
            mode="markers",
            hoverinfo="skip",
            name="selected",
            showlegend=False,
            marker=dict(symbol="circle", size=8, color="white", line=dict(color="#111", width=1.5)),
        )
    )
    n_all = int((n_langs == len(langs)).sum())
    n_one = int((n_langs == 1).sum())
    base_layout(
        fig,
        title=f"Top {len(labels)} safety neurons across languages: shared or language-specific<br><sup>upper rows: "
        f"neurons selected by the most languages; lower rows: each language's strongest neurons of its own. "
        f"● = selected in that language; colour = its z-score.<br>In all layers {n_all} neurons are selected by "
        f"every language, {n_one} by one language only</sup>",
        height=max(440, 19 * len(labels) + 220),
    )
    fig.update_xaxes(side="top")
    fig.update_yaxes(title_text="Neuron (layer, index)", autorange="reversed", type="category", tickfont=dict(size=11))
    fig.update_layout(margin=dict(t=150, l=200))
    return fig
