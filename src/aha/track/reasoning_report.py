"""The report's reasoning section: curves of the ``reasoning/*`` metrics (aha.track.reasoning) and the first
"aha moments" of the run, read from ``samples.jsonl`` (rows the trainer marked ``aha``)."""

from __future__ import annotations

from html import escape

from aha.track.plots import clip, figure, plot_line, to_png

PANELS = [  # (title, [(key, label)]) — training batch keys, and the held-out eval's beside them
    (
        "Accuracy (strict: inside <answer>; lenient: last number)",
        [
            ("reasoning/accuracy_strict", "strict (train)"),
            ("reasoning/accuracy_lenient", "lenient (train)"),
            ("eval/reasoning/accuracy_strict", "strict (eval)"),
            ("eval/reasoning/accuracy_lenient", "lenient (eval)"),
        ],
    ),
    (
        "Format compliance (<think>…</think> <answer>…</answer>)",
        [("reasoning/format", "train"), ("eval/reasoning/format", "eval")],
    ),
    (
        "Mean response length (tokens)",
        [
            ("reasoning/length_correct", "correct (train)"),
            ("reasoning/length_wrong", "wrong (train)"),
            ("eval/reasoning/length_correct", "correct (eval)"),
            ("eval/reasoning/length_wrong", "wrong (eval)"),
        ],
    ),
    (
        "Reflection rate and aha moments",
        [
            ("reasoning/reflection_rate", "reflection rate (train)"),
            ("eval/reasoning/reflection_rate", "reflection (eval)"),
            ("reasoning/aha_rate", "aha moments (train)"),
        ],
    ),
    (
        "Strict accuracy of reflecting vs other completions",
        [("reasoning/accuracy_reflecting", "reflecting"), ("reasoning/accuracy_not_reflecting", "not reflecting")],
    ),
]
MAX_MOMENTS = 10


def is_reasoning_key(key: str) -> bool:
    return key.startswith(("reasoning/", "eval/reasoning/"))


def plot_reasoning(metrics: dict) -> str | None:
    """One panel per :data:`PANELS` entry with any of its keys logged; None when no reasoning metric was."""

    panels = [(title, [(k, label) for k, label in keys if k in metrics]) for title, keys in PANELS]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = figure(width=6.4 * ncols, height=3.2 * nrows, nrows=nrows, ncols=ncols)
    for ax, (title, keys) in zip(axes.flat, panels):
        for i, (key, label) in enumerate(keys):
            plot_line(ax, metrics[key], label, color=f"C{i}", linestyle="--" if key.startswith("eval/") else "-")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if "tokens" not in title:  # shares: on one 0–1 scale, so a flat 0 reads as 0
            ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    return to_png(fig)


def first_moments(samples: list[dict], limit: int = MAX_MOMENTS) -> list[dict]:
    """The first ``limit`` samples marked as aha moments, in step order.

    >>> [s["step"] for s in first_moments([{"step": 5, "aha": {}}, {"step": 2}, {"step": 3, "aha": {}}])]
    [3, 5]
    """
    marked = [s for s in samples if isinstance(s.get("aha"), dict) and isinstance(s.get("step"), int)]
    return sorted(marked, key=lambda s: s["step"])[:limit]


def render_moments(moments: list[dict], total: int) -> str:
    """The aha-moments table: step, prompt, the answer before the reflection → the right one, the completion."""

    if not moments:
        return (
            "<p class='empty'>No aha moment in the logged samples: no completion reflected (a phrase of "
            "task.reflection_phrases), changed its answer and ended right.</p>"
        )
    head = (
        "<tr><th style='width:5%'>step</th><th style='width:15%'>prompt</th><th style='width:18%'>"
        "phrase · before → after</th><th style='width:62%'>completion</th></tr>"
    )
    rows = []
    for s in moments:
        aha = s["aha"]
        change = (
            f"<b>{escape(str(aha.get('phrase', '')))}</b> · {escape(str(aha.get('first_answer', '')))} → "
            f"{escape(str(aha.get('final_answer', '')))}"
        )
        rows.append(
            f"<tr><td class='num'>{s['step']}</td><td><pre>{clip(s.get('prompt'))}</pre></td>"
            f"<td>{change}</td><td><pre>{clip(s.get('completion'))}</pre></td></tr>"
        )
    note = f"<p class='meta'>The first {len(moments)} of {total} logged aha moments.</p>"
    return f"{note}<table class='samples'>{head}{''.join(rows)}</table>"


def render_section(metrics: dict, samples: list[dict]) -> str:
    """The report's "Reasoning" and "Aha moments" sections; empty where the run logged no reasoning metric."""
    uri = plot_reasoning(metrics)
    if uri is None:
        return ""
    total = sum(1 for s in samples if isinstance(s.get("aha"), dict))
    return (
        "<h2>Reasoning</h2><div class='card wide'><img alt='Reasoning metrics' src='" + uri + "'></div>"
        "<h2>Aha moments</h2><p class='meta'>Completions that use a reflection phrase, then change the answer "
        "they had written before it, and end right.</p>" + render_moments(first_moments(samples), total)
    )
