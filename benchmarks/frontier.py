"""Every method at equal over-refusal, on the same test prompts (the full test split: 30 harmful + 30 harmless a
language): the saved answers of `efficacy.py` (`results/efficacy_rest_3way.json`), of the unedited model and of
the harm switch's settings (`switch_limits.py`: `results/test_base_answers.json`, `results/switch_limits.json`),
one plotly figure, and the headline number "mean non-English compliance at over-refusal ≤ +5 points" per
method. No model is loaded.

    python benchmarks/frontier.py          # prints the table, writes results/frontier.html and .png (Chromium)

Each method has the settings that were run: the switch's threshold sweep (`switch_limits.py --stage sweep`), the
linear edit's strength sweep (×0.35, ×0.6, ×1: `efficacy.py --only ours_no_bn --scales 0.35 0.6`, saved in
`results/efficacy_linear_sweep.json`), one setting for the other linear methods (a sweep costs about half an
hour of CPU a setting on 30 + 30 prompts a language and is not done), so their line is the segment from the
unedited model to that setting. The oracle (the switch forced on for every
harmful prompt, off for every harmless one) is drawn as a reference, not a method.
"""

from __future__ import annotations

import argparse
import json
import subprocess

import safety_neurons as sn
from safety_neurons import viz
from safety_neurons.evaluation import MEAN_RULE

from _common import CAPTION, RESULTS, markdown, outcome_fields

METHOD = {
    "none": "no edit",
    "ours_no_bn": "linear edit (ours)",
    "nullspace": "null-space",
    "alpha": "α-scaling",
    "refdir": "refusal direction",
    "noanchor": "linear, no utility anchor",
    "fold": "activation-map fold",
}


def point(method: str, setting: str, ev: sn.Evaluation) -> dict:
    """One setting of one method: its means (`Evaluation.mean`), the pooled 95% Wilson intervals of the same
    counts, and the counts themselves (for the per-language table)."""

    def pooled(metric):
        return sum(ev.rates(metric).values(), sn.Rate(0, 0)).interval

    return {
        "method": method,
        "setting": setting,
        "asr": ev.mean_asr(),
        "over_refusal": ev.mean_over_refusal(),
        "en_asr": ev.languages["en"].asr,
        "degenerate": ev.mean_degenerate(),
        "asr_interval": pooled("asr"),
        "over_refusal_interval": pooled("over_refusal"),
        "counts": {x: {"harmful": r.harmful, "harmless": r.harmless} for x, r in ev.languages.items()},
    }


def points() -> list[dict]:
    def judged(records):
        return sn.Evaluation.from_answers("phrase", records)

    base = judged(json.loads((RESULTS / "test_base_answers.json").read_text()))
    out = [point("no edit", "no edit", base)]  # the switch first: the first colour of the figure
    limits = json.loads((RESULTS / "switch_limits.json").read_text())
    for r in limits.get("sweep", []):
        ev = sn.Evaluation.from_counts("phrase", r["counts"])
        out.append(point("harm switch", f"θ={r['threshold']:.2f}, α={r['strength']:g}", ev))
    rejudged = json.loads((RESULTS / "efficacy_rest_3way.json").read_text())
    for r in rejudged["rows"]:
        out.append(point(METHOD.get(r["key"], r["key"]), r["condition"], judged(rejudged["answers"][r["key"]])))
        # the condition's own name says it all; the linear edit's says which point of its strength sweep it is
        out[-1]["label"] = r["condition"] + (", strength ×1" if r["key"] == "ours_no_bn" else "")
    sweep = RESULTS / "efficacy_linear_sweep.json"  # the linear edit at other strengths (`efficacy.py --scales`)
    if sweep.exists():
        saved = json.loads(sweep.read_text())
        for r in saved["rows"]:
            key, _, scale = r["key"].partition("@")
            out.append(point(METHOD.get(key, key), f"strength ×{scale}", judged(saved["answers"][r["key"]])))
    swept = {r["strength"] for r in limits.get("sweep", [])}
    for r in limits.get("oracle", []):  # at the switch's own strength; stronger ones are in switch_limits.md
        if r["strength"] not in swept:
            continue
        ev = sn.Evaluation.from_counts("phrase", r["counts"])
        out.append(
            point("switch with an oracle detector (reference)", f"α={r['strength']:g}", ev) | {"reference": True}
        )
    # every method's line starts at the unedited model (strength 0)
    return out + [{**out[0], "method": m} for m in dict.fromkeys(p["method"] for p in out[1:])]


def share(value: float, interval) -> str:
    return f"{100 * value:.1f}% [{100 * interval[0]:.0f}–{100 * interval[1]:.0f}]"


def english(p: dict) -> str:
    return str(sn.Evaluation.from_counts("phrase", p["counts"]).languages["en"].rate("harmful", "compliance"))


def summary(pts: list[dict]) -> str:
    """One line per setting run: the means with their pooled intervals, English with its count."""
    lines = [
        "| method | setting | mean non-English compliance [95% CI] | English compliance | non-English degenerate "
        "[95% CI] | over-refusal, 8 languages [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for p in pts:
        if p["method"] != "no edit" and p["setting"] == "no edit":
            continue
        ev = sn.Evaluation.from_counts("phrase", p["counts"])
        deg = sum(ev.rates("degenerate").values(), sn.Rate(0, 0)).interval
        lines.append(
            f"| {p['method']} | {p.get('label', p['setting'])} | **{share(p['asr'], p['asr_interval'])}** | {english(p)} "
            f"| {share(p['degenerate'], deg)} | {share(p['over_refusal'], p['over_refusal_interval'])} |"
        )
    return "\n".join(lines)


def per_language(pts: list[dict]) -> str:
    """Every setting run, per language, with counts and intervals (`_common.markdown`)."""
    rows = []
    for p in pts:
        if p["method"] != "no edit" and p["setting"] == "no edit":
            continue  # the line's starting point, already the first row
        ev = sn.Evaluation.from_counts("phrase", p["counts"])
        name = p.get("label") or (p["method"] if p["method"] == "no edit" else f"{p['method']}: {p['setting']}")
        rows.append({"condition": name, **outcome_fields(ev), "mean_mc_accuracy": float("nan")})
    return markdown(rows).replace("nan%", "–")


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # no options: --help
    pts = points()
    base = next(p for p in pts if p["method"] == "no edit")
    print(
        "| method | settings run | mean non-English compliance at over-refusal ≤ +5 points [95% CI] "
        "| its over-refusal [95% CI] | English compliance [95% CI] |"
    )
    print("|---|---|---|---|---|")
    for method in dict.fromkeys(p["method"] for p in pts):
        mine = [p for p in pts if p["method"] == method and (method == "no edit" or p["setting"] != "no edit")]
        ok = [p for p in mine if p["over_refusal"] <= base["over_refusal"] + 0.05 + 1e-9]
        best = min(ok, key=lambda p: p["asr"]) if ok else None
        if best is None:
            print(f"| {method} | {len(mine)} | none within the budget | – | – |")
        else:
            where = "" if "label" in best or best["setting"] == "no edit" else f" ({best['setting']})"
            print(
                f"| {method}{where} | {len(mine)} | {share(best['asr'], best['asr_interval'])} "
                f"| {share(best['over_refusal'], best['over_refusal_interval'])} | {english(best)} |"
            )
    print("\n## Every setting run\n")
    print(summary(pts))
    fig = viz.frontier(pts)
    fig.write_html(RESULTS / "frontier.html", include_plotlyjs=True)  # self-contained: opens offline
    shot = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={RESULTS / 'frontier.png'}",
            "--window-size=1000,560",
            (RESULTS / "frontier.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    if shot.returncode:
        print(f"(frontier.png not written: chromium failed: {shot.stderr.decode()[-200:]})")
    print(
        f"\n(no edit: {100 * base['asr']:.1f}% non-English, over-refusal {100 * base['over_refusal']:.1f}%; "
        f"means: {MEAN_RULE}; figure: results/frontier.html)"
    )
    print("\n## Every setting, per language (full test split, 30 + 30 prompts a language)\n")
    print(per_language(pts) + "\n\n" + CAPTION + " KL and MC accuracy: see the efficacy tables.")


if __name__ == "__main__":
    main()
