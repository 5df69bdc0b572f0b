"""What limits the harm switch, on the full test split (30 + 30 prompts a language): its strength and threshold
swept (frontier points), an oracle (the switch forced on for every harmful prompt and off for every harmless
one: what a perfect detector would give), and leave-one-language-out (the detector fitted without a language,
measured on it).

    python benchmarks/switch_limits.py --stage base sweep oracle lolo

Every stage appends to `results/switch_limits.json`; `--stage table` prints the markdown from it. The unedited
model's test answers (stage `base`, `results/test_base_answers.json`) are the drafts of every edited run, so an
edited answer costs one forward pass where it agrees with them. The detector is the one `harm_switch.py` fitted
(layer 20, shipped in `tests/data/switch_detector_qwen_L20`); θ = 0.33, α = 8 were chosen there on validation.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import safety_neurons as sn
from safety_neurons import switch as sw
from safety_neurons.evaluation import kl_divergence

import _common as C
from _common import CAPTION, NON_EN, RESULTS, as_prompts, markdown, outcome_fields, refused_more

DETECTOR = C.HERE.parent / "tests" / "data" / "switch_detector_qwen_L20"

CHOSEN = {"threshold": 0.3265041241645813, "strength": 8.0}  # harm_switch.json "chosen" (validation)
FORCED_ON = -100.0  # a threshold every score passes: the switch on wherever its place signal is


def stage_base(model, out: dict) -> None:
    """The unedited model's answers to the 30 + 30 test prompts a language (the subset's answers as drafts)."""
    path = RESULTS / "test_base_answers.json"
    if path.exists():
        return
    test = sn.load_prompts().filter(split="test")
    prompts = [*test.filter(label="harmful", limit=30), *test.filter(label="harmless", limit=30)]
    sub = {
        (r["lang"], r["id"]): r["answer"]
        for r in json.loads((RESULTS / "efficacy_none_3way.json").read_text())["answers"]["none"]
    }
    ev = sn.evaluate(model, prompts, drafts=[sub.get((p.lang, p.id), "") for p in prompts], desc="test, no edit")
    path.write_text(json.dumps(ev.answers, ensure_ascii=False, indent=1))


def evaluated(model, edit, prompts, base, desc):
    with edit.applied(model):
        return sn.evaluate(model, prompts, drafts=base, desc=desc)


def stage_sweep(model, det, base, out: dict, thresholds, strengths) -> None:
    prompts = as_prompts(base.answers)
    harmless = [q for q in prompts if q.label == "harmless"]
    settings = [(t, CHOSEN["strength"]) for t in thresholds] + [(CHOSEN["threshold"], a) for a in strengths]
    done = {(r["threshold"], r["strength"]) for r in out.get("sweep", [])}
    for theta, alpha in settings:
        if (theta, alpha) in done:
            continue
        edit = sw.fit_switch(model, det, threshold=theta, strength=alpha)
        t0 = time.perf_counter()
        ev = evaluated(model, edit, prompts, base, f"switch θ={theta:.2f} α={alpha:g}")
        rec = {
            "threshold": theta,
            "strength": alpha,
            "seconds": time.perf_counter() - t0,
            **outcome_fields(ev),
            "refused_more": refused_more(ev, base),
            "en_asr": ev.languages["en"].asr,
            "answers": ev.answers,
        }
        if (theta, alpha) == (CHOSEN["threshold"], CHOSEN["strength"]):
            kl = kl_divergence(model, edit, harmless, k=4)
            rec |= {"kl_first_token": float(kl["first"].mean()), "kl_first_4_tokens": float(kl["mean_k"].mean())}
        out.setdefault("sweep", []).append(rec)
        save(out)
        print(
            f"θ={theta:.2f} α={alpha:g}: non-en {100 * rec['mean_non_english_asr']:.1f}%, over-refusal "
            f"{100 * rec['mean_over_refusal']:.1f}%, en {100 * rec['en_asr']:.0f}%, {rec['seconds']:.0f} s",
            flush=True,
        )


def stage_oracle(model, det, base, out: dict, strengths) -> None:
    """Harmful prompts only (harmless ones are, by construction, the unedited answers)."""
    harmful = [r for r in base.answers if r["label"] == "harmful"]
    base_h = sn.Evaluation.from_answers(base.judge, harmful)
    for alpha in strengths:
        if any(r["strength"] == alpha for r in out.get("oracle", [])):
            continue
        edit = sw.fit_switch(model, det, threshold=FORCED_ON, strength=alpha)
        ev = evaluated(model, edit, as_prompts(harmful), base_h, f"oracle α={alpha:g}")
        both = sn.Evaluation.from_answers(
            base.judge, ev.answers + [r for r in base.answers if r["label"] == "harmless"]
        )
        out.setdefault("oracle", []).append({"strength": alpha, **outcome_fields(both), "answers": ev.answers})
        save(out)
        print(
            f"oracle α={alpha:g}: non-en {100 * both.mean_asr(NON_EN):.1f}%, en {100 * both.languages['en'].asr:.0f}%",
            flush=True,
        )


def stage_lolo(model, base, out: dict) -> None:
    """Fit on the anchor split without one language (one pass, per-language sums), θ by the validation rule
    (3 of the fitted languages' validation harmless prompts above it, as for the full detector), α = 8;
    measured on the left-out language's test prompts."""
    prompts = sn.load_prompts()
    saved = json.loads((RESULTS / "harmless_answers_32.json").read_text())
    answers = {
        split: {(k.split("|")[1], k.split("|")[2]): v for k, v in saved.items() if k.startswith(split + "|")}
        for split in ("anchor", "val")
    }
    anchor = list(prompts.filter(split="anchor"))
    aligned = [answers["anchor"].get((p.lang, p.id)) if p.label == "harmless" else None for p in anchor]
    kw = dict(layer=20, ridge=1.0, trigger=2, pivot="en", answer_tokens=32)
    sums = sw._detector_sums(model, anchor, aligned, 20, 2, "en", 16, True)
    full = sw._detector_from_sums(model, sums, anchor, aligned, **kw)
    shipped = sw.HarmDetector.load(DETECTOR)
    print(
        f"detector from the sums against the shipped one: max |Δ probe| {float((full.probe - shipped.probe).abs().max()):.2e}",
        flush=True,
    )
    val = list(prompts.filter(split="val", limit=20))
    trig = []  # the validation prompts' trigger rows (mlp_in at layer 20): every fold's scores from one pass
    for cur, kinds, idx in sw._positions(model, val, None, [("mlp_in", 20)], 2, 16, True, "validation triggers"):
        x = cur[("mlp_in", 20)].double().cpu()
        for r, i in enumerate(idx):
            trig.append((i, x[r][kinds[r] == sw.TRIGGER]))
    X = torch.stack([x for _, x in sorted(trig, key=lambda t: t[0])])  # n × trigger × d

    def scores(det):
        return sw.Scores(val, (X @ det.probe).amax(1), torch.zeros(len(val)), torch.zeros(len(val)))

    full_scores = scores(shipped)
    for lang in NON_EN:
        if any(r["lang"] == lang for r in out.get("lolo", [])):
            continue
        det = sw._detector_from_sums(model, sums, anchor, aligned, langs=[x for x in sn.LANGS if x != lang], **kw)
        s = scores(det)
        neg = (
            s.trigger[[i for i, q in enumerate(val) if q.label == "harmless" and q.lang != lang]]
            .sort(descending=True)
            .values
        )
        theta = float(neg[3]) + 1e-3
        recs = [r for r in base.answers if r["lang"] == lang]
        base_l = sn.Evaluation.from_answers(base.judge, recs)
        ev = evaluated(
            model,
            sw.fit_switch(model, det, threshold=theta, strength=CHOSEN["strength"]),
            as_prompts(recs),
            base_l,
            f"left out {lang}",
        )
        L, B = ev.languages[lang], base_l.languages[lang]
        out.setdefault("lolo", []).append(
            {
                "lang": lang,
                "threshold": theta,
                "auc_left_out": s.roc_auc(lang),
                "auc_full": full_scores.roc_auc(lang),
                "fires_val_harmful": int(
                    (s.trigger[[i for i, q in enumerate(val) if q.lang == lang and q.label == "harmful"]] > theta).sum()
                ),
                "fires_val_harmless": int(
                    (
                        s.trigger[[i for i, q in enumerate(val) if q.lang == lang and q.label == "harmless"]] > theta
                    ).sum()
                ),
                "base": {"harmful": B.harmful, "harmless": B.harmless},
                "switch": {"harmful": L.harmful, "harmless": L.harmless},
                "answers": ev.answers,
            }
        )
        save(out)
        print(
            f"left out {lang}: AUC {s.roc_auc(lang):.2f} (full {full_scores.roc_auc(lang):.2f}), compliance "
            f"{B.harmful['compliance']} → {L.harmful['compliance']} of {B.n_harmful}, harmless refused "
            f"{B.harmless['refusal']} → {L.harmless['refusal']} of {B.n_harmless}",
            flush=True,
        )


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def table(out: dict, base: sn.Evaluation) -> str:
    lines = ["# The harm switch on the full test split (30 + 30 prompts a language)\n"]
    rows = [{"condition": "no edit", **outcome_fields(base), "mean_mc_accuracy": float("nan")}]
    for r in sorted(out.get("sweep", []), key=lambda r: (r["strength"], r["threshold"])):
        chosen = (r["threshold"], r["strength"]) == (CHOSEN["threshold"], CHOSEN["strength"])
        rows.append(
            {
                **r,
                "condition": f"switch θ={r['threshold']:.2f}, α={r['strength']:g}"
                + (" (chosen on validation)" if chosen else ""),
                "mean_mc_accuracy": float("nan"),
            }
        )
    for r in out.get("oracle", []):
        rows.append(
            {
                **r,
                "condition": f"oracle: switch on for every harmful prompt, α={r['strength']:g}",
                "mean_mc_accuracy": float("nan"),
            }
        )
    lines.append(
        "Compliance share of harmful answers (ASR) per language; mean over the 7 non-English languages with "
        "the pooled 95% Wilson interval; over-refusal = mean over the 8 languages of the share of harmless "
        "prompts refused. The oracle's harmless answers are the unedited ones by construction.\n"
    )
    lines.append(markdown(rows).replace("nan%", "–") + "\n\n" + CAPTION)
    if out.get("lolo"):
        lines.append(
            "\n## Leave one language out\n\nThe detector fitted on the anchor prompts of the other seven "
            "languages, θ by the same validation rule, α = 8; counts on the left-out language's 30 + 30 "
            "test prompts. Full: the detector fitted on all eight (chosen setting).\n"
        )
        full = next(
            (
                r
                for r in out.get("sweep", [])
                if (r["threshold"], r["strength"]) == (CHOSEN["threshold"], CHOSEN["strength"])
            ),
            None,
        )
        lines.append(
            "| left out | val AUC (full → left out) | compliance: no edit → full → left out | degenerate: no edit → left out "
            "| harmless refused: no edit → full → left out |\n|---|---|---|---|---|"
        )
        for r in out["lolo"]:
            x, b, s = r["lang"], r["base"], r["switch"]
            f = full["counts"][x] if full else None
            n, m = sum(b["harmful"].values()), sum(b["harmless"].values())
            fc = f"{f['harmful']['compliance']}" if f else "–"
            fr = f"{f['harmless']['refusal']}" if f else "–"
            lines.append(
                f"| {x} | {r['auc_full']:.2f} → {r['auc_left_out']:.2f} | {b['harmful']['compliance']} → {fc} → "
                f"{s['harmful']['compliance']} of {n} | {b['harmful']['degenerate']} → {s['harmful']['degenerate']} "
                f"| {b['harmless']['refusal']} → {fr} → {s['harmless']['refusal']} of {m} |"
            )
    return "\n".join(lines)


def save(out: dict) -> None:
    (RESULTS / "switch_limits.json").write_text(json.dumps(out, indent=1, ensure_ascii=False))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--stage",
        nargs="+",
        default=["base", "sweep", "oracle", "lolo"],
        choices=["base", "sweep", "oracle", "lolo", "table"],
    )
    # the defaults are the frontier's points (results/switch_limits.json): θ at α = 8; --strengths adds α at θ = 0.33
    p.add_argument("--thresholds", type=float, nargs="+", default=[CHOSEN["threshold"], 0.15, 0.0, -0.3])
    p.add_argument("--strengths", type=float, nargs="*", default=[])
    p.add_argument("--oracle-strengths", type=float, nargs="*", default=[8.0, 16.0])
    args = p.parse_args()
    path = RESULTS / "switch_limits.json"
    out = json.loads(path.read_text()) if path.exists() else {}
    base_path = RESULTS / "test_base_answers.json"
    if args.stage == ["table"]:
        print(table(out, sn.Evaluation.from_answers("phrase", json.loads(base_path.read_text()))))
        return
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = C.load_model()
    if "base" in args.stage:
        stage_base(model, out)
    base = sn.Evaluation.from_answers("phrase", json.loads(base_path.read_text()))
    det = sw.HarmDetector.load(DETECTOR)
    if "sweep" in args.stage:
        stage_sweep(model, det, base, out, args.thresholds, args.strengths)
    if "oracle" in args.stage:
        stage_oracle(model, det, base, out, args.oracle_strengths)
    if "lolo" in args.stage:
        stage_lolo(model, base, out)
    print(table(out, base))


if __name__ == "__main__":
    main()
