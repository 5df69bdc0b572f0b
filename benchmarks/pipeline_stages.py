"""Wall time of each stage of `safety-neurons run` on the packaged model.

python benchmarks/pipeline_stages.py            # the default run (~15 min on 2 CPU cores)
python benchmarks/pipeline_stages.py --quick    # the smoke-run sizes
"""

import argparse
import os
import platform
import time

import torch

from safety_neurons.pipeline import RunConfig, run

import _common  # noqa: F401  (the offline flags, before the package reads them)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="results/pipeline-bench")
    args = p.parse_args()
    start = time.perf_counter()
    result = run(RunConfig(quick=args.quick, out=args.out))
    total = time.perf_counter() - start
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print("| stage | seconds | share |\n|---|---|---|")
    for stage, seconds in result.timings.items():
        print(f"| {stage} | {seconds:.0f} | {100 * seconds / total:.0f}% |")
    print(f"| **total** | {total:.0f} | 100% |")


if __name__ == "__main__":
    main()
