"""Shared helpers of the cost benchmarks: machine description, timing, memory, prompts, tables.

Imported by `collection_overhead.py`, `solve_cost.py`, `memory.py` and `gpu_scale.py` (run them as
scripts: `python benchmarks/<name>.py`). Importing this module sets `HF_HUB_OFFLINE=1` (the benchmarks
only use the packaged models and random weights) unless the variable is already set.
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
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")
warnings.filterwarnings("ignore")

HERE = Path(__file__).resolve().parent
CHILD_MARK = "@@RESULT@@ "


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
    import safety_neurons as sn
    from safety_neurons.prompts import LANGS

    pool = sn.load_prompts() if pool is None else pool
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
                out.append(p if cycle == 0 else sn.Prompt(f"{p.id}~r{cycle}", p.lang, p.label, p.text, p.category, p.split))
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
