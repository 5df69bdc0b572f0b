"""A sweep of the public API with bad arguments (issue 15): wrong types, empty inputs, out-of-range values
and unknown names. Each call must fail with an error that safety-neurons raises itself (a `raise` in the
package, naming the problem), never a bare KeyError / TypeError / IndexError / ZeroDivisionError (or any
other error) from deep inside torch, transformers or the standard library."""

import inspect
import os
import traceback
from pathlib import Path

import pytest

import safety_neurons as sn
from safety_neurons._checks import ARTIFACTS
from safety_neurons.evaluation import mean_over_languages
from safety_neurons.selection import choose, select_layers

from conftest import make_prompts, tiny_hf_model, tiny_tokenizer

PACKAGE = str(Path(sn.__file__).parent)
BAD = {"None": None, "str": "xx", "empty": [], "float": 1.5, "negative": -1, "dict": {}, "bool": True}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    tok = tiny_tokenizer()
    bridge = sn.bridge_from_hf(tiny_hf_model("qwen2", len(tok)), tok, name="tiny-qwen2")
    prompts = make_prompts(3)
    stats = sn.collect_activations(bridge, prompts, progress=False).stats
    ranking = sn.rank_neurons(stats)
    spec = sn.EditSpec.paper(layers=1, neurons=[0, 3, 5], rank=2, site="w_out", langs=["zh"], ridge=0.1)
    edit = sn.fit_edit(bridge, prompts, spec, progress=False)
    q = sn.MCQuestion("q-1", "en", "x", "w1 w2 ?", ("A", "B", "C", "D"), 0)
    detector = sn.fit_detector(bridge, prompts, layer=1, answer_tokens=0, progress=False)
    evaluation = sn.evaluate(bridge, prompts, max_new_tokens=2, progress=False)
    tmp = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAFETY_NEURONS_CACHE", str(tmp / "cache"))
        result = sn.run(
            sn.RunConfig(
                layers=[1], langs=["zh"], anchor=2, val=1, test=1, test_harmless=1, mc=1, max_new_tokens=2, rank=2
            ),
            model=bridge,
            prompts=sn.load_prompts(["en", "zh"]),
            write=False,
            quiet=True,
        )
    return {
        "model": bridge,
        "prompts": prompts,
        "stats": stats,
        "ranking": ranking,
        "edit": edit,
        "q": [q],
        "detector": detector,
        "evaluation": evaluation,
        "result": result,
        "tmp": tmp,
        "harmful": [p for p in prompts if p.label == "harmful"],
        "harmless": [p for p in prompts if p.label == "harmless"],
        "fit": lambda layers: sn.fit_edit(
            bridge, prompts, sn.EditSpec.paper(layers=layers, neurons=[0, 3, 5], rank=2), progress=False
        ),
        "spec": spec,
        "spec_dict": spec.to_dict(),
    }


# name: (function, {argument: valid value or a ctx key}), every argument but the model is replaced in turn
SPECS = {
    "generate": (sn.generate, {"prompts": "@prompts", "max_new_tokens": 2, "batch_size": 4}),
    "evaluate": (sn.evaluate, {"prompts": "@prompts", "judge": sn.PhraseJudge(), "max_new_tokens": 2, "batch_size": 4}),
    "refusal_scores": (sn.refusal_scores, {"prompts": "@prompts", "batch_size": 4}),
    "kl_divergence": (sn.kl_divergence, {"intervention": "@edit", "prompts": "@prompts", "k": 2, "batch_size": 4}),
    "mc_accuracy": (sn.mc_accuracy, {"questions": "@q", "scoring": "cloze", "batch_size": 4}),
    "collect_activations": (
        sn.collect_activations,
        {
            "prompts": "@prompts",
            "stats_site": "act",
            "stats_layers": [1],
            "rows_at": [("act", 1)],
            "gram_at": [("mlp_in", 0)],
            "position": "last",
            "batch_size": 4,
        },
    ),
    "collect_sharded": (sn.collect_sharded, {"prompts": "@prompts", "batch_size": 4}),
    "fit_edit": (sn.fit_edit, {"prompts": "@prompts", "spec": "@spec", "rows": None, "batch_size": 4}),
    "EditSpec.paper": (
        lambda model, **kw: sn.EditSpec.paper(**kw),
        {
            "layers": 1,
            "neurons": [0, 3, 5],
            "rank": 2,
            "site": "w_out",
            "langs": ["zh"],
            "gamma": 1.0,
            "ridge": 0.1,
            "method": "soft",
        },
    ),
    "EditSpec.linear": (
        lambda model, **kw: sn.EditSpec.linear(**kw),
        {
            "layers": [1],
            "target": "language_gap",
            "refusal_boost": 1.0,
            "preserve": ["harmless"],
            "preserve_positions": "all",
            "position_weight": 0.2,
            "pivot": "en",
            "neuron_langs": ["en"],
            "position": "last",
            "sequential": False,
        },
    ),
    "EditSpec.nullspace": (lambda model, **kw: sn.EditSpec.nullspace(**kw), {"layers": 1, "null_energy": 0.01}),
    "EditSpec.switch": (
        lambda model, **kw: sn.EditSpec.switch(**kw),
        {
            "layer": 1,
            "threshold": 0.0,
            "width": 0.25,
            "strength": 1.0,
            "neurons": [0, 1],
            "probe_ridge": 1.0,
            "trigger": 2,
            "answer_tokens": 0,
            "pivot": "en",
        },
    ),
    "EditSpec.replace": (
        lambda model, **kw: sn.EditSpec.linear(layers=1).replace(**kw),
        {"rank": 4, "langs": ["zh"], "site": "w_out"},
    ),
    "EditSpec.from_dict": (lambda model, **kw: sn.EditSpec.from_dict(**kw), {"d": "@spec_dict"}),
    "SolverOptions": (
        lambda model, **kw: sn.SolverOptions(**kw),
        {"rank": 4, "gamma": 1.0, "ridge": 0.1, "ridge_mode": "relative", "method": "nullspace", "null_energy": 0.01},
    ),
    "SwitchOptions": (
        lambda model, **kw: sn.SwitchOptions(**kw),
        {"threshold": 0.0, "width": 0.25, "strength": 1.0, "probe_ridge": 1.0, "trigger": 2, "answer_tokens": 32},
    ),
    "fit_detector": (
        sn.fit_detector,
        {"prompts": "@prompts", "layer": 1, "answer_tokens": 2, "trigger": 2, "ridge": 1.0, "batch_size": 4},
    ),
    "fit_switch": (
        sn.fit_switch,
        {"detector": "@detector", "threshold": 0.0, "width": 0.25, "strength": 1.0, "neurons": [0, 1]},
    ),
    "rank_neurons": (
        lambda model, **kw: sn.rank_neurons(**kw),
        {"stats": "@stats", "langs": ["en"], "tau_mag": 2.0, "tau_stat": 1.0},
    ),
    "rank_neurons top_k": (lambda model, **kw: sn.rank_neurons(**kw), {"stats": "@stats", "top_k": 5}),
    "rank_neurons top_frac": (lambda model, **kw: sn.rank_neurons(**kw), {"stats": "@stats", "top_frac": 0.1}),
    "rank_by_attribution": (
        sn.rank_by_attribution,
        {"prompts": "@prompts", "layers": [1], "top_k": 5, "batch_size": 4},
    ),
    "RefusalDirection.fit": (
        sn.RefusalDirection.fit,
        {"prompts": "@prompts", "layer": 1, "langs": ["en"], "coeff": 1.0, "batch_size": 4},
    ),
    "NeuronScaling": (
        lambda model, **kw: sn.NeuronScaling(**kw).applied(model).__enter__(),
        {"neurons": {1: [0]}, "alpha": 2.0},
    ),
    "NeuronScaling.from_ranking": (
        lambda model, **kw: sn.NeuronScaling.from_ranking(**kw),
        {"ranking": "@ranking", "lang": "en", "alpha": 2.0, "layers": [1]},
    ),
    "SafetyNeurons.neurons": (
        lambda model, _ranking, **kw: _ranking.neurons(**kw),
        {"_ranking": "@ranking", "lang": "en", "layer": 1},
    ),
    "SafetyNeurons.union": (
        lambda model, _ranking, **kw: _ranking.union(**kw),
        {"_ranking": "@ranking", "layer": 1, "langs": ["en"]},
    ),
    "SafetyNeurons.jaccard": (
        lambda model, _ranking, **kw: _ranking.jaccard(**kw),
        {"_ranking": "@ranking", "layer": 1},
    ),
    "PhraseJudge.judge": (
        lambda model, **kw: sn.PhraseJudge().judge(**kw),
        {"prompts": ["w1"], "answers": ["sorry"], "langs": ["en"]},
    ),
    "Judge.judge_one": (
        lambda model, **kw: sn.PhraseJudge().judge_one(**kw),
        {"prompt": "w1", "answer": "sorry", "lang": "en"},
    ),
    "load_prompts": (lambda model, **kw: sn.load_prompts(**kw), {"langs": ["en"]}),
    "load_utility": (lambda model, **kw: sn.load_utility(**kw), {"langs": ["en"]}),
    "PromptSet.filter": (
        lambda model, **kw: sn.load_prompts(["en"]).filter(**kw),
        {"lang": "en", "label": "harmful", "split": "test", "limit": 2},
    ),
    "load_custom": (lambda model, **kw: sn.load_custom(**kw), {"path": "@csv"}),
    "chat_strings": (lambda model, **kw: sn.chat_strings(model.tokenizer, **kw), {"texts": ["w1"]}),
    "tokenize_chat": (lambda model, **kw: sn.tokenize_chat(model.tokenizer, **kw), {"texts": ["w1"]}),
    "wilson": (lambda model, **kw: sn.wilson(**kw), {"k": 1, "n": 2}),
    "Rate": (lambda model, **kw: sn.Rate(**kw).interval, {"k": 1, "n": 2}),
    "merge_stats": (lambda model, **kw: sn.merge_stats(**kw), {"parts": ["@stats", "@stats"]}),
    "hook_name": (lambda model, **kw: sn.hook_name(**kw), {"site": "act", "layer": 1}),
    "load_model": (lambda model, **kw: sn.load_model(**kw), {"name": "no-such-model"}),
    "RunConfig.check": (
        lambda model, **kw: sn.RunConfig(**kw).check(model),
        {"layers": [1], "rank": 2, "langs": ["zh"]},
    ),
    "run": (lambda model, **kw: sn.run(**kw), {"config": None}),
    "RunResult.write": (
        lambda model, _result, _tmp, **kw: _in(_tmp, lambda: _result.write(**kw)),
        {"_result": "@result", "_tmp": "@tmp", "out": "written"},
    ),
    "Evaluation.mean": (
        lambda model, _ev, **kw: _ev.mean(**kw),
        {"_ev": "@evaluation", "metric": "asr", "langs": ["zh"]},
    ),
    "Evaluation.rates": (
        lambda model, _ev, **kw: _ev.rates(**kw),
        {"_ev": "@evaluation", "metric": "over_refusal", "langs": ["en"]},
    ),
    "Evaluation.mean_asr": (lambda model, _ev, **kw: _ev.mean_asr(**kw), {"_ev": "@evaluation", "langs": ["zh"]}),
    "Evaluation.mean_over_refusal": (
        lambda model, _ev, **kw: _ev.mean_over_refusal(**kw),
        {"_ev": "@evaluation", "langs": ["en"]},
    ),
    "Evaluation.from_counts": (
        lambda model, **kw: sn.Evaluation.from_counts(**kw),
        {"judge": "phrase", "counts": {"en": {"harmful": {"refusal": 1}}}},
    ),
    "mean_over_languages": (lambda model, **kw: mean_over_languages(**kw), {"values": {"en": 0.5}, "langs": ["en"]}),
    "load_utility limit": (lambda model, **kw: sn.load_utility(**kw), {"limit": 2}),
    "choose": (
        lambda model, **kw: choose(**kw),
        {
            "records": [{"asr": 0.5, "over_refusal_delta": 0.0, "kl": 0.1, "en_asr_delta": 0.0}],
            "over_refusal_cap": 0.05,
            "kl_cap": 1.0,
            "en_asr_cap": 0.05,
        },
    ),
    "select_layers": (
        select_layers,
        {
            "candidates": [[1]],
            "fit": "@fit",
            "val_harmful": "@harmful",
            "val_harmless": "@harmless",
            "over_refusal_cap": 0.05,
            "kl_cap": 1.0,
            "en_asr_cap": 0.05,
            "max_new_tokens": 2,
            "batch_size": 4,
        },
    ),
    **{
        f"{kind}.load": (lambda model, _cls, **kw: _cls.load(**kw), {"_cls": getattr(sn, kind), "path": "@artifact"})
        for kind in ARTIFACTS
    },  # `save` with a bad path: tests/test_artifacts.py (a string would write a folder here)
}

# values a function accepts by design for an argument (None = the default; the check is the result then)
ACCEPTS = {
    ("evaluate", "judge", "None"),
    ("kl_divergence", "intervention", "None"),
    ("fit_edit", "rows", "None"),
    ("rank_neurons", "langs", "None"),
    ("rank_neurons", "tau_mag", "None"),
    ("rank_neurons", "tau_stat", "None"),
    ("rank_by_attribution", "layers", "None"),
    ("collect_activations", "stats_site", "None"),
    ("NeuronScaling.from_ranking", "layers", "None"),
    ("SafetyNeurons.union", "langs", "None"),
    ("SafetyNeurons.jaccard", "layer", "None"),
    ("rank_neurons top_k", "top_k", "None"),
    ("rank_neurons top_frac", "top_frac", "None"),
    ("RunConfig.check", "langs", "None"),
    ("RunConfig.check", "layers", "None"),
    ("load_prompts", "langs", "str"),
    ("load_utility", "langs", "str"),
    ("PromptSet.filter", "lang", "None"),
    ("PromptSet.filter", "label", "None"),
    ("PromptSet.filter", "split", "None"),
    ("PromptSet.filter", "limit", "None"),
    ("collect_activations", "stats_layers", "None"),
    ("load_prompts", "langs", "empty"),
    ("load_utility", "langs", "empty"),
    *(("collect_activations", arg, bad) for arg in ("rows_at", "gram_at") for bad in ("None", "empty", "dict")),
    ("collect_activations", "stats_layers", "empty"),
    ("collect_activations", "stats_layers", "dict"),  # no statistics
    ("NeuronScaling", "alpha", "float"),
    ("NeuronScaling", "alpha", "negative"),
    ("NeuronScaling.from_ranking", "alpha", "float"),
    ("NeuronScaling.from_ranking", "alpha", "negative"),
    ("RefusalDirection.fit", "coeff", "float"),
    ("RefusalDirection.fit", "coeff", "negative"),
    ("rank_neurons", "tau_mag", "float"),
    ("rank_neurons", "tau_stat", "float"),
    ("rank_neurons", "tau_mag", "negative"),
    ("rank_neurons", "tau_stat", "negative"),
    ("RunConfig.check", "rank", "None"),
    ("Judge.judge_one", "prompt", "str"),
    ("Judge.judge_one", "answer", "str"),
    ("fit_detector", "ridge", "float"),
    ("fit_switch", "neurons", "None"),
    ("fit_switch", "width", "float"),
    ("fit_switch", "threshold", "float"),
    ("fit_switch", "threshold", "negative"),
    ("fit_switch", "strength", "float"),
    ("fit_switch", "strength", "negative"),
    ("RunResult.write", "out", "str"),
    ("Evaluation.mean", "langs", "None"),
    ("Evaluation.rates", "langs", "None"),
    ("Evaluation.mean_asr", "langs", "None"),
    ("Evaluation.mean_over_refusal", "langs", "None"),
    ("Evaluation.from_counts", "judge", "str"),
    ("mean_over_languages", "values", "dict"),
    ("mean_over_languages", "langs", "None"),
    ("load_utility limit", "limit", "None"),
    ("choose", "over_refusal_cap", "float"),
    ("choose", "kl_cap", "float"),
    ("choose", "en_asr_cap", "float"),
    ("select_layers", "over_refusal_cap", "float"),
    ("select_layers", "kl_cap", "float"),
    ("select_layers", "en_asr_cap", "float"),
}
# the edit recipes: None is "not chosen" (layers, languages), "no limit" (rank) or "the default" (null space, neurons)
ACCEPTS |= {
    ("EditSpec.paper", "layers", "None"),
    ("EditSpec.paper", "langs", "None"),
    ("EditSpec.paper", "rank", "None"),
    ("EditSpec.paper", "gamma", "float"),
    ("EditSpec.paper", "ridge", "float"),
    ("EditSpec.linear", "layers", "None"),
    ("EditSpec.linear", "neuron_langs", "None"),
    ("EditSpec.linear", "refusal_boost", "float"),
    ("EditSpec.linear", "refusal_boost", "negative"),
    ("EditSpec.linear", "position_weight", "float"),
    ("EditSpec.linear", "preserve", "empty"),
    ("EditSpec.linear", "preserve", "dict"),
    ("EditSpec.linear", "sequential", "bool"),
    ("EditSpec.nullspace", "layers", "None"),
    ("EditSpec.nullspace", "null_energy", "None"),
    ("EditSpec.switch", "threshold", "float"),
    ("EditSpec.switch", "threshold", "negative"),
    ("EditSpec.switch", "width", "float"),
    ("EditSpec.switch", "strength", "float"),
    ("EditSpec.switch", "strength", "negative"),
    ("EditSpec.switch", "neurons", "None"),
    ("EditSpec.switch", "probe_ridge", "float"),
    ("EditSpec.replace", "rank", "None"),
    ("EditSpec.replace", "langs", "None"),
    ("SolverOptions", "rank", "None"),
    ("SolverOptions", "gamma", "float"),
    ("SolverOptions", "ridge", "float"),
    ("SolverOptions", "null_energy", "None"),
    ("SwitchOptions", "threshold", "float"),
    ("SwitchOptions", "threshold", "negative"),
    ("SwitchOptions", "width", "float"),
    ("SwitchOptions", "strength", "float"),
    ("SwitchOptions", "strength", "negative"),
    ("SwitchOptions", "probe_ridge", "float"),
}


def _in(folder, call):
    """`call()` with `folder` as the working directory (a relative path it writes lands there)."""
    here = os.getcwd()
    os.chdir(folder)
    try:
        return call()
    finally:
        os.chdir(here)


CASES = [(name, arg, bad) for name, (_, args) in SPECS.items() for arg in args if arg[0] != "_" for bad in BAD]


def _value(v, ctx, tmp_path):
    if isinstance(v, list):
        return [_value(x, ctx, tmp_path) for x in v]
    if isinstance(v, str) and v == "@csv":
        path = tmp_path / "p.csv"
        path.write_text("id,lang,label,text\n1,en,harmful,w1 w2\n")
        return path
    if isinstance(v, str) and v == "@artifact":  # a folder of every kind: each load reads its own file
        for obj in (ctx["edit"], ctx["ranking"], ctx["stats"], ctx["detector"], sn.NeuronScaling({1: [0]})):
            obj.save(tmp_path / "artifact")
        return tmp_path / "artifact"
    return ctx[v[1:]] if isinstance(v, str) and v.startswith("@") else v


def _raised_by_the_package(err: BaseException) -> bool:
    last = traceback.extract_tb(err.__traceback__)[-1]
    return last.filename.startswith(PACKAGE) and (last.line or "").lstrip().startswith("raise")


def test_the_sweep_covers_the_public_functions():
    public = {n for n in dir(sn) if not n.startswith("_") and inspect.isfunction(getattr(sn, n))}
    covered = {n.split(" ")[0].split(".")[0] for n in SPECS} | {
        "generate",
        "export_hf",
        "bridge_from_hf",
        "hf_state_dict",
        "load_multijail",
        "load_strongreject",
        "merge_collections",
    }
    assert not public - covered - {"solve_edit"}, public - covered  # solve_edit: tensors only, tests/test_solver.py


MODEL_CASES = [
    (name, bad)
    for name, (fn, args) in SPECS.items()
    if ("prompts" in args and name != "PhraseJudge.judge") or name in ("mc_accuracy", "NeuronScaling", "select_layers")
    for bad in ("None", "str", "dict")
] + [("RunConfig.check", "str")]  # check(None): no model to check against


@pytest.mark.parametrize("name, bad", MODEL_CASES, ids=[f"{n}-model-{b}" for n, b in MODEL_CASES])
def test_not_a_model_gets_a_clear_error(ctx, tmp_path, name, bad):
    fn, args = SPECS[name]
    kwargs = {k: _value(v, ctx, tmp_path) for k, v in args.items()}
    with pytest.raises(ValueError, match="model"):
        fn(BAD[bad], **kwargs)


@pytest.mark.parametrize(
    "call",
    [
        lambda e, b: e.apply(b),
        lambda e, b: e.export(b, "/tmp/none"),
        lambda e, b: sn.export_hf(b, "/tmp/none"),
        lambda e, b: sn.hf_state_dict(b),
    ],
)
def test_edits_and_exports_need_a_model(ctx, call):
    with pytest.raises(ValueError, match="must be a model"):
        call(ctx["edit"], "model.gguf")


@pytest.mark.parametrize("name, arg, bad", CASES, ids=[f"{n}-{a}-{b}" for n, a, b in CASES])
def test_bad_argument_gets_a_clear_error(ctx, tmp_path, name, arg, bad):
    fn, args = SPECS[name]
    kwargs = {k: _value(v, ctx, tmp_path) for k, v in args.items()}
    kwargs[arg] = BAD[bad]
    if "progress" in inspect.signature(fn).parameters:
        kwargs["progress"] = False
    try:
        fn(ctx["model"], **kwargs)
    except Exception as err:  # noqa: BLE001 - the point: which errors come out
        assert _raised_by_the_package(err), f"{type(err).__name__} from deep inside: {err!r}\n" + "".join(
            traceback.format_tb(err.__traceback__)[-3:]
        )
        assert str(err).strip(), "an error without a message"
    else:
        assert (name, arg, bad) in ACCEPTS or (bad == "bool" and arg == "progress"), (
            f"{name}({arg}={BAD[bad]!r}) was accepted"
        )
