"""One self-contained HTML page per run: summary, training curves, sample completions, config.

    from aha.track.report import write_report
    write_report(Path("runs/countdown-grpo"))   # -> runs/countdown-grpo/report.html

Reads what the trainer leaves in a run directory (see DESIGN.md, "Run directory"):
`config.yaml`, `metrics.jsonl`, `samples.jsonl` and, if present, `summary.json`. Every file is
optional and a truncated last line (a killed process) is skipped, so the report works on a live
or crashed run too. Plots are drawn with matplotlib's Agg canvas and embedded as base64 PNG, and
the CSS is inline: the page opens offline, from a laptop or an air-gapped machine alike.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from html import escape
from pathlib import Path

from aha.errors import AhaError
from aha.track.plots import Series, clip, figure, fmt, plot_line, to_png
from aha.track.reasoning_report import is_reasoning_key, render_section

# Keys that get a plot of their own, in page order. The reward plot also draws reward/std as a
# band and every reward/<fn>/mean as its own line.
MAIN_PLOTS = [
    ("eval/accuracy", "Eval accuracy"),
    ("completions/mean_length", "Mean completion length (tokens)"),
    ("kl", "KL to reference"),
    ("entropy", "Policy entropy"),
    ("clip_ratio", "Fraction of tokens clipped"),
    ("env/turns", "Model turns per episode"),
    ("env/tool_calls", "Tool calls per episode"),
]
SAMPLE_STEPS = 4  # sample tables at the first, two middle and last logged steps


# ---------------------------------------------------------------- loading


def load_jsonl(path: Path) -> list[dict]:
    """Objects of a JSONL file, skipping blank or unparsable lines (e.g. a half-written last line)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def load_metrics(run_dir: Path) -> dict[str, Series]:
    """`metrics.jsonl` as one (steps, values) series per numeric key, sorted by step.

    Lines without an int `step` are skipped; when a step was logged twice (a resumed run), the
    later value wins. Example: lines {"step": 1, "kl": 0.1} {"step": 2, "kl": 0.3, "eval/accuracy": 0.5}
    give {"kl": ([1, 2], [0.1, 0.3]), "eval/accuracy": ([2], [0.5])}.
    """
    by_key: dict[str, dict[int, float]] = {}
    for row in load_jsonl(run_dir / "metrics.jsonl"):
        step = row.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        for key, value in row.items():
            if key != "step" and _is_number(value):
                by_key.setdefault(key, {})[step] = float(value)
    return {key: (sorted(points), [points[s] for s in sorted(points)]) for key, points in by_key.items()}


def load_summary(run_dir: Path) -> dict | None:
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return summary if isinstance(summary, dict) else None


def pick_samples(samples: list[dict]) -> list[tuple[int, list[dict]]]:
    """A few samples at up to SAMPLE_STEPS steps spread over the run: first, middle ones, last.

    At each step the highest- and lowest-reward completions are shown, so one sees both what the
    policy gets right and how it fails.
    """
    by_step: dict[int, list[dict]] = {}
    for sample in samples:
        if isinstance(sample.get("step"), int):
            by_step.setdefault(sample["step"], []).append(sample)
    steps = sorted(by_step)
    if not steps:
        return []
    n = len(steps)
    picked = sorted({steps[round(i * (n - 1) / (SAMPLE_STEPS - 1))] for i in range(SAMPLE_STEPS)})
    out = []
    for step in picked:
        ranked = sorted(by_step[step], key=lambda s: _reward_key(s.get("reward")), reverse=True)
        out.append((step, ranked if len(ranked) <= 2 else [ranked[0], ranked[-1]]))
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _reward_key(reward) -> float:
    return float(reward) if _is_number(reward) and not math.isnan(reward) else -math.inf


# ---------------------------------------------------------------- plots


def reward_fn_keys(metrics: dict[str, Series]) -> list[str]:
    """`reward/<fn>/mean` keys, one per reward function."""
    return sorted(k for k in metrics if k.startswith("reward/") and k.endswith("/mean") and k.count("/") == 2)


def plot_reward(metrics: dict[str, Series]) -> str | None:
    """Mean reward with a ±1 std band, and each reward function's mean."""
    fn_keys = reward_fn_keys(metrics)
    if "reward/mean" not in metrics and not fn_keys:
        return None
    fig, axes = figure()
    ax = axes[0, 0]
    if "reward/mean" in metrics:
        steps, mean = metrics["reward/mean"]
        plot_line(ax, metrics["reward/mean"], "reward/mean", color="C0")
        if "reward/std" in metrics:
            std_at = dict(zip(*metrics["reward/std"]))
            band = [(s, m, std_at[s]) for s, m in zip(steps, mean) if s in std_at]
            if band:
                xs, ms, ss = zip(*band)
                lo = [m - s for m, s in zip(ms, ss)]
                hi = [m + s for m, s in zip(ms, ss)]
                ax.fill_between(xs, lo, hi, color="C0", alpha=0.15, linewidth=0, label="± std")
    for i, key in enumerate(fn_keys, start=1):
        plot_line(ax, metrics[key], key, color=f"C{i}", linestyle="--")
    ax.set(title="Reward", xlabel="step")
    ax.legend(fontsize=8, loc="best")
    return to_png(fig)


def plot_metric(metrics: dict[str, Series], key: str, title: str) -> str | None:
    if key not in metrics:
        return None
    fig, axes = figure()
    ax = axes[0, 0]
    plot_line(ax, metrics[key], color="C0")
    ax.set(title=f"{title}  ({key})", xlabel="step")
    return to_png(fig)


def other_keys(metrics: dict[str, Series]) -> list[str]:
    """Numeric keys not shown in a plot of their own (loss/*, grad_norm, lr, value/*, time/*, ...)."""
    shown = {"reward/mean", "reward/std", *reward_fn_keys(metrics), *(k for k, _ in MAIN_PLOTS)}
    return sorted(k for k in metrics if k not in shown and not is_reasoning_key(k))  # (the reasoning section's)


def plot_other(metrics: dict[str, Series], ncols: int = 4) -> str | None:
    """One small panel per remaining key, in a grid."""
    keys = other_keys(metrics)
    if not keys:
        return None
    ncols = min(ncols, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = figure(width=3.2 * ncols, height=2.3 * nrows, nrows=nrows, ncols=ncols)
    for ax, key in zip(axes.flat, keys):
        plot_line(ax, metrics[key], color="C0")
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    return to_png(fig)


def plot_all(metrics: dict[str, Series]) -> list[tuple[str, str]]:
    """(title, data URI) for every plot whose keys are present, in page order."""
    plots = [("Reward", plot_reward(metrics))]
    plots += [(title, plot_metric(metrics, key, title)) for key, title in MAIN_PLOTS]
    plots.append(("Other metrics", plot_other(metrics)))
    return [(title, uri) for title, uri in plots if uri is not None]


# ---------------------------------------------------------------- html

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       background: #f6f8fa; margin: 0; }
main { max-width: 1280px; margin: 0 auto; padding: 24px; }
header { border-bottom: 1px solid #d0d7de; margin-bottom: 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 10px; }
.meta { color: #59636e; margin: 0 0 12px; }
.card { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(520px, 100%), 1fr)); gap: 12px; }
.plots img, .wide img { width: 100%; height: auto; display: block; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f0f3f6; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.inner td, table.inner th { border: none; padding: 0 10px 0 0; background: none; }
table.samples { width: 100%; table-layout: fixed; }
table.samples pre { margin: 0; max-height: 320px; overflow: auto; }
pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
      white-space: pre-wrap; word-break: break-word; }
pre.config { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: 12px; }
.empty { color: #59636e; font-style: italic; }
.turn { border-left: 3px solid #d0d7de; padding: 2px 6px; margin: 2px 0; }
.turn.assistant { border-color: #0969da; } .turn.tool { border-color: #bf8700; background: #fff8c5; }
.turn.user { border-color: #8250df; background: #fbefff; }
.turn .role { font-size: 11px; color: #59636e; }
"""


def render_summary(summary: dict) -> str:
    rows = []
    for key, value in summary.items():
        if isinstance(value, dict):
            inner = "".join(
                f"<tr><th>{escape(str(k))}</th><td class='num'>{fmt(v)}</td></tr>" for k, v in value.items()
            )
            cell = f"<td><table class='inner'>{inner}</table></td>"
        else:
            cell = f"<td class='num'>{fmt(value)}</td>"
        rows.append(f"<tr><th>{escape(str(key))}</th>{cell}</tr>")
    return f"<table class='summary'>{''.join(rows)}</table>"


def render_completion(completion) -> str:
    """A completion: its text, or a multi-turn episode's transcript with each message set apart by its role (the
    model's turns, tool results, the environment's observations)."""
    if not isinstance(completion, list):
        return f"<pre>{clip(completion)}</pre>"
    turns = []
    for m in completion:
        role = str(m.get("role", "?")) if isinstance(m, dict) else "?"
        label = role + (f" · {m['name']}" if isinstance(m, dict) and m.get("name") else "")
        body = clip(m.get("content", "") if isinstance(m, dict) else m)
        turns.append(
            f"<div class='turn {escape(role)}'><span class='role'>{escape(label)}</span><pre>{body}</pre></div>"
        )
    return "".join(turns)


def render_samples(picked: list[tuple[int, list[dict]]]) -> str:
    head = (
        "<tr><th style='width:5%'>step</th><th style='width:25%'>prompt</th>"
        "<th style='width:42%'>completion</th><th style='width:10%'>answer</th>"
        "<th style='width:18%'>reward</th></tr>"
    )
    rows = []
    for step, samples in picked:
        for sample in samples:
            per_fn = sample.get("rewards") or {}
            breakdown = (
                "".join(f"<tr><td>{escape(str(fn))}</td><td class='num'>{fmt(v)}</td></tr>" for fn, v in per_fn.items())
                if isinstance(per_fn, dict)
                else ""
            )
            rows.append(
                f"<tr><td class='num'>{step}</td><td><pre>{clip(sample.get('prompt'))}</pre></td>"
                f"<td>{render_completion(sample.get('completion'))}</td>"
                f"<td><pre>{clip(sample.get('answer'))}</pre></td>"
                f"<td><b>{fmt(sample.get('reward'))}</b><table class='inner'>{breakdown}</table></td></tr>"
            )
    return f"<table class='samples'>{head}{''.join(rows)}</table>"


def _headline(metrics: dict[str, Series]) -> str:
    """One line under the title: steps logged and the latest value of the numbers people check first."""
    steps = sorted({s for xs, _ in metrics.values() for s in xs})
    if not steps:
        return "no metrics logged yet"
    parts = [f"{len(steps)} logged steps (last step {steps[-1]})"]
    for key in ("reward/mean", "eval/accuracy", "loss/sft"):
        if key in metrics:
            parts.append(f"last {key} = {fmt(metrics[key][1][-1])}")
    return " · ".join(parts)


def render_html(
    run_dir: Path,
    metrics: dict[str, Series],
    plots: list[tuple[str, str]],
    picked: list[tuple[int, list[dict]]],
    summary: dict | None,
    config_text: str | None,
    reasoning: str = "",
) -> str:
    """The whole page as one string; every piece of run data is HTML-escaped. ``reasoning``: the reasoning and
    aha-moments sections (:func:`aha.track.reasoning_report.render_section`)."""
    generated = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>aha report · {escape(run_dir.name)}</title><style>{CSS}</style></head><body><main>",
        f"<header><h1>Run report: {escape(run_dir.name)}</h1>",
        f"<p class='meta'>{escape(str(run_dir))} · generated {generated} · {escape(_headline(metrics))}</p></header>",
    ]
    if summary:
        parts += ["<h2>Summary</h2>", render_summary(summary)]
    parts.append("<h2>Training curves</h2>")
    main_plots = [p for p in plots if p[0] != "Other metrics"]
    if main_plots:
        figs = "".join(f"<div class='card'><img alt='{escape(t)}' src='{uri}'></div>" for t, uri in main_plots)
        parts.append(f"<div class='plots'>{figs}</div>")
    else:
        parts.append("<p class='empty'>No metrics.jsonl (or no numeric metrics) in this run directory.</p>")
    for title, uri in plots:
        if title == "Other metrics":
            parts += ["<h2>Other metrics</h2>", f"<div class='card wide'><img alt='Other metrics' src='{uri}'></div>"]
    parts.append(reasoning)
    parts.append("<h2>Sample completions</h2>")
    parts.append(render_samples(picked) if picked else "<p class='empty'>No samples.jsonl in this run directory.</p>")
    parts.append("<h2>Config</h2>")
    parts.append(
        f"<pre class='config'>{escape(config_text)}</pre>"
        if config_text is not None
        else "<p class='empty'>No config.yaml in this run directory.</p>"
    )
    parts.append("</main></body></html>")
    return "\n".join(parts)


class ReportError(AhaError, FileNotFoundError):
    """The run directory to report on is missing (or is a file)."""


def write_report(run_dir: Path, out: Path | None = None, summary: dict | None = None) -> Path:
    """Write the run's HTML report (default `run_dir/report.html`) and return its path.

    ``summary`` (e.g. the demo's teacher / SFT / RL table) replaces ``run_dir/summary.json`` when given."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is not a directory" if run_dir.exists() else "does not exist"
        raise ReportError(f"run directory {run_dir} {what}; pass the folder a training run wrote")
    out = Path(out) if out is not None else run_dir / "report.html"
    metrics = load_metrics(run_dir)
    config_path = run_dir / "config.yaml"
    config_text = config_path.read_text(encoding="utf-8", errors="replace") if config_path.is_file() else None
    samples = load_jsonl(run_dir / "samples.jsonl")
    html = render_html(
        run_dir.resolve(),
        metrics,
        plot_all(metrics),
        pick_samples(samples),
        summary if summary is not None else load_summary(run_dir),
        config_text,
        render_section(metrics, samples),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out
