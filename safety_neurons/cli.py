"""`safety-neurons`: a thin command line over the public functions.

safety-neurons run              the whole pipeline on the packaged Qwen model (see `pipeline.run`)
safety-neurons neurons          rank safety neurons in 8 languages, fit/apply/revert one edit (--export DIR: the edited model)
safety-neurons data             the bundled prompt set's counts
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _device_map(text: str):
    import json

    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"--device-map is not valid JSON: {err}") from None
    return text


def _common(p: argparse.ArgumentParser) -> None:
    from .models import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help="packaged alias, .gguf file, HF folder or hub id")
    p.add_argument("--dtype", default="float32", help="float32 (default on CPU) or bfloat16")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--device-map",
        default=None,
        type=_device_map,
        help='split the model over devices: "auto", "balanced", or a JSON map {"model.layers.0": 0, ...}',
    )
    p.add_argument("--n-devices", type=int, default=None, help="split the model over this many GPUs")
    p.add_argument("--batch-size", type=int, default=16)


def _neurons(args) -> int:
    import torch

    import safety_neurons as sn

    from ._checks import check_out_dir, check_positive_int

    start = time.perf_counter()
    for name in ("limit", "rank", "batch_size"):  # every setting is checked before any work
        check_positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    out = check_out_dir("--out", args.out)
    export = None if args.export is None else check_out_dir("--export", args.export)
    split = args.device_map is not None or (args.n_devices or 1) > 1
    model = sn.load_model(
        args.model,
        dtype=args.dtype,
        device=None if split else args.device,
        device_map=args.device_map,
        n_devices=args.n_devices,
    )
    anchor = sn.load_prompts().filter(split="anchor", limit=args.limit)
    layer = args.layer if args.layer is not None else model.cfg.n_layers * 11 // 12
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(
            f"--layer {layer} is out of range: the model has {model.cfg.n_layers} layers (0…{model.cfg.n_layers - 1})"
        )
    print(f"{len(anchor)} anchor prompts ({args.limit} harmful + {args.limit} harmless per language)")
    collection = sn.collect_sharded(model, list(anchor), rows_at=[("mlp_in", layer)], batch_size=args.batch_size)
    if not sn.distributed.is_main():  # under torchrun rank 0 ranks, fits and writes
        return 0
    ranking = sn.rank_neurons(collection.stats)
    print(f"\n{ranking}\n\nsafety neurons per layer (z > 2 or d > 1, positive shifts):")
    print(ranking.table())
    jac = ranking.jaccard()
    en = ranking.langs.index("en")
    print(
        "\nJaccard overlap with English, all layers: "
        + "  ".join(f"{lang} {jac[en, i]:.2f}" for i, lang in enumerate(ranking.langs) if lang != "en")
    )
    jl = ranking.jaccard(layer)
    print(
        f"Jaccard overlap with English, layer {layer}: "
        + "  ".join(f"{lang} {jl[en, i]:.2f}" for i, lang in enumerate(ranking.langs) if lang != "en")
    )

    spec = sn.EditSpec.paper(layers=layer, neurons=ranking, rank=args.rank)
    edit = sn.fit_edit(model, list(anchor), spec, rows=collection.rows, progress=False)
    print(f"\n{edit.summary()}")
    before = {k: v.clone() for k, v in sn.hf_state_dict(model).items() if f".{layer}.mlp.gate_proj" in k}
    edit.apply(model)
    changed = any(not torch.equal(v, sn.hf_state_dict(model)[k]) for k, v in before.items())
    edit.revert(model)
    exact = all(torch.equal(v, sn.hf_state_dict(model)[k]) for k, v in before.items())
    print(f"applied (weights changed: {changed}); reverted (bit-exact: {exact})")
    edit.save(out / "edit")
    ranking.save(out / "neurons")
    if export is not None:  # a full copy of the model's weights (about 2 GB for the packaged one in float32)
        edit.export(model, export)
        print(f"exported the edited model to {export}")
    print(f"saved the edit and the ranking under {out}  ({time.perf_counter() - start:.0f} s in all)")
    return 0


def _data(args) -> int:
    import safety_neurons as sn

    prompts = sn.load_prompts()
    prompts.validate()
    print(prompts.summary())
    print(f"utility: {len(sn.load_utility())} multiple-choice questions (80 per language)")
    return 0


def _run(args) -> int:
    from .pipeline import RunConfig, run

    result = run(RunConfig.from_args(args))  # checks every setting first, and again against the model before any work
    if result is not None:  # under torchrun only rank 0 has a result
        print(result.text())
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(prog="safety-neurons", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="load → splits → collect → rank → select → fit → evaluate → report")
    _common(p)
    from .pipeline import RunConfig

    RunConfig.add_arguments(p)
    p.set_defaults(func=_run)

    p = sub.add_parser("neurons", help="rank safety neurons per language; fit, apply and revert one edit")
    _common(p)
    p.add_argument("--limit", type=int, default=20, help="harmful and harmless anchor prompts per language")
    p.add_argument("--layer", type=int, default=None, help="layer of the demo gate edit (default: 11/12 deep)")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--out", default="results/neurons")
    p.add_argument(
        "--export",
        default=None,
        metavar="DIR",
        help="also write the edited model as a plain HF folder to DIR (a full copy of the weights: "
        "about 2 GB for the packaged model)",
    )
    p.set_defaults(func=_neurons)

    p = sub.add_parser("data", help="validate and summarise the bundled prompt set")
    p.set_defaults(func=_data)

    args = parser.parse_args(argv)
    from . import distributed

    distributed.init_from_env()  # under torchrun: join the process group (the collection is sharded)
    try:
        return args.func(args)
    except (ValueError, KeyError, OSError) as err:  # errors it knows: one line, no traceback
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"safety-neurons: error: {' '.join(str(message).split())}", file=sys.stderr)  # one line
        return 2
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
