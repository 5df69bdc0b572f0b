"""Shared helpers of the plotting package: language names and colours, input checks, layout defaults.

The language tables are the ones of `safety_neurons.prompts`, with a colour for each.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go

from ..prompts import LANG_NAMES, LANGS

# Okabe–Ito-like colour-blind-safe palette, English in black (it is the pivot everywhere).
LANG_COLORS = {
    "en": "#111111",
    "zh": "#D55E00",
    "vi": "#E69F00",
    "ja": "#CC79A7",
    "th": "#009E73",
    "id": "#56B4E9",
    "bn": "#0072B2",
    "he": "#8C6D1F",
}
BEFORE_COLOR = "#E4835E"  # muted red-orange: the unedited model
AFTER_COLOR = "#2F6DB5"  # blue: the edited model
BEFORE_NAME = "before edit"
AFTER_NAME = "after edit"

FONT = dict(family="Helvetica Neue, Helvetica, Arial, sans-serif", size=13)


def lang_label(lang: str) -> str:
    """'Bengali (bn)' for 'bn'."""
    return f"{LANG_NAMES[lang]} ({lang})"


def check_lang(lang, what: str = "language") -> str:
    if not isinstance(lang, str) or lang not in LANGS:
        raise ValueError(f"unknown {what} {lang!r}; supported: {', '.join(LANGS)}")
    return lang


def sort_langs(langs) -> list[str]:
    """Languages in the canonical order (English first, then the others as in LANGS)."""
    return sorted(langs, key=LANGS.index)


def to_array(x, name: str, *, ndim: int | None = None, dtype=np.float64) -> np.ndarray:
    """A numpy copy of a torch tensor / numpy array / nested list, checked for its number of dims."""
    if x is None:
        raise ValueError(f"{name} is missing (got None)")
    torch = sys.modules.get("torch")  # a tensor can only exist once torch is imported: don't import it here
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.to(torch.float64) if dtype is np.float64 and x.dtype != torch.bool else x
        x = x.numpy()
    try:
        arr = np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a tensor or array of numbers, got {type(x).__name__}: {e}") from None
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(arr.shape)}")
    return arr


def to_scalar(x, name: str) -> float:
    """A float from a number, a 0-d tensor, or (mean of) a 1-d tensor / array / list."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        v = float(x)
    else:
        arr = to_array(x, name)
        if arr.size == 0:
            raise ValueError(f"{name} is empty")
        v = float(arr.mean())
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v}")
    return v


def check_mapping(m, name: str) -> Mapping:
    if not isinstance(m, Mapping):
        raise ValueError(f"{name} must be a mapping {{language: value}}, got {type(m).__name__}")
    if not m:
        raise ValueError(f"{name} is empty: give at least one language")
    for lang in m:
        check_lang(lang, f"language in {name}")
    return m


def check_same_keys(a: Mapping, b: Mapping, name_a: str, name_b: str) -> None:
    if set(a) != set(b):
        only_a = sort_langs(set(a) - set(b))
        only_b = sort_langs(set(b) - set(a))
        parts = []
        if only_a:
            parts.append(f"only in {name_a}: {only_a}")
        if only_b:
            parts.append(f"only in {name_b}: {only_b}")
        raise ValueError(f"{name_a} and {name_b} must cover the same languages; " + "; ".join(parts))


def fraction(v, name: str) -> float:
    """A share in [0, 1] (ASR, accuracy, over-refusal)."""
    v = to_scalar(v, name)
    if not 0.0 <= v <= 1.0:
        hint = " (give fractions, not percent)" if 1.0 < v <= 100.0 else ""
        raise ValueError(f"{name} must be a fraction in [0, 1], got {v}{hint}")
    return v


def base_layout(fig: go.Figure, *, title: str, height: int | None = None, **kw) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        title=dict(text=title, x=0.01, xanchor="left", font=dict(size=17)),
        font=FONT,
        hoverlabel=dict(font_size=13),
        margin=dict(l=70, r=30, t=90, b=60),
        **({"height": height} if height else {}),
        **kw,
    )
    return fig


def pct(v: float) -> str:
    return f"{100 * v:.0f}%" if abs(100 * v - round(100 * v)) < 0.05 else f"{100 * v:.1f}%"
