"""The harm switch: a conditional edit carried by two repurposed neurons of one gated MLP.

A linear edit of W_out adds to every prompt a share of what it adds to the harmful prompts that look like
it (benchmarks/README.md, "What limits it"). The switch adds nothing unless two things hold at a position:
it is where the answer opens (the last `trigger` tokens of the chat template, ``assistant`` and the
newline after it for ChatML: the first answer token is read off there), and a harm probe fires there.

* The probe w reads the MLP input x of one layer (the RMS-normalised residual): weighted ridge least
  squares, +1 at harmful prompts' trigger positions, −1 at harmless ones', each (language, label) group
  weighing the same.
* The place v: v·x ≈ 1 at trigger positions and ≈ 0 at every other position (message tokens, the other
  template tokens and the tokens of the model's own answers to harmless prompts, since a weight edit acts
  on generated tokens too), least squares. It is the neurons' up input, so they are mute elsewhere.
* The gated MLP has no bias: a near-constant direction c (c·x ≈ 1 at every position; sd 0.013 on the
  packaged Qwen model) gives the probe its threshold θ.
* Two neurons, taken from the layer's least used (smallest E[a²]·‖W_out row‖² on harmless text), turn
  SiLU's ramp into a saturating step::

      gate₁ = s (w − θ c)      gate₂ = gate₁ − m c      up₁ = up₂ = v      out₁ = −out₂ = (α / m) r

  With z = w·x, u = v·x and k = c·x ≈ 1 they add (α/m)·u·[SiLU(s(z − θk)) − SiLU(s(z − θk) − m k)]·r to the
  residual stream: α·u·r once z ≥ θ + width (width = m / s); below θ − 1.25·width at most 4e-4·α·|u|·‖r‖;
  between there and θ at most 3.5% of α·|u|·‖r‖, of the opposite sign (SiLU's dip). r is the English
  refusal direction at the layer's output: the mean residual at the trigger positions of harmful English
  prompts minus that of harmless ones.

The result is an ordinary `WeightEdit` (three `LayerEdit`s on the same neurons: gate, up and w_out columns
or rows replaced): save, load, export to a plain HF folder, revert bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ._checks import (
    Artifact,
    as_indices,
    as_records,
    check_int,
    check_model,
    check_number,
    check_positive_int,
)
from .activations import SITES, _StopForward, hook_name, model_tag
from .chat import encode_chat, sorted_batches, template_suffix_length
from .edit import LayerEdit, WeightEdit, _weight
from .prompts import Prompt
from .recipes import EditSpec

STEP = 8.0  # m: the second neuron's offset, in gate units (SiLU(8) = 7.997: the step saturates at m)


class SwitchError(ValueError):
    """A harm detector or switch cannot be fitted, built or loaded as asked."""


@dataclass
class Scores:
    """The probe's score z = w·x of each prompt at its trigger positions (their maximum), and the place
    signal u = v·x elsewhere (its largest size over the message and over the given answer)."""

    prompts: list[Prompt]
    trigger: Float[Tensor, " n"]  # max z over the trigger positions
    leak_message: Float[Tensor, " n"]  # max |u| over every other prompt position
    leak_answer: Float[Tensor, " n"]  # max |u| over the given answer's tokens (0 without one)

    def fires(self, threshold: float) -> Tensor:
        """Whether the switch turns on for each prompt: the probe passes θ at a trigger position."""
        return self.trigger > threshold

    def roc_auc(self, lang: str | None = None) -> float:
        """AUC of the trigger score, harmful against harmless prompts (of one language, or all)."""
        sel = [i for i, p in enumerate(self.prompts) if lang is None or p.lang == lang]
        pos = self.trigger[[i for i in sel if self.prompts[i].label == "harmful"]]
        neg = self.trigger[[i for i in sel if self.prompts[i].label == "harmless"]]
        if not len(pos) or not len(neg):
            raise SwitchError(f"AUC needs harmful and harmless prompts{f' in {lang}' if lang else ''}")
        return float(((pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()).mean())


@dataclass
class HarmDetector(Artifact):
    """A harm probe at one layer, where it may act, the constant direction that gives it a threshold, and
    what the switch writes (float64)."""

    layer: int
    probe: Float[Tensor, " d_model"]  # w: ≈ +1 at harmful prompts' trigger positions, ≈ −1 at harmless ones'
    place: Float[Tensor, " d_model"]  # v: ≈ 1 at trigger positions, ≈ 0 everywhere else
    const: Float[Tensor, " d_model"]  # c: c·x ≈ 1 at every position
    refusal: Float[
        Tensor, " d_model"
    ]  # r: English harmful − harmless mean residual after the layer (trigger positions)
    usage: Float[Tensor, " d_mlp"]  # E[a²]·‖W_out row‖² over harmless positions (which neurons are least used)
    settings: dict = field(default_factory=dict)
    model: str = ""  # `model_tag` of the model it was fitted on

    # files (`_checks.Artifact`): detector.json and detector.safetensors
    _FIELDS = ("layer", "settings", "model")
    _TENSORS = ("probe", "place", "const", "refusal", "usage")
    _ERROR = SwitchError

    @property
    def trigger(self) -> int:
        return int(self.settings.get("trigger", 2))

    def least_used(self, k: int) -> list[int]:
        return torch.argsort(self.usage)[:k].tolist()

    @torch.no_grad()
    def scores(
        self,
        model,
        prompts: Sequence[Prompt],
        answers: Sequence[str | None] | None = None,
        *,
        batch_size: int = 16,
        progress: bool = False,
    ) -> Scores:
        """Per prompt: the probe's maximum at the trigger positions, and how far the place signal strays from
        0 elsewhere (on `answers`, aligned, appended after each prompt, too)."""
        self._check_model(model)
        prompts = _check_prompts(prompts)
        w, v = self.probe.to(torch.float32), self.place.to(torch.float32)
        trig, leak_m, leak_a = (torch.zeros(len(prompts)) for _ in range(3))
        point = ("mlp_in", self.layer)
        for rows, kinds, idx in _positions(
            model, prompts, answers, [point], self.trigger, batch_size, progress, "scoring"
        ):
            x = rows[point].float()
            z, u = (x @ w.to(x.device)).cpu(), (x @ v.to(x.device)).abs().cpu()
            for r, i in enumerate(idx):
                k = kinds[r]
                trig[i] = z[r][k == TRIGGER].max()
                leak_m[i] = u[r][(k == MESSAGE) | (k == OPENING)].max()
                leak_a[i] = u[r][k == ANSWER].max() if (k == ANSWER).any() else 0.0
        return Scores(prompts, trig, leak_m, leak_a)

    def _check_model(self, model) -> None:
        check_model(model, SwitchError)
        if self.model and self.model != model_tag(model):
            raise SwitchError("this detector was fitted on another model (model tag mismatch)")
        if not 0 <= self.layer < model.cfg.n_layers:
            raise SwitchError(f"detector layer {self.layer} out of range: the model has {model.cfg.n_layers} layers")


MESSAGE, OPENING, ANSWER, TRIGGER = 0, 1, 2, 3  # kinds of position (−1: padding)


def _positions(model, prompts, answers, points, trigger, batch_size, progress, desc):
    """Batches of activations at the (site, layer) `points` over each prompt's chat tokens and its answer's,
    with each position's kind (MESSAGE, OPENING: the template's tokens after the message, TRIGGER: the last
    `trigger` of those, ANSWER): one forward pass a batch, stopped once the last point is recorded."""
    tok = model.tokenizer
    suffix = template_suffix_length(tok)
    if not 1 <= trigger <= suffix:
        raise SwitchError(
            f"trigger must be between 1 and the template's {suffix} tokens after the message, got {trigger}"
        )
    seqs, kinds = [], []
    for i, ids in enumerate(encode_chat(tok, [p.text for p in prompts])):
        extra = tok(answers[i], add_special_tokens=False).input_ids if answers is not None and answers[i] else []
        seqs.append(ids + extra)
        kinds.append(
            torch.tensor(
                [MESSAGE] * (len(ids) - suffix)
                + [OPENING] * (suffix - trigger)
                + [TRIGGER] * trigger
                + [ANSWER] * len(extra)
            )
        )
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
        for idx, batch in tqdm(
            sorted_batches(seqs, tok, batch_size), total=n_batches, desc=desc, disable=not progress, unit="batch"
        ):
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
    return as_records("prompts", prompts, Prompt, SwitchError)


def _solve(G: Tensor, b: Tensor, ridge: float) -> Tensor:
    d = G.shape[0]
    return torch.linalg.solve(G + ridge * torch.trace(G) / d * torch.eye(d, dtype=G.dtype), b)


@torch.no_grad()
def fit_detector(
    model,
    prompts: Sequence[Prompt],
    *,
    layer: int,
    answers: Mapping[tuple[str, str], str] | None = None,
    answer_tokens: int = 32,
    trigger: int = 2,
    pivot: str = "en",
    ridge: float = 1.0,
    batch_size: int = 16,
    progress: bool = True,
) -> HarmDetector:
    """Fit the harm probe w, the place v, the constant direction c, the refusal direction r and the
    neurons' usage at `layer`, in one streaming pass (float64 sums, no rows kept).

    Args:
        prompts: harmful and harmless prompts in every language the switch should serve (typically
            `load_prompts().filter(split="anchor")`); the `pivot` ones also give r.
        answers: the model's own answers to the harmless prompts, {(lang, id): text}: positions where v
            must be 0. None: generated here (greedy, `answer_tokens` tokens; 0: prompts only).
        trigger: how many of the chat template's last tokens the switch may act at (2 for ChatML:
            ``assistant`` and the newline that opens the answer).
        ridge: the probe's ridge, relative to tr(G)/d (1.0 was best on the validation split; the probe
            has a few hundred prompts for d_model weights).
    """
    check_model(model, SwitchError)
    prompts = _check_prompts(prompts)
    layer = check_int("layer", layer, SwitchError)
    if not 0 <= layer < model.cfg.n_layers:
        raise SwitchError(f"layer {layer} out of range: the model has {model.cfg.n_layers} layers")
    ridge = check_number("ridge", ridge, SwitchError, minimum=0)
    answer_tokens = check_positive_int("answer_tokens", answer_tokens, SwitchError, minimum=0)
    trigger = check_positive_int("trigger", trigger, SwitchError)
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

        texts = generate(
            model,
            harmless,
            max_new_tokens=answer_tokens,
            batch_size=batch_size,
            progress=progress,
            desc="answering harmless prompts",
        )
        answers = {(p.lang, p.id): a for p, a in zip(harmless, texts)}
    answers = dict(answers or {})
    aligned = [answers.get((p.lang, p.id)) if p.label == "harmless" else None for p in prompts]
    sums = _detector_sums(model, prompts, aligned, layer, trigger, pivot, batch_size, progress)
    return _detector_from_sums(
        model,
        sums,
        prompts,
        aligned,
        layer=layer,
        ridge=ridge,
        trigger=trigger,
        pivot=pivot,
        answer_tokens=answer_tokens,
    )


@dataclass
class _Sums:
    """One language's float64 sums for the detector's least-squares fits (`_detector_sums`)."""

    G_t: Tensor  # trigger positions: Σ ω x xᵀ, each (lang, label) group of this language weighing 1
    b_t: Tensor  # Σ ω y x
    G_on: Tensor  # the place's "1" rows (trigger positions), each prompt weighing 1: Σ x xᵀ / n_positions
    s_on: Tensor
    G_off: Tensor  # its "0" rows (every other position, answers included)
    s_off: Tensor
    n: int  # prompts
    r_sum: dict  # pivot only: Σ residual at trigger positions, per label
    r_n: dict
    a2: Tensor  # Σ a² over harmless positions
    a_n: int


def _detector_sums(model, prompts, aligned, layer, trigger, pivot, batch_size, progress) -> dict[str, _Sums]:
    """One streaming pass; the sums are kept per language, so that a detector can be solved from any subset
    of the languages (`_detector_from_sums`: the leave-one-language-out benchmark) without another pass."""
    count: dict[tuple[str, str], int] = {}
    for p in prompts:
        count[(p.lang, p.label)] = count.get((p.lang, p.label), 0) + 1
    d, d_mlp, f64 = model.cfg.d_model, model.cfg.d_mlp, torch.float64

    def zeros(*shape):
        return torch.zeros(*shape, dtype=f64)

    sums = {
        lang: _Sums(
            zeros(d, d),
            zeros(d),
            zeros(d, d),
            zeros(d),
            zeros(d, d),
            zeros(d),
            0,
            {"harmful": zeros(d), "harmless": zeros(d)},
            {"harmful": 0, "harmless": 0},
            zeros(d_mlp),
            0,
        )
        for lang in sorted({p.lang for p in prompts})
    }
    x_pt, a_pt, r_pt = ("mlp_in", layer), ("act", layer), ("resid", layer)
    for cur, kinds, idx in _positions(
        model,
        prompts,
        aligned,
        [x_pt, a_pt, r_pt],
        trigger,
        batch_size,
        progress,
        f"fitting the harm detector at layer {layer}",
    ):
        x, act, resid = (cur[k].to(f64).cpu() for k in (x_pt, a_pt, r_pt))
        for r, i in enumerate(idx):
            p, k = prompts[i], kinds[r]
            S = sums[p.lang]
            on, off = x[r][k == TRIGGER], x[r][(k >= 0) & (k != TRIGGER)]
            omega = 1.0 / (count[(p.lang, p.label)] * len(on))  # each (lang, label) group weighs the same
            y = 1.0 if p.label == "harmful" else -1.0
            S.G_t += omega * on.T @ on
            S.b_t += omega * y * on.sum(0)
            S.G_on += on.T @ on / len(on)  # every prompt weighs the same in the place's fit
            S.s_on += on.sum(0) / len(on)
            S.G_off += off.T @ off / len(off)
            S.s_off += off.sum(0) / len(off)
            S.n += 1
            if p.label == "harmless":
                S.a2 += (act[r][k >= 0] ** 2).sum(0)
                S.a_n += int((k >= 0).sum())
            if p.lang == pivot:
                S.r_sum[p.label] += resid[r][k == TRIGGER].sum(0)
                S.r_n[p.label] += int((k == TRIGGER).sum())
    return sums


def _detector_from_sums(
    model,
    sums: Mapping[str, _Sums],
    prompts,
    aligned,
    *,
    layer,
    ridge,
    trigger,
    pivot,
    answer_tokens,
    langs: Sequence[str] | None = None,
) -> HarmDetector:
    """Solve the detector from the sums of `langs` (default all of them); `prompts` are the fitted ones."""
    langs = sorted(sums) if langs is None else sorted(langs)
    if pivot not in langs:
        raise SwitchError(f"the refusal direction needs the pivot language {pivot!r} among {langs}")
    parts = [sums[lang] for lang in langs]
    n = sum(S.n for S in parts)

    def total(name):
        return sum(getattr(S, name) for S in parts)

    probe = _solve(total("G_t"), total("b_t"), ridge)
    G_all = (total("G_on") + total("G_off")) / n
    place = _solve(G_all, total("s_on") / n, 1e-6)  # least squares: 1 at trigger positions, 0 elsewhere
    const = _solve(G_all, (total("s_on") + total("s_off")) / n, 1e-6)  # 1 everywhere
    P = sums[pivot]
    refusal = P.r_sum["harmful"] / P.r_n["harmful"] - P.r_sum["harmless"] / P.r_n["harmless"]
    w_out = _weight(model, layer, "w_out").detach().to(torch.float64).cpu()
    usage = total("a2") / max(total("a_n"), 1) * (w_out**2).sum(1)
    kept = [(p, a) for p, a in zip(prompts, aligned) if p.lang in langs]
    settings = {
        "layer": layer,
        "ridge": ridge,
        "trigger": trigger,
        "pivot": pivot,
        "answer_tokens": answer_tokens,
        "langs": langs,
        "harmful_ids": sorted({p.id for p, _ in kept if p.label == "harmful"}),
        "harmless_ids": sorted({p.id for p, _ in kept if p.label == "harmless"}),
        "answers": sum(a is not None for _, a in kept),
    }
    return HarmDetector(layer, probe, place, const, refusal, usage, settings, model_tag(model))


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
        threshold: θ, in the probe's units (harmful trigger positions were fitted to +1, harmless ones to −1).
        width: the score range over which the switch ramps from off to on (s = m / width).
        strength: α, the multiple of the refusal direction r written when on.
        neurons: the two neurons to repurpose; default the detector's two least used.

    On the packaged Qwen model `benchmarks/harm_switch.py` chose layer 20, θ = 0.33 and α = 8 on the validation
    split (θ with 3 of 160 validation harmless prompts above it); the defaults here are neutral starting points.
    The edit's `spec` is the `EditSpec.switch` of these settings and the detector's; ``fit_edit(model, prompts,
    EditSpec.switch(layer=..., ...))`` fits the detector and the switch in one call.
    """
    if not isinstance(detector, HarmDetector):
        raise SwitchError(f"detector must be a HarmDetector (from fit_detector), got {type(detector).__name__}")
    detector._check_model(model)
    threshold = check_number("threshold", threshold, SwitchError)
    width = check_number("width", width, SwitchError)
    strength = check_number("strength", strength, SwitchError)
    if not width > 0:
        raise SwitchError(f"width must be > 0, got {width}")
    layer, d_mlp, given = detector.layer, model.cfg.d_mlp, neurons
    if neurons is None:
        neurons = detector.least_used(2)
    if isinstance(neurons, str) or not hasattr(neurons, "__len__") or len(neurons) != 2:
        raise SwitchError(f"neurons must be two neuron indices, got {neurons!r}")
    idx = [int(j) for j in neurons]  # order kept: the first is the step's rising neuron
    if len(as_indices("neurons", neurons, SwitchError)) != 2 or not all(0 <= j < d_mlp for j in idx):
        raise SwitchError(f"neurons must be two different indices in [0, {d_mlp}), got {idx}")
    idx_t = torch.tensor(idx)
    sharp = STEP / width
    gate1 = sharp * (detector.probe - threshold * detector.const)
    gate = torch.stack([gate1, gate1 - STEP * detector.const], dim=1)  # d_model × 2
    up = torch.stack([detector.place, detector.place], dim=1)
    out = torch.stack([detector.refusal, -detector.refusal]) * (strength / STEP)  # 2 × d_model
    edits = []
    for site, new in (("gate", gate), ("up", up), ("w_out", out)):
        w = _weight(model, layer, site).detach()
        old = w[idx_t] if site == "w_out" else w[:, idx_t]
        delta = new.to(dtype=w.dtype, device=old.device) - old
        edits.append(LayerEdit(layer, site, idx_t.clone(), delta.cpu(), None, {"replaces": True}))
    settings = {
        "kind": "harm_switch",
        "layer": layer,
        "threshold": threshold,
        "width": width,
        "strength": strength,
        "neurons": idx,
        "step": STEP,
        "detector": detector.settings,
    }
    d = detector.settings
    spec = EditSpec.switch(
        layer=layer,
        threshold=threshold,
        width=width,
        strength=strength,
        neurons=None if given is None else idx,
        probe_ridge=d.get("ridge", 1.0),
        trigger=d.get("trigger", 2),
        answer_tokens=d.get("answer_tokens", 32),
        pivot=d.get("pivot", "en"),
    )
    edit = WeightEdit(edits, settings, {"langs": d.get("langs", [])}, spec=spec)
    edit.fingerprint = edit.model_fingerprint(model)
    return edit
