"""A self-contained HTML report: heading, results table, figures, settings (plotly.js inlined once)."""

from __future__ import annotations

import datetime as _dt
import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from ._common import LANG_NAMES, LANGS

_CSS = """
body { font-family: "Helvetica Neue", Helvetica, Arial, sans-serif; color: #222; margin: 0; background: #fff; }
main { max-width: 1360px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 28px; margin: 8px 0 4px; }
.meta { color: #666; font-size: 13px; margin-bottom: 20px; }
h2 { font-size: 20px; margin: 36px 0 8px; border-bottom: 1px solid #e3e3e3; padding-bottom: 4px; }
table.results { border-collapse: collapse; font-size: 14px; margin: 8px 0 16px; }
table.results th, table.results td { border: 1px solid #d5d5d5; padding: 5px 12px; }
table.results th { background: #f3f5f8; }
table.results tr:nth-child(even) td { background: #fafafa; }
.figure { margin: 0 0 12px; }
pre.settings { background: #f6f8fa; border: 1px solid #e1e4e8; padding: 12px 16px; font-size: 13px;
               overflow-x: auto; white-space: pre-wrap; }
p.note { color: #444; }
table.answers { table-layout: fixed; width: 100%; font-size: 13px; }
table.answers td { vertical-align: top; word-wrap: break-word; }
table.answers th:nth-child(1) { width: 11%; } table.answers th:nth-child(2) { width: 7%; }
table.answers th:nth-child(3) { width: 24%; }
table.answers tr.changed td { background: #fffbe8; }
table.answers td.lang { background: #fff !important; }
.verdict { display: inline-block; font-size: 12px; font-weight: 600; padding: 1px 7px; border-radius: 9px;
           margin-bottom: 3px; background: #eee; }
.v-refusal { background: #d7ece4; color: #1e5d47; } .v-compliance { background: #f6d5cf; color: #8a2314; }
.v-degenerate { background: #e4e4e4; color: #444; }
.small { color: #666; font-size: 12px; }
"""


def _inline(text: str) -> str:
    """Escape a table cell and keep `code` and **bold** markdown."""
    out = html.escape(text.strip())
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return out


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    cells = re.split(r"(?<!\\)\|", line)
    return [c.replace("\\|", "|").strip() for c in cells]


_SEP = re.compile(r"^:?-{3,}:?$")


def markdown_table_html(markdown: str) -> str:
    """HTML for a simple markdown text holding pipe tables (header, `|---|` separator, rows); lines
    outside tables become paragraphs. Raises ValueError on a table without its separator line or a row
    with more cells than the header."""
    lines = [ln.rstrip() for ln in markdown.strip().splitlines()]
    parts: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if "|" not in line:
            parts.append(f'<p class="note">{_inline(line)}</p>')
            i += 1
            continue
        header = _cells(line)
        if i + 1 >= len(lines) or not all(_SEP.match(c.replace(" ", "")) for c in _cells(lines[i + 1])):
            raise ValueError(
                f"table_markdown line {i + 1} looks like a table header but is not followed by a "
                f"separator line such as |---|---|: {line!r}"
            )
        seps = _cells(lines[i + 1])
        if len(seps) != len(header):
            raise ValueError(f"table_markdown: the separator has {len(seps)} cells, the header {len(header)}")
        align = []
        for s in seps:
            s = s.replace(" ", "")
            align.append("center" if s.startswith(":") and s.endswith(":") else "right" if s.endswith(":") else "left")
        rows = []
        i += 2
        while i < len(lines) and "|" in lines[i] and lines[i].strip():
            cells = _cells(lines[i])
            if len(cells) > len(header):
                raise ValueError(
                    f"table_markdown line {i + 1} has {len(cells)} cells, the header has {len(header)}: {lines[i]!r}"
                )
            rows.append(cells + [""] * (len(header) - len(cells)))
            i += 1
        th = "".join(f'<th style="text-align:{a}">{_inline(c)}</th>' for c, a in zip(header, align))
        body = "".join(
            "<tr>" + "".join(f'<td style="text-align:{a}">{_inline(c)}</td>' for c, a in zip(r, align)) + "</tr>"
            for r in rows
        )
        parts.append(f'<table class="results"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>')
    return "\n".join(parts)


def _jsonable(x):
    """`json.dumps` fallback: tensors / arrays / numpy scalars as lists / numbers, anything else as str."""
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, (set, frozenset, tuple)):
        return list(x)
    return str(x)


def settings_json(settings: Mapping) -> str:
    """Indented JSON in which short lists of numbers / strings stay on one line."""

    def dump(x, level: int) -> str:
        pad, inner = "  " * level, "  " * (level + 1)
        if isinstance(x, Mapping):
            if not x:
                return "{}"
            items = [f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {dump(v, level + 1)}" for k, v in x.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(x, (list, tuple)):
            flat = json.dumps(x, ensure_ascii=False, default=_jsonable)
            if len(flat) <= 100 and not any(isinstance(v, (Mapping, list, tuple)) for v in x):
                return flat
            return "[\n" + ",\n".join(inner + dump(v, level + 1) for v in x) + "\n" + pad + "]"
        if hasattr(x, "tolist") or isinstance(x, (set, frozenset)):
            return dump(_jsonable(x), level)
        return json.dumps(x, ensure_ascii=False, default=_jsonable)

    return dump(dict(settings), 0)


def _page(
    title: str, *, table_html: str, sections: Sequence[str], settings_text: str | None, generated: str | None = None
) -> str:
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M") if generated is None else generated
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>",
        "<body><main>",
        f"<h1>{html.escape(title)}</h1>",
        f'<div class="meta">safety-neurons report, generated {stamp}</div>',
    ]
    if table_html:
        out += ["<h2>Results</h2>", table_html]
    out += list(sections)
    if settings_text is not None:
        out += ["<h2>Settings</h2>", f'<pre class="settings">{html.escape(settings_text, quote=False)}</pre>']
    out += ["</main></body></html>"]
    return "\n".join(out)


def write_report(
    path: str | Path,
    *,
    title: str,
    figures: Sequence[tuple[str, go.Figure]],
    table_markdown: str = "",
    settings: Mapping | None = None,
    generated: str | None = None,
) -> Path:
    """Write one self-contained HTML page (plotly.js embedded once, nothing fetched when viewed):
    the title, the results table (a markdown pipe table), each `(title, figure)` under its title (a
    figure is a plotly `Figure` or an `HtmlSection` such as `answer_examples`; a plot's div id is
    "view-" + its title in lower case, non-alphanumerics as "-"), and `settings` as JSON. `generated`: the
    time shown as the page's date (default: now; the same value writes the same page). Returns the path
    written (parent folders are created)."""
    if not isinstance(title, str) or not title.strip():
        raise ValueError("title must be a non-empty string")
    if isinstance(figures, (str, bytes)) or not isinstance(figures, Sequence):
        raise ValueError(f"figures must be a sequence of (title, Figure) pairs, got {type(figures).__name__}")
    if not figures:
        raise ValueError("figures is empty: give at least one (title, Figure) pair")
    for i, item in enumerate(figures):
        if not (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], (go.Figure, HtmlSection))
        ):
            raise ValueError(
                f"figures[{i}] must be a (str, plotly.graph_objects.Figure or HtmlSection) pair, got {item!r:.80}"
            )
    if not isinstance(table_markdown, str):
        raise ValueError(f"table_markdown must be a str, got {type(table_markdown).__name__}")
    if settings is not None and not isinstance(settings, Mapping):
        raise ValueError(f"settings must be a mapping or None, got {type(settings).__name__}")
    if generated is not None and not isinstance(generated, str):
        raise ValueError(f"generated must be a str or None, got {type(generated).__name__}")

    table_html = markdown_table_html(table_markdown) if table_markdown.strip() else ""
    sections = []
    first_plot = next((i for i, (_, f) in enumerate(figures) if isinstance(f, go.Figure)), None)
    for i, (fig_title, fig) in enumerate(figures):
        slug = "view-" + (re.sub(r"[^a-z0-9]+", "-", fig_title.lower()).strip("-") or str(i))
        if isinstance(fig, HtmlSection):
            sections.append(f'<section id="{slug}"><h2>{html.escape(fig_title)}</h2>{fig.html}</section>')
            continue
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=i == first_plot,
            include_mathjax=False,
            div_id=slug,
            default_height=f"{fig.layout.height or 500}px",
            default_width="100%",
            config={"displaylogo": False, "responsive": True},
        )
        sections.append(
            f'<section id="{slug}-section"><h2>{html.escape(fig_title)}</h2><div class="figure">{div}</div></section>'
        )
    settings_text = None
    if settings is not None:
        settings_text = settings_json(settings)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        _page(title, table_html=table_html, sections=sections, settings_text=settings_text, generated=generated),
        encoding="utf-8",
    )
    return path


@dataclass(frozen=True)
class HtmlSection:
    """A block of ready HTML for `write_report` (built by this package, its text already escaped)."""

    html: str


_VERDICT_STYLE = {"refusal": "v-refusal", "compliance": "v-compliance", "degenerate": "v-degenerate"}


def _records(x, name: str) -> list[dict]:
    recs = getattr(x, "answers", x)
    if isinstance(recs, (str, bytes, Mapping)) or not isinstance(recs, Sequence):
        raise ValueError(f"{name} must be an Evaluation or a list of answer records, got {type(x).__name__}")
    for i, r in enumerate(recs):
        missing = [
            f
            for f in ("id", "lang", "label", "prompt", "answer", "outcome")
            if not isinstance(r, Mapping) or f not in r
        ]
        if missing:
            raise ValueError(f"{name} answer record {i} is missing {missing}")
    return list(recs)


def answer_examples(before, after, *, per_lang: int = 3, max_chars: int = 240) -> HtmlSection:
    """A table of example answers before and after the edit with their verdicts, `per_lang` a language:
    prompts whose verdict changed first (harmful before harmless), then unchanged ones. `before` /
    `after`: `Evaluation`s (or their `.answers` records: id, lang, label, prompt, answer, outcome, kind)."""
    if isinstance(per_lang, bool) or not isinstance(per_lang, int) or per_lang < 1:
        raise ValueError(f"per_lang must be a positive integer, got {per_lang!r}")
    rb, ra = _records(before, "before"), _records(after, "after")
    after_by = {(r["lang"], r["label"], r["id"]): r for r in ra}
    pairs: dict[str, list] = {}
    for r in rb:
        key = (r["lang"], r["label"], r["id"])
        if key in after_by:
            pairs.setdefault(r["lang"], []).append((r, after_by[key]))
    if not pairs:
        raise ValueError("before and after share no answer (matched on language, label and prompt id)")

    def clip(text: str) -> str:
        text = " ".join(str(text).split())
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    def cell(r) -> str:
        kind = f" · {html.escape(str(r['kind']))}" if r.get("kind") else ""
        style = _VERDICT_STYLE.get(r["outcome"], "")
        return (
            f'<td><span class="verdict {style}">{html.escape(str(r["outcome"]))}{kind}</span>'
            f'<div class="answer">{html.escape(clip(r["answer"])) or "<em>(empty)</em>"}</div></td>'
        )

    rows = []
    for lang in sorted(pairs, key=lambda x: LANGS.index(x) if x in LANGS else len(LANGS)):
        ranked = sorted(
            pairs[lang], key=lambda p: (p[0]["outcome"] == p[1]["outcome"], p[0]["label"] != "harmful", str(p[0]["id"]))
        )
        chosen = ranked[:per_lang]
        n_changed = sum(p[0]["outcome"] != p[1]["outcome"] for p in pairs[lang])
        name = f"{LANG_NAMES.get(lang, lang)} ({lang})"
        for j, (b, a) in enumerate(chosen):
            head = (
                f'<td rowspan="{len(chosen)}" class="lang"><strong>{html.escape(name)}</strong><br>'
                f'<span class="small">{n_changed} of {len(pairs[lang])} verdicts changed</span></td>'
                if j == 0
                else ""
            )
            changed = ' class="changed"' if b["outcome"] != a["outcome"] else ""
            rows.append(
                f"<tr{changed}>{head}<td>{html.escape(str(b['label']))}</td>"
                f'<td class="prompt">{html.escape(clip(b["prompt"]))}</td>{cell(b)}{cell(a)}</tr>'
            )
    body = "".join(rows)
    return HtmlSection(
        '<p class="note">Prompts whose verdict changed come first (highlighted), harmful before harmless; answers '
        f"are cut at {max_chars} characters.</p>"
        '<table class="results answers"><thead><tr><th>language</th><th>set</th><th>request</th>'
        f"<th>before the edit: verdict and answer</th><th>after the edit: verdict and answer</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )
