"""The harm switch: a conditional edit carried by a few repurposed neurons of one gated MLP.

A linear edit of W_out adds to every prompt a share of what it adds to the harmful prompts that look like
it (benchmarks/README.md, "What limits it"). The switch adds nothing unless a harm detector fires:

* the detector is a probe w on the MLP input x of one layer (the RMS-normalised residual), solved in closed
  form by weighted least squares: +1 where a harmful prompt's answer opens (the chat template's tokens after
  the message), −1 at every other position: every message token, every token of a harmless prompt, and the
  tokens of the model's own answers to harmless prompts (a weight edit acts on generated tokens too);
* the gated MLP has no bias: a near-constant direction c of x (c·x ≈ 1 at every position, least squares on
  the same rows) gives the probe its threshold θ and the neurons a constant up input;
* each switch is two neurons, taken from the layer's least-used ones (smallest E[a²]·‖W_out row‖² on
  harmless text), whose difference turns SiLU's ramp into a saturating step::

      gate₁ = s (w − θ c)      gate₂ = gate₁ − m c      up₁ = up₂ = c      out₁ = −out₂ = (α / m) r

  With z = w·x the probe's score and u = c·x ≈ 1 they add to the residual stream

      (α/m)·u·[SiLU(s(z − θu)) − SiLU(s(z − θu) − m u)]·r

  which is α·u²·r once z ≥ θ + width (width = m / s), and below θ − 1.25·width at most 4e-4·α‖r‖ in size
  (between there and θ at most 3.5% of α‖r‖, of the opposite sign: SiLU's dip). r is the English refusal
  direction at the layer's output: the mean residual where a harmful English prompt's answer opens minus
  that of a harmless one.

The result is an ordinary `WeightEdit` (three `LayerEdit`s on the same neurons: gate, up and w_out columns
or rows replaced): save, load, export to a plain HF folder, revert bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from ._checks import atomic_dir, check_int, check_number, check_out_dir, check_positive_int, read_json, read_tensors, require
from .activations import SITES, _StopForward, hook_name, model_tag
from .chat import encode_chat, sorted_batches, template_suffix_length
from .edit import LayerEdit, WeightEdit, _weight
from .prompts import Prompt

STEP = 8.0  # m: the second neuron's offset, in gate units (SiLU(8) = 7.997: the step saturates at m)
FORMAT_VERSION = 1


class SwitchError(ValueError):
    """A harm detector or switch cannot be fitted, built or loaded as asked."""


@dataclass
class Scores:
    """The detector's score z = w·x per prompt: its maximum over each kind of position."""

    prompts: list[Prompt]
    opening: Float[Tensor, " n"]  # where the answer opens (the template's tokens after the message)
    message: Float[Tensor, " n"]  # the message tokens (and the template's tokens before them)
    answer: Float[Tensor, " n"]  # the given answer's tokens (−inf when no answer was given)

    def fires(self, threshold: float) -> Tensor:
        """Whether the switch turns on anywhere in each prompt (and its answer): any position above θ."""
        return torch.maximum(torch.maximum(self.opening, self.message), self.answer) > threshold

    def roc_auc(self, lang: str | None = None) -> float:
        """AUC of the opening score, harmful against harmless prompts whose any-position maximum is used."""
        sel = [i for i, p in enumerate(self.prompts) if lang is None or p.lang == lang]
        pos = torch.tensor([self.opening[i] for i in sel if self.prompts[i].label == "harmful"])
        worst = torch.maximum(torch.maximum(self.opening, self.message), self.answer)
        neg = torch.tensor([worst[i] for i in sel if self.prompts[i].label == "harmless"])
        if not len(pos) or not len(neg):
            raise SwitchError(f"AUC needs harmful and harmless prompts{f' in {lang}' if lang else ''}")
        return float(((pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()).mean())


@dataclass
class HarmDetector:
    """A harm probe at one layer, the constant direction that gives it a threshold, and what the switch
    writes (all float64, d_model)."""

    layer: int
    probe: Float[Tensor, " d_model"]  # w: ≈ +1 where a harmful prompt's answer opens, ≈ −1 elsewhere
    const: Float[Tensor, " d_model"]  # c: c·x ≈ 1 at every position
    refusal: Float[Tensor, " d_model"]  # r: English harmful − harmless mean residual after the layer, at the opening
    usage: Float[Tensor, " d_mlp"]  # E[a²]·‖W_out row‖² over harmless positions (which neurons are least used)
    settings: dict = field(default_factory=dict)
    model: str = ""  # `model_tag` of the model it was fitted on

    def least_used(self, k: int) -> list[int]:
        return torch.argsort(self.usage)[:k].tolist()

    @torch.no_grad()
    def scores(self, model, prompts: Sequence[Prompt], answers: Sequence[str | None] | None = None, *,
               batch_size: int = 16, progress: bool = False) -> Scores:  # fmt: skip
        """The probe's per-prompt maxima on `prompts` (and on `answers`, aligned, appended after each prompt)."""
        self._check_model(model)
        w = self.probe.to(torch.float32)
        out = {"opening": [], "message": [], "answer": []}
        per = [dict.fromkeys(out, float("-inf")) for _ in prompts]
        point = ("mlp_in", self.layer)
        for rows, kinds, idx in _positions(model, prompts, answers, [point], batch_size, progress, "scoring"):
            z = (rows[point] @ w.to(rows[point].device)).cpu()
            for kind, code in (("message", 0), ("opening", 1), ("answer", 2)):
                for r, i in enumerate(idx):
                    sel = z[r][kinds[r] == code]
                    if len(sel):
                        per[i][kind] = float(sel.max())
        return Scores(list(prompts), *(torch.tensor([p[k] for p in per]) for k in ("opening", "message", "answer")))

    def _check_model(self, model) -> None:
        if self.model and self.model != model_tag(model):
            raise SwitchError("this detector was fitted on another model (model tag mismatch)")
        if not 0 <= self.layer < model.cfg.n_layers:
            raise SwitchError(f"detector layer {self.layer} out of range: the model has {model.cfg.n_layers} layers")

    # --- files -----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write detector.safetensors and detector.json into the folder `path` (atomically)."""
        path = check_out_dir("path", path, SwitchError)
        tensors = {k: getattr(self, k).contiguous() for k in ("probe", "const", "refusal", "usage")}
        cfg = {"kind": "HarmDetector", "format_version": FORMAT_VERSION, "layer": self.layer,
               "settings": self.settings, "model": self.model}  # fmt: skip
        with atomic_dir(path) as tmp:
            save_file(tensors, tmp / "detector.safetensors")
            (tmp / "detector.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "HarmDetector":
        path = Path(path)
        cfg_file = path / "detector.json"
        cfg = read_json(cfg_file, SwitchError)
        require(cfg, ("kind", "format_version", "layer", "settings", "model"), cfg_file, SwitchError)
        if cfg["kind"] != "HarmDetector" or cfg["format_version"] > FORMAT_VERSION:
            raise SwitchError(f"{cfg_file}: not a HarmDetector of format ≤ {FORMAT_VERSION} ({cfg['kind']!r} v{cfg['format_version']})")
        t = read_tensors(path / "detector.safetensors", SwitchError)
        missing = {"probe", "const", "refusal", "usage"} - set(t)
        if missing:
            raise SwitchError(f"{path / 'detector.safetensors'}: missing tensors {sorted(missing)}")
        return cls(int(cfg["layer"]), t["probe"], t["const"], t["refusal"], t["usage"], cfg["settings"], cfg["model"])


def _positions(model, prompts, answers, points, batch_size, progress, desc):
    """Batches of activations at the (site, layer) `points` over each prompt's chat tokens and its answer's,
    with each position's kind (−1 padding, 0 message, 1 answer opening, 2 answer): one forward pass a batch,
    stopped once the last point is recorded."""
    tok = model.tokenizer
    suffix = template_suffix_length(tok)
    seqs, kinds = [], []
    for i, ids in enumerate(encode_chat(tok, [p.text for p in prompts])):
        extra = tok(answers[i], add_special_tokens=False).input_ids if answers is not None and answers[i] else []
        seqs.append(ids + extra)
        kinds.append(torch.tensor([0] * (len(ids) - suffix) + [1] * suffix + [2] * len(extra)))
    order = {site: i for i, site in enumerate(SITES)}
    last = max(points, key=lambda k: (k[1], order[k[0]]))
    current: dict[tuple[str, int], Tensor] = {}

    def keep(point):
        def hook(x, hook):
            current[point] = x.detach()
            if point == last:
                raise _StopForward

        return hook

    n_batches = -(-len(seqs) // batch_size)
    with model.hooks(fwd_hooks=[(hook_name(*point), keep(point)) for point in points]):
        for idx, batch in tqdm(sorted_batches(seqs, tok, batch_size), total=n_batches, desc=desc, disable=not progress,
                               unit="batch"):  # fmt: skip
            batch = batch.to(model.cfg.device)
            current.clear()
            try:
                model(batch.input_ids, **batch.model_kwargs())
            except _StopForward:
                pass
            width = batch.input_ids.shape[1]
            row_kinds = torch.full((len(idx), width), -1)
            for r, i in enumerate(idx):  # left padding
                row_kinds[r, width - len(kinds[i]) :] = kinds[i]
            yield current, row_kinds, idx


def _check_prompts(prompts) -> list[Prompt]:
    if isinstance(prompts, str) or not all(isinstance(p, Prompt) for p in prompts):
        raise SwitchError("prompts must be Prompt records (e.g. a PromptSet), not strings")
    prompts = list(prompts)
    if not prompts:
        raise SwitchError("no prompts given: the prompt list is empty")
    return prompts


@torch.no_grad()
def fit_detector(
    model,
    prompts: Sequence[Prompt],
    *,
    layer: int,
    answers: Mapping[tuple[str, str], str] | None = None,
    answer_tokens: int = 32,
    pivot: str = "en",
    ridge: float = 1e-3,
    batch_size: int = 16,
    progress: bool = True,
) -> HarmDetector:
    """Fit the harm probe, the constant direction, the refusal direction and the neurons' usage at `layer`.

    Args:
        prompts: harmful and harmless prompts, in every language the switch should serve (typically
            `load_prompts().filter(split="anchor")`); `pivot` harmful and harmless prompts give r.
        answers: the model's own answers to the harmless prompts, {(lang, id): text}; their tokens are
            negatives too. None: generated here, greedy, `answer_tokens` tokens (0: prompts only).
        ridge: the probe's ridge, relative to tr(G)/d.

    Each (language, kind) group weighs the same: harmful openings (+1), harmless prompts with their
    answers (−1) and harmful messages (−1); within a group each prompt weighs the same, spread evenly
    over its positions.
    """
    prompts = _check_prompts(prompts)
    layer = check_int("layer", layer, SwitchError)
    if not 0 <= layer < model.cfg.n_layers:
        raise SwitchError(f"layer {layer} out of range: the model has {model.cfg.n_layers} layers")
    ridge = check_number("ridge", ridge, SwitchError, minimum=0)
    answer_tokens = check_positive_int("answer_tokens", answer_tokens, SwitchError, minimum=0)
    batch_size = check_positive_int("batch_size", batch_size, SwitchError)
    harmful = [p for p in prompts if p.label == "harmful"]
    harmless = [p for p in prompts if p.label == "harmless"]
    if not harmful or not harmless:
        raise SwitchError("a harm detector needs harmful and harmless prompts")
    for label in ("harmful", "harmless"):
        if not any(p.lang == pivot and p.label == label for p in prompts):
            raise SwitchError(f"the refusal direction needs {pivot} {label} prompts")
    if answers is None and answer_tokens:
        from .evaluation import generate

        texts = generate(model, harmless, max_new_tokens=answer_tokens, batch_size=batch_size, progress=progress,
                         desc="answering harmless prompts")  # fmt: skip
        answers = {(p.lang, p.id): a for p, a in zip(harmless, texts)}
    answers = dict(answers or {})
    aligned = [answers.get((p.lang, p.id)) if p.label == "harmless" else None for p in prompts]
    count: dict[tuple[str, str], int] = {}
    for p in prompts:
        count[(p.lang, p.label)] = count.get((p.lang, p.label), 0) + 1

    d = model.cfg.d_model
    G = torch.zeros(d, d, dtype=torch.float64)
    b = torch.zeros(d, dtype=torch.float64)  # Σ ω y x
    s = torch.zeros(d, dtype=torch.float64)  # Σ ω x
    open_sum = {label: torch.zeros(d, dtype=torch.float64) for label in ("harmful", "harmless")}
    open_n = dict.fromkeys(open_sum, 0)
    a2 = torch.zeros(model.cfg.d_mlp, dtype=torch.float64)
    a_n = 0
    x_pt, r_pt, a_pt = ("mlp_in", layer), ("resid", layer), ("act", layer)
    for cur, kinds, idx in _positions(model, prompts, aligned, [x_pt, a_pt, r_pt], batch_size, progress,
                                      f"fitting the harm detector at layer {layer}"):  # fmt: skip
        x, resid, act = (cur[k].to(torch.float64).cpu() for k in (x_pt, r_pt, a_pt))
        for r, i in enumerate(idx):
            p, k = prompts[i], kinds[r]
            if p.label == "harmful":
                parts = [(k == 1, 2.0), (k == 0, -1.0)]  # the opening weighs as much as both negative groups
            else:
                parts = [(k >= 0, -1.0)]
                a2 += (act[r][k >= 0] ** 2).sum(0)
                a_n += int((k >= 0).sum())
            for sel, y in parts:
                rows = x[r][sel]
                omega = abs(y) / (count[(p.lang, p.label)] * len(rows))
                G += omega * rows.T @ rows
                b += (omega * y / abs(y)) * rows.sum(0)
                s += omega * rows.sum(0)
            if p.lang == pivot:
                open_sum[p.label] += resid[r][k == 1].sum(0)
                open_n[p.label] += int((k == 1).sum())
    eye = torch.eye(d, dtype=torch.float64) * (torch.trace(G) / d)
    probe = torch.linalg.solve(G + ridge * eye, b)
    const = torch.linalg.solve(G + 1e-6 * eye, s)
    refusal = open_sum["harmful"] / open_n["harmful"] - open_sum["harmless"] / open_n["harmless"]
    w_out = _weight(model, layer, "w_out").detach().to(torch.float64).cpu()
    usage = a2 / max(a_n, 1) * (w_out**2).sum(1)
    settings = {"layer": layer, "ridge": ridge, "pivot": pivot, "answer_tokens": answer_tokens,
                "langs": sorted({p.lang for p in prompts}), "harmful_ids": sorted({p.id for p in harmful}),
                "harmless_ids": sorted({p.id for p in harmless}), "answers": sum(a is not None for a in aligned)}  # fmt: skip
    return HarmDetector(layer, probe, const, refusal, usage, settings, model_tag(model))


def fit_switch(
    model,
    detector: HarmDetector,
    *,
    threshold: float = 0.0,
    width: float = 0.25,
    strength: float = 1.0,
    neurons: Sequence[int] | None = None,
) -> WeightEdit:
    """Build the switch from a fitted detector: two neurons at the detector's layer repurposed so that they
    add `strength` × r where the probe's score passes `threshold` (full from threshold + width on).

    Args:
        threshold: θ, in the probe's units (harmful openings were fitted to +1, everything else to −1).
        width: the score range over which the switch ramps from off to on (s = m / width).
        strength: α, the multiple of the refusal direction r written when on.
        neurons: the two neurons to repurpose; default the detector's two least used.
    """
    if not isinstance(detector, HarmDetector):
        raise SwitchError(f"detector must be a HarmDetector (from fit_detector), got {type(detector).__name__}")
    detector._check_model(model)
    threshold = check_number("threshold", threshold, SwitchError)
    width = check_number("width", width, SwitchError)
    strength = check_number("strength", strength, SwitchError)
    if not width > 0:
        raise SwitchError(f"width must be > 0, got {width}")
    layer, d_mlp = detector.layer, model.cfg.d_mlp
    if neurons is None:
        neurons = detector.least_used(2)
    if isinstance(neurons, str) or len(neurons) != 2:
        raise SwitchError(f"neurons must be two neuron indices, got {neurons!r}")
    idx = [check_int("neuron", j, SwitchError) for j in neurons]
    if len(set(idx)) != 2 or not all(0 <= j < d_mlp for j in idx):
        raise SwitchError(f"neurons must be two different indices in [0, {d_mlp}), got {idx}")
    idx_t = torch.tensor(idx)
    sharp = STEP / width
    gate1 = sharp * (detector.probe - threshold * detector.const)
    gate = torch.stack([gate1, gate1 - STEP * detector.const], dim=1)  # d_model × 2
    up = torch.stack([detector.const, detector.const], dim=1)
    out = torch.stack([detector.refusal, -detector.refusal]) * (strength / STEP)  # 2 × d_model
    edits = []
    for site, new in (("gate", gate), ("up", up), ("w_out", out)):
        w = _weight(model, layer, site).detach()
        old = w[idx_t] if site == "w_out" else w[:, idx_t]
        delta = new.to(dtype=w.dtype, device=old.device) - old
        edits.append(LayerEdit(layer, site, idx_t.clone(), delta.cpu(), None, {"replaces": True}))
    settings = {"kind": "harm_switch", "layer": layer, "threshold": threshold, "width": width, "strength": strength,
                "neurons": idx, "step": STEP, "detector": detector.settings}  # fmt: skip
    edit = WeightEdit(edits, settings, {"langs": detector.settings.get("langs", [])})
    edit.fingerprint = edit.model_fingerprint(model)
    return edit
