"""The one setup every benchmark shares: offline flags, the packaged model, the prompt splits, the
multiple-choice questions, the edit presets at this model's layers, the outcome tables; and the cost
benchmarks' helpers (machine description, timing, memory, child processes, balanced prompts).

Every script here imports it (`import _common as C`; run them as scripts, `python benchmarks/<name>.py`, so that
this folder is on the path) and takes nothing from another benchmark script. Importing it loads no model: it
sets `HF_HUB_OFFLINE=1` (the benchmarks only use the packaged models and random weights) unless the variable is
already set, quiets transformers' warnings, and imports `safety_neurons`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars only where a call asks for them (progress=True)
warnings.filterwarnings("ignore")

import safety_neurons as sn  # noqa: E402  (after the flags: transformers reads them when imported)
from safety_neurons.evaluation import MEAN_RULE  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GOLD = HERE.parent / "tests" / "data" / "gold_answers.jsonl"
CHILD_MARK = "@@RESULT@@ "

# --- the packaged model, its prompts and this project's settings on it -----------------------------
MODEL = sn.DEFAULT_MODEL  # the packaged Qwen2.5-Coder-0.5B-Instruct
SMALL_MODEL = "smollm2-135m-instruct"  # the packaged SmolLM2-135M-Instruct: quick runs of the cost benchmarks
NON_EN = [x for x in sn.LANGS if x != "en"]
LAYER, ALT_LAYER, PAPER_LAYER, SWITCH_LAYER = 21, 19, 22, 20  # of the packaged model's 24
SHARED_TEST = {"harmful": 15, "harmless": 10}  # test prompts a language of efficacy_3way_subset, frontier, harm_switch


def load_model(name: str = MODEL, **kwargs):
    """`sn.load_model` (offline: the packaged models ship with the package)."""
    return sn.load_model(name, **kwargs)


@cache
def prompts() -> sn.PromptSet:
    return sn.load_prompts()


def split(name: str, *, label: str | None = None, limit: int | None = None, lang=None) -> list:
    """The prompts of one split ("anchor", "val", "test"), of a label, `limit` per (language, label) group."""
    return list(prompts().filter(split=name, label=label, limit=limit, lang=lang))


def shared_test() -> set[tuple[str, str]]:
    """The (lang, id) of the test prompts every method's row of the frontier is measured on."""
    return {(p.lang, p.id) for label, n in SHARED_TEST.items() for p in split("test", label=label, limit=n)}


def mc_questions(n: int) -> list:
    """The first `n` multiple-choice questions of each language (of 80; ids `<lang>-<number>`)."""
    return sn.load_utility(limit=n)


def ours(layer: int = LAYER, **changes) -> sn.EditSpec:
    """This project's edit (`EditSpec.linear`, what `safety-neurons run` fits) at `layer` of the packaged model."""
    return sn.EditSpec.linear(layers=[layer], **changes)


def paper(ranking, layer: int = PAPER_LAYER, **changes) -> sn.EditSpec:
    """The paper's configuration (`EditSpec.paper`: W_gate columns of the English safety neurons of `ranking`)."""
    return sn.EditSpec.paper(layers=[layer], neurons=ranking, **changes)


# --- outcome tables (definitions in `Evaluation`) ----------------------------------------------------
def outcome_fields(ev: sn.Evaluation) -> dict:
    """The per-language outcome counts of one condition and their means (`Evaluation.mean`: ASR and
    degenerate over the non-English languages, over-refusal over every language)."""
    langs = ev.languages
    return {
        "counts": {x: {"harmful": langs[x].harmful, "harmless": langs[x].harmless} for x in sn.LANGS},
        "asr": {x: langs[x].asr for x in sn.LANGS},
        "degenerate": {x: langs[x].degenerate for x in sn.LANGS},
        "over_refusal": {x: langs[x].over_refusal for x in sn.LANGS},
        "mean_non_english_asr": ev.mean_asr(),
        "mean_non_english_degenerate": ev.mean_degenerate(),
        "mean_over_refusal": ev.mean_over_refusal(),
    }


def refused_more(ev: sn.Evaluation, base: sn.Evaluation) -> dict[str, int]:
    """Per language, how many more harmless prompts are refused than without the edit."""
    return {x: ev.languages[x].harmless["refusal"] - base.languages[x].harmless["refusal"] for x in sn.LANGS}


def as_prompts(records: list[dict]) -> list[sn.Prompt]:
    """The prompts of saved answer records (`Evaluation.answers`), in their order."""
    return [sn.Prompt(r["id"], r["lang"], r["label"], r["prompt"]) for r in records]


def carried(row: dict) -> dict:
    """The fields of a saved row that do not depend on the judge (settings, KL, MC accuracy, timings)."""
    keys = (
        "key",
        "condition",
        "kl_first_token",
        "kl_first_4_tokens",
        "mc_accuracy",
        "mean_mc_accuracy",
        "fit_seconds",
        "seconds",
    )
    return {k: row[k] for k in keys if k in row}


def saved_rows(path: Path) -> list[dict]:
    """The rows of a saved efficacy run: its JSON file, or the JSON lines it printed."""
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())["rows"]


CAPTION = (
    "Per-language columns: compliance (ASR) of the harmful prompts, % (count of n; 95% Wilson interval). "
    f"Means: {MEAN_RULE}; in brackets the 95% Wilson interval of the pooled count of the same languages (the "
    "mean equals the pooled share when they have as many prompts, as here): non-English for compliance and "
    "degenerate answers, all eight for over-refusal. MC acc: mean over every language."
)


def _pooled_interval(ev: sn.Evaluation, metric: str) -> str:
    lo, hi = sum(ev.rates(metric).values(), sn.Rate(0, 0)).interval
    return f" [{100 * lo:.0f}–{100 * hi:.0f}]"


def markdown(rows: list[dict]) -> str:
    """Compliance (ASR) per language, each with its count and 95% Wilson interval where the row has its
    counts; the mean over the non-English languages, degenerate answers to harmful prompts (non-English) and
    over-refusal (every language) beside it, each with the pooled interval; means by the one rule
    (`Evaluation.mean`, recomputed from the saved counts; `CAPTION` states it)."""
    head = (
        "| condition | " + " | ".join(sn.LANGS) + " | mean non-en compliance [95% CI] | non-en degenerate "
        "| over-refusal | KL 1st | KL 4 | MC acc |\n|" + "---|" * (len(sn.LANGS) + 7)
    )
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['condition']} | "
                + " | ".join("–" for _ in sn.LANGS)
                + f" | failed: {r['error'][:80]} | | | | | |"
            )
            continue
        means = {k: r.get(k) for k in ("mean_non_english_asr", "mean_non_english_degenerate", "mean_over_refusal")}
        ci = dict.fromkeys(("asr", "degenerate", "over_refusal"), "")
        cells = [f"{100 * r['asr'][x]:.0f}" for x in sn.LANGS]
        if "counts" in r:  # the means of the saved counts, and the intervals of the same counts
            ev = sn.Evaluation.from_counts("saved", r["counts"])
            means = {
                "mean_non_english_asr": ev.mean_asr(),
                "mean_non_english_degenerate": ev.mean_degenerate(),
                "mean_over_refusal": ev.mean_over_refusal(),
            }
            ci = {m: _pooled_interval(ev, m) for m in ci}
            rates = ev.rates("asr", sn.LANGS)
            cells = [str(rates[x]).replace("%", "", 1) for x in sn.LANGS]
        deg = means["mean_non_english_degenerate"]
        cell = lambda v: "–" if v is None else f"{v:.3f}"
        lines.append(
            f"| {r['condition']} | "
            + " | ".join(cells)
            + f" | **{100 * means['mean_non_english_asr']:.1f}%**{ci['asr']} | "
            + ("–" if deg is None else f"{100 * deg:.1f}%{ci['degenerate']}")
            + f" | {100 * means['mean_over_refusal']:.1f}%{ci['over_refusal']} | {cell(r.get('kl_first_token'))} "
            f"| {cell(r.get('kl_first_4_tokens'))} | {100 * r['mean_mc_accuracy']:.1f}% |"
        )
    return "\n".join(lines)


def auc(scores, positive) -> float:
    """P(a positive scores above a negative), ties counting half; nan when a class is empty."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return ((pos[:, None] > neg[None, :]).float().mean() + 0.5 * (pos[:, None] == neg[None, :]).float().mean()).item()


# --- machine -------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import torch

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        info["transformer_lens"] = version("transformer-lens")
    except Exception:  # noqa: BLE001 - purely informative
        pass
    if torch.cuda.is_available():
        info["gpu"] = f"{torch.cuda.get_device_name(0)} (cuda {torch.version.cuda})"
    try:
        info["load average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        pass
    return info


def print_machine(title: str) -> None:
    print(f"== {title} ==")
    for k, v in machine_info().items():
        print(f"  {k:<16} {v}")
    print()


# --- timing --------------------------------------------------------------------------------------
def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def timed(fn: Callable[[], object], sync: Callable[[], None] | None = None) -> float:
    """Seconds taken by one call of `fn` (`time.perf_counter`; `sync` e.g. cuda.synchronize)."""
    if sync:
        sync()
    t = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - t


def repeat(fn: Callable[[], object], repeats: int, *, warmup: int = 1, sync=None) -> list[float]:
    """A warm-up call (not timed) then `repeats` timed calls."""
    for _ in range(warmup):
        fn()
    return [timed(fn, sync) for _ in range(repeats)]


# --- memory (Linux /proc) ------------------------------------------------------------------------
def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_mb() -> float:
    """Current resident set size of this process (MiB)."""
    return status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    """High-water mark of the resident set size since start or the last `reset_peak_rss` (MiB)."""
    return status_kb("VmHWM") / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (writing 5 to /proc/self/clear_refs, Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mb(nbytes: float) -> float:
    return nbytes / 2**20


# --- child processes -----------------------------------------------------------------------------
def emit(result: dict) -> None:
    """Child side: print the result as one marked JSON line."""
    print(CHILD_MARK + json.dumps(result), flush=True)


def run_child(script: Path, args: Sequence[str], *, timeout: float | None = None, env: dict | None = None) -> dict:
    """Run `python script args...` in a fresh interpreter (extra `env` variables) and return what it `emit`ted."""
    cmd = [sys.executable, str(script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(CHILD_MARK):
            return json.loads(line[len(CHILD_MARK) :])
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
    raise RuntimeError(f"child {' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")


# --- prompts -------------------------------------------------------------------------------------
def bench_prompts(n: int, pool=None) -> list:
    """`n` chat prompts from the bundled set, balanced over the 16 (language, label) groups.

    Whole parallel groups are taken (one request id in all 8 languages, English first), alternating
    harmful and harmless ids and walking the splits anchor → val → test; past the 2,560 bundled
    prompts the set repeats with fresh ids (`<id>~r1`, `<id>~r2`, …), so `collect_activations` sees
    no duplicate (lang, id) pairs and parallel ids still line up across languages.
    """
    from safety_neurons.prompts import LANGS

    pool = prompts() if pool is None else pool
    by_id: dict[tuple[str, str], list] = {}
    for p in pool:
        by_id.setdefault((p.label, p.id), []).append(p)
    split_rank = {"anchor": 0, "val": 1, "test": 2}
    lang_rank = {lang: i for i, lang in enumerate(LANGS)}
    harmful = [k for k in by_id if k[0] == "harmful"]
    harmless = [k for k in by_id if k[0] == "harmless"]
    for keys in (harmful, harmless):
        keys.sort(key=lambda k: (split_rank.get(by_id[k][0].split, 9), k[1]))
    order = [k for pair in zip(harmful, harmless) for k in pair]
    order += harmful[len(harmless) :] + harmless[len(harmful) :]
    out: list = []
    cycle = 0
    while len(out) < n:
        for key in order:
            group = sorted(by_id[key], key=lambda p: lang_rank.get(p.lang, 99))
            for p in group:
                if len(out) == n:
                    return out
                out.append(
                    p if cycle == 0 else sn.Prompt(f"{p.id}~r{cycle}", p.lang, p.label, p.text, p.category, p.split)
                )
        cycle += 1
    return out


# --- output --------------------------------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain fixed-width text table (right-aligned numbers)."""

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:,.3f}" if abs(v) < 100 else f"{v:,.1f}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in cells:
        out.append("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    return "\n".join(out)


def headline(name: str, value: str) -> None:
    print(f"HEADLINE {name}: {value}")
