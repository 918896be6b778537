"""The think demo's table (terminal) and page (``report.html``): the length curve beside the accuracy curve (R1-Zero's
figure), reflection and aha rates over the run, the first aha moments as text, accuracy by number of terms, and the
ablations. Plots are matplotlib PNGs embedded as data: URIs, with :mod:`aha.track.report`'s CSS: the page opens
offline. The RL run's full report (every metric, samples, config) is written beside it, in ``rl/report.html``."""

from __future__ import annotations

from html import escape
from pathlib import Path

from aha.track.plots import figure, fmt, to_png
from aha.track.report import CSS, render_summary, write_report

from . import think_world as world

MODELS = (("teacher", "teacher"), ("sft", "SFT (imitation)"), ("rl", "RL (GRPO, reward: right)"))
PRESENT = (
    "The behaviour was there, in a minority of the teacher's traces (steps in {steps:.0%} of them, "
    "'wait' in {wait:.1%}{doubt})."
)
CODA = (
    "RL amplifies what the model already does, and only where it pays (Oat-Zero's finding); nothing rewarded "
    "length, steps or reflection, only right answers."
)


def lesson(summary: dict) -> str:
    """What happened, in words that follow the measurements: the habit was present, and RL amplified it or not."""
    doubt = summary["teacher_doubt_rate"]
    parts = [
        PRESENT.format(
            steps=summary["teacher_steps_share"],
            wait=summary["teacher_reflection_rate"],
            doubt=f": a guess doubted, then worked out, in {doubt:.1%}" if doubt else "",
        )
    ]
    for what, key in (
        ("writing the steps", "steps_share"),
        ("'wait'", "reflection_rate"),
        ("doubting its first answer", "doubt_rate"),
        ("re-doing a step", "recheck_rate"),
    ):
        before, after = summary[f"sft_{key}"], summary[f"rl_{key}"]
        if not before and not after:
            continue  # (the world without doubted guesses has none)
        verdict = "amplified" if after > 0 and after >= 1.5 * before else "did not amplify"
        parts.append(f"RL {verdict} {what} ({before:.1%} of SFT's completions, {after:.1%} of RL's).")
    return " ".join([*parts, CODA])


def _pct(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def print_table(summary: dict) -> None:
    """The headline table, the accuracy by number of terms, and the ablations where they ran."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(
        title=f"sums of 3-6 digits: {summary['n_eval']} held-out, sampled at T=1 — "
        f"{summary['demo_time_s']:.0f} s (teacher, SFT, RL, evaluations)"
    )
    for col in ("model", "accuracy", "tokens", "steps", "'wait'", "doubts", "re-checks", "fixes", "acc. wait / not"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, label in MODELS:
        sc = summary["scores"][name]
        table.add_row(
            label,
            _pct(sc["accuracy"]),
            f"{sc['length']:.1f}",
            _pct(sc["steps_share"]),
            _pct(sc["reflection_rate"]),
            _pct(sc["doubt_rate"]),
            _pct(sc["recheck_rate"]),
            _pct(sc["correction_rate"]),
            f"{_pct(sc['accuracy_reflecting'])} / {_pct(sc['accuracy_not_reflecting'])}",
        )
    console.print(table)
    by_terms = Table(title="accuracy by number of terms (held-out, sampled)")
    by_terms.add_column("model")
    for t in world.TERMS:
        by_terms.add_column(f"{t} terms", justify="right")
    for name, label in MODELS:
        by_terms.add_row(label, *(_pct(summary["scores"][name]["by_terms"][str(t)]) for t in world.TERMS))
    console.print(by_terms)
    if "ablations" in summary:
        console.print(ablation_table(summary))
    console.print(
        "steps: share with worked steps; 'wait': share that reflects: doubts (a first answer, 'wait', then the "
        "steps) or re-checks (a step, 'wait', the step again); fixes: share whose reflection changed the answer or a "
        "step's total and ended right."
    )
    console.print(lesson(summary))


def ablation_table(summary: dict):
    from rich.table import Table

    table = Table(title="ablations: short RL runs from the SFT model; tokens of right and wrong answers")
    for col in ("run", "accuracy", "tokens", "right", "wrong", "steps", "'wait'"):
        table.add_column(col, justify="left" if col == "run" else "right")
    sft = summary["scores"]["sft"]
    rows = [("SFT (start)", sft)] + list(summary["ablations"].items())  # (in the order they ran)
    for label, sc in rows:
        table.add_row(
            label,
            _pct(sc["accuracy"]),
            f"{sc['length']:.1f}",
            fmt(sc["length_right"]),
            fmt(sc["length_wrong"]),
            _pct(sc["steps_share"]),
            _pct(sc["reflection_rate"]),
        )
    return table


# ---------------------------------------------------------------- the page


def plot_curves(curves: dict) -> str:
    """Accuracy and mean length per step, side by side (R1-Zero's figure), then reflection and aha rates."""
    fig, axes = figure(10.5, 3.2, ncols=3)
    panels = (
        ("accuracy", "accuracy of the training batch (reward)", "C2"),
        ("length", "mean completion length (tokens)", "C0"),
    )
    for ax, (key, title, color) in zip(axes[0], panels):
        ax.plot(curves["step"], curves[key], color=color, linewidth=1.6)
        ax.set(title=title, xlabel="RL step")
    ax = axes[0, 2]
    for key, label in (("reflection_rate", "'wait' (reflection)"), ("aha_rate", "aha moments")):
        ax.plot(curves["step"], [v if v is not None else float("nan") for v in curves[key]], label=label)
    ax.set(title="reflection and aha rates", xlabel="RL step")
    ax.legend(fontsize=8)
    return to_png(fig)


def plot_ablations(summary: dict) -> str:
    """Each ablation's accuracy and length per step."""
    fig, axes = figure(8.0, 3.2, ncols=2)
    for name, result in summary["ablations"].items():
        curves = result["series"]
        axes[0, 0].plot(curves["step"], curves["accuracy"], label=name)
        axes[0, 1].plot(curves["step"], curves["length"], label=name)
    axes[0, 0].set(title="accuracy (correctness reward)", xlabel="RL step")
    axes[0, 1].set(title="mean completion length (tokens)", xlabel="RL step")
    axes[0, 1].legend(fontsize=8)
    return to_png(fig)


def render_table(summary: dict) -> str:
    cols = ["accuracy", "length", "steps_share", "reflection_rate", "doubt_rate", "recheck_rate", "aha_rate"]
    cols += ["accuracy_reflecting", "accuracy_not_reflecting", "length_right", "length_wrong"]
    head = "<tr><th>model</th>" + "".join(f"<th>{c}</th>" for c in cols)
    head += "".join(f"<th>{t} terms</th>" for t in world.TERMS) + "</tr>"
    body = ""
    for name, label in MODELS:
        sc = summary["scores"][name]
        cells = [sc[c] for c in cols] + [sc["by_terms"][str(t)] for t in world.TERMS]
        body += f"<tr><th>{escape(label)}</th>" + "".join(f"<td class='num'>{fmt(v)}</td>" for v in cells) + "</tr>"
    return f"<table class='summary'>{head}{body}</table>"


def render_moments(moments: list[dict]) -> str:
    if not moments:
        return "<p class='empty'>No aha moment was logged in this run.</p>"
    rows = "".join(
        f"<tr><td class='num'>{m['step']}</td><td><pre>{escape(m['prompt'])}</pre></td>"
        f"<td>{escape(m['aha']['first_answer'])} → {escape(m['aha']['final_answer'])}</td>"
        f"<td><pre>{escape(m['completion'])}</pre></td></tr>"
        for m in moments
    )
    head = "<tr><th>step</th><th>prompt</th><th>answer before 'wait' → after</th><th>completion</th></tr>"
    return f"<table class='samples'>{head}{rows}</table>"


def write_think_report(out: Path, summary: dict) -> Path:
    """``out/report.html`` (this page) and the RL run's own full report, ``out/rl/report.html``."""
    write_report(out / "rl")
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>aha demo think · seed {summary['seed']}</title><style>{CSS}</style></head><body><main>",
        "<header><h1>The aha moment: does RL, rewarded only for right answers, learn to think longer and check itself?</h1>",
        f"<p class='meta'>{escape(lesson(summary))} {escape(summary['evaluation'])}.</p></header>",
        "<h2>Accuracy and length over the RL run</h2>",
        f"<div class='card wide'><img alt='accuracy, length, reflection' src='{plot_curves(summary['rl_series'])}'>",
        "</div><h2>Held-out scores</h2>",
        render_table(summary),
        "<h2>The first aha moments</h2><p class='meta'>'wait', then an answer different from the one written "
        "before it, and right (aha.track.reasoning).</p>",
        render_moments(summary["first_aha_moments"]),
    ]
    if "ablations" in summary:
        parts += [
            "<h2>Ablations</h2>",
            f"<div class='card wide'><img alt='ablations' src='{plot_ablations(summary)}'></div>",
            render_summary(
                {n: {k: v for k, v in r.items() if not isinstance(v, dict)} for n, r in summary["ablations"].items()}
            ),
        ]
    parts += ["<p class='meta'>The RL run's full report: <a href='rl/report.html'>rl/report.html</a>.</p>"]
    parts.append("</main></body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
