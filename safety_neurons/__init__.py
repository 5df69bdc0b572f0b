"""safety-neurons: find the safety neurons of Llama / Qwen chat models, compare them across languages,
and close the cross-lingual safety gap with a closed-form sparse weight edit."""

from . import distributed
from .activations import (
    ActivationError,
    ActivationRows,
    ActivationStats,
    Collection,
    collect_activations,
    hook_name,
    merge_collections,
    merge_stats,
)
from .baselines import BaselineError, NeuronScaling, RefusalDirection
from .chat import PromptTooLongError, TokenBatch, chat_strings, tokenize_chat
from .distributed import collect_sharded
from .edit import EditError, LayerEdit, WeightEdit, fit_edit
from .evaluation import (
    AnswerCache,
    Evaluation,
    EvaluationError,
    LanguageResult,
    evaluate,
    generate,
    kl_divergence,
    mc_accuracy,
    refusal_scores,
)
from .judges import GuardJudge, Judge, JudgeError, PhraseJudge, RelevanceCheck, Verdict
from .models import (
    DEFAULT_MODEL,
    PACKAGED_MODELS,
    ModelLoadError,
    bridge_from_hf,
    export_hf,
    hf_state_dict,
    load_model,
)
from .neurons import NeuronsError, SafetyNeurons, rank_by_attribution, rank_neurons
from .pipeline import RunConfig, RunResult, run
from .prompts import (
    LANGS,
    MCQuestion,
    Prompt,
    PromptSet,
    PromptSetError,
    load_custom,
    load_multijail,
    load_prompts,
    load_strongreject,
    load_utility,
)
from .rates import Rate, wilson
from .recipes import EditSpec, SwitchOptions
from .solver import Solution, SolverError, SolverOptions, solve_edit
from .switch import HarmDetector, SwitchError, fit_detector, fit_switch

__version__ = "0.1.0"

__all__ = [
    # prompts and data
    "LANGS",
    "MCQuestion",
    "Prompt",
    "PromptSet",
    "PromptSetError",
    "load_custom",
    "load_multijail",
    "load_prompts",
    "load_strongreject",
    "load_utility",
    # models and chat formatting
    "DEFAULT_MODEL",
    "PACKAGED_MODELS",
    "ModelLoadError",
    "bridge_from_hf",
    "export_hf",
    "hf_state_dict",
    "load_model",
    "PromptTooLongError",
    "TokenBatch",
    "chat_strings",
    "tokenize_chat",
    # activations and safety neurons
    "ActivationError",
    "ActivationRows",
    "ActivationStats",
    "Collection",
    "collect_activations",
    "collect_sharded",
    "distributed",
    "hook_name",
    "merge_collections",
    "merge_stats",
    "NeuronsError",
    "SafetyNeurons",
    "rank_by_attribution",
    "rank_neurons",
    # the edit, its solver, the harm switch and the baselines
    "EditError",
    "EditSpec",
    "LayerEdit",
    "WeightEdit",
    "fit_edit",
    "Solution",
    "SolverError",
    "SolverOptions",
    "solve_edit",
    "SwitchOptions",
    "HarmDetector",
    "SwitchError",
    "fit_detector",
    "fit_switch",
    "BaselineError",
    "NeuronScaling",
    "RefusalDirection",
    # measuring
    "AnswerCache",
    "Evaluation",
    "EvaluationError",
    "LanguageResult",
    "evaluate",
    "generate",
    "kl_divergence",
    "mc_accuracy",
    "refusal_scores",
    "GuardJudge",
    "Judge",
    "JudgeError",
    "PhraseJudge",
    "RelevanceCheck",
    "Verdict",
    "Rate",
    "wilson",
    # the whole pipeline
    "RunConfig",
    "RunResult",
    "run",
]
