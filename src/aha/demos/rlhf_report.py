"""The RLHF demo's page: the over-optimisation curve (proxy and gold against √KL, Gao et al. 2022), where each guard
stopped, and notes from the gold peak and from the end of the unguarded run. Plots are matplotlib PNGs embedded as
data: URIs, with the CSS of :mod:`aha.track.report`, so the page opens offline."""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path

from aha.track.plots import figure, fmt, to_png
from aha.track.report import CSS, load_jsonl, load_metrics, render_summary

GOLD_LABEL, PROXY_LABEL = "gold", "rm"  # their names in the metrics: reward/gold/mean, reward/rm/mean
GUARD_LABELS = {
    "gold": "guarded by gold",
    "support": "guarded by distance from the RM's data (no gold)",
    "ensemble": "guarded by ensemble disagreement (no gold)",
}
GOLD = GOLD_LABEL  # (the report's name for it)


def moving_average(xs: list[float], window: int) -> list[float]:
    """The trailing mean over the last ``window`` values (fewer at the start), as the guard smooths.

    >>> moving_average([1.0, 3.0, 5.0, 7.0], 2)
    [1.0, 2.0, 4.0, 6.0]
    """
    return [sum(xs[max(0, i - window + 1) : i + 1]) / len(xs[max(0, i - window + 1) : i + 1]) for i in range(len(xs))]


def curves(run_dir: Path, gold: str, proxy: str, window: int) -> dict[str, list]:
    """The run's steps with √KL, gold and proxy (raw and smoothed), from its metrics.jsonl."""
    m = load_metrics(Path(run_dir))
    keys = ("kl", f"reward/{gold}/mean", f"reward/{proxy}/mean")
    steps = sorted(set.intersection(*(set(m[k][0]) for k in keys)))
    at = {k: dict(zip(*m[k])) for k in keys}
    kl, g, p = ([at[k][s] for s in steps] for k in keys)
    return {
        "steps": steps,
        "sqrt_kl": [math.sqrt(max(x, 0.0)) for x in moving_average(kl, window)],
        "gold": g,
        "proxy": p,
        "gold_smooth": moving_average(g, window),
        "proxy_smooth": moving_average(p, window),
    }


def guard_stop(run_dir: Path, curve: dict) -> dict | None:
    """What the guard wrote when it stopped the run (step, action, reason, best_step), with the unguarded curve's
    smoothed gold and √KL at that step (the runs are the same up to there: same start, seed and data), or None if
    it never stopped."""
    path = Path(run_dir) / "guard.json"
    if not path.is_file():
        return None
    stop = json.loads(path.read_text())
    if stop["step"] in curve["steps"]:
        i = curve["steps"].index(stop["step"])
        stop.update(gold_at_stop=curve["gold_smooth"][i], sqrt_kl_at_stop=curve["sqrt_kl"][i])
    if stop.get("best_step") in curve["steps"]:  # the guarded run's own peak (its best smoothed gold or proxy step)
        stop["gold_at_best"] = curve["gold_smooth"][curve["steps"].index(stop["best_step"])]
    return stop


def plot_overoptimisation(curve: dict, summary: dict) -> str:
    """Proxy and gold (smoothed) against √KL, the gold peak marked, and where each guard stopped."""
    fig, axes = figure(7.2, 4.0)
    ax = axes[0, 0]
    ax.xaxis.get_major_locator().set_params(integer=False)
    ax.plot(curve["sqrt_kl"], curve["gold_smooth"], color="C2", linewidth=1.8, label="gold (hidden preference)")
    ax.set(
        xlabel="√KL(policy ‖ SFT start)",
        ylabel="gold",
        title="Over-optimisation: unguarded GRPO against the reward model",
    )
    ax2 = ax.twinx()
    ax2.plot(curve["sqrt_kl"], curve["proxy_smooth"], color="C0", linewidth=1.8, label="proxy (reward model)")
    ax2.set_ylabel("proxy")
    i = curve["steps"].index(summary["gold_peak_step"])
    ax.axvline(curve["sqrt_kl"][i], color="C2", linestyle=":", linewidth=1)
    for key, color in (("guard_gold", "C3"), ("guard_support", "C4"), ("guard_ensemble", "C1")):
        stop = summary.get(key)
        if stop and stop["step"] in curve["steps"]:
            ax.axvline(
                curve["sqrt_kl"][curve["steps"].index(stop["step"])],
                color=color,
                linestyle="--",
                linewidth=1,
                label=f"{key.replace('_', ' ')} stopped (step {stop['step']})",
            )
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="best")
    return to_png(fig)


def plot_steps(curve: dict) -> str:
    """Proxy and gold (raw and smoothed) against the step."""
    fig, axes = figure(7.2, 3.4, ncols=2)
    for ax, key, color, title in ((axes[0, 0], "gold", "C2", "gold"), (axes[0, 1], "proxy", "C0", "proxy")):
        ax.plot(curve["steps"], curve[key], color=color, alpha=0.3, linewidth=1)
        ax.plot(curve["steps"], curve[f"{key}_smooth"], color=color, linewidth=1.8)
        ax.set(title=f"{title} per step (unguarded)", xlabel="step")
    return to_png(fig)


def notes_at(run_dir: Path, step: int, n: int = 8) -> list[dict]:
    """The samples the run logged at ``step`` (at most ``n``)."""
    return [r for r in load_jsonl(Path(run_dir) / "samples.jsonl") if r.get("step") == step][:n]


def render_notes(title: str, rows: list[dict], gold: str) -> str:
    body = "".join(
        f"<tr><td><pre>{escape(str(r.get('prompt')))}</pre></td><td><pre>{escape(str(r.get('completion')))}"
        f"</pre></td><td class='num'>{fmt((r.get('rewards') or {}).get(gold))}</td>"
        f"<td class='num'>{fmt(r.get('reward'))}</td></tr>"
        for r in rows
    )
    return (
        f"<h3>{escape(title)}</h3><table class='samples'><tr><th style='width:18%'>prompt</th><th>note</th>"
        f"<th style='width:10%'>gold</th><th style='width:10%'>proxy</th></tr>{body}</table>"
    )


def write_demo_report(out: Path, summary: dict, curve: dict, runs: dict) -> Path:

    run = out / "rl-unguarded"
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>aha demo rlhf · seed {summary['seed']}</title><style>{CSS}</style></head><body><main>",
        "<header><h1>RLHF demo: a reward model from rankings, GRPO against it, and the guard</h1>",
        "<p class='meta'>A simulated human ranked notes by a hidden gold preference; a reward model learned the "
        "rankings; GRPO optimised the reward model (the proxy). Gold is logged, never optimised.</p></header>",
        "<h2>Over-optimisation curve</h2><div class='plots'>",
        f"<div class='card'><img alt='proxy and gold against sqrt KL' src='{plot_overoptimisation(curve, summary)}'></div>",
        f"<div class='card'><img alt='proxy and gold per step' src='{plot_steps(curve)}'></div></div>",
        "<h2>Summary</h2>",
        render_summary({k: v for k, v in summary.items() if not isinstance(v, (list, dict))}),
        "<h2>Where the guards stopped</h2>",
        render_summary(
            {k: summary[k] or {"stopped": "never"} for k in ("guard_gold", "guard_support", "guard_ensemble")}
        ),
        "<h2>Notes</h2>",
        render_notes(
            f"unguarded, at the gold peak (step {summary['gold_peak_step']})",
            notes_at(run, summary["gold_peak_step"]),
            GOLD,
        ),
        render_notes(
            f"unguarded, at the end (step {summary['unguarded_steps']})",
            notes_at(run, summary["unguarded_steps"]),
            GOLD,
        ),
    ]

    for name, label in GUARD_LABELS.items():
        label += ", final policy"
        rows = [
            {"prompt": r["prompt"], "completion": r["completion"], "reward": r["proxy"], "rewards": {GOLD: r["gold"]}}
            for r in runs[name]["samples"]
        ]
        parts.append(render_notes(label, rows, GOLD))
    parts.append("</main></body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
