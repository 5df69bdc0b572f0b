"""Wall time of each stage of `safety-neurons run` on the packaged model.

python benchmarks/pipeline_stages.py            # the default run (~15 min on 2 CPU cores)
python benchmarks/pipeline_stages.py --quick    # the smoke-run sizes
python benchmarks/pipeline_stages.py --second   # the default run from an empty cache, then a second run with
                                                # other edit settings (--refusal-boost 0.5), side by side

`--second` gives the first run a cache folder of its own (the converted model linked into it, nothing else),
so that it computes everything; the second run, back to back in the same process, reuses what the first
computed of the unedited model (its collection, answers and MC accuracy: `AnswerCache`).
"""

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from safety_neurons.models import CACHE_ENV, cache_dir
from safety_neurons.pipeline import STAGES, RunConfig, run

import _common  # noqa: F401  (the offline flags, before the package reads them)


def timed(config: RunConfig) -> tuple[dict, float]:
    start = time.perf_counter()
    result = run(config)
    return result.timings, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--second", action="store_true", help="a second run with --refusal-boost 0.5 after the first")
    p.add_argument("--out", default="results/pipeline-bench")
    args = p.parse_args()
    runs = {"first run": RunConfig(quick=args.quick, out=f"{args.out}/first")}
    if args.second:
        runs["second run (--refusal-boost 0.5)"] = RunConfig(
            quick=args.quick, out=f"{args.out}/second", refusal_boost=0.5
        )
        empty = Path(tempfile.mkdtemp(prefix="sn-cache-"))
        for folder in cache_dir().iterdir():  # the converted models only: no answers, no collections
            if folder.is_dir() and (folder / "config.json").is_file():
                (empty / folder.name).symlink_to(folder.resolve())
        os.environ[CACHE_ENV] = str(empty)
        print(f"cache for these runs: {empty} (the converted models linked, nothing computed yet)")
    measured = {name: timed(config) for name, config in runs.items()}
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    names = list(measured)
    print("| stage | " + " | ".join(f"{n}: s | share" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    for stage in STAGES:
        cells = [f"{t[stage]:.0f} | {100 * t[stage] / total:.0f}%" for t, total in measured.values()]
        print(f"| {stage} | " + " | ".join(cells) + " |")
    print("| **total** | " + " | ".join(f"**{total:.0f}** | 100%" for _, total in measured.values()) + " |")
    if len(names) == 2:
        (_, first), (_, second) = measured.values()
        print(f"\nsecond / first wall time: {second / first:.2f}")


if __name__ == "__main__":
    main()
