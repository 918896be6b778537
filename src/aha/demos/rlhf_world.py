"""The RLHF demo's little world: short notes written from a small vocabulary, a hidden gold preference, and a
simulated human who ranks notes by it — with noise, the way a real labeller does.

The **gold preference** (:func:`gold_score`) is what the "human" wants from a note about a topic:
  - warm words, each distinct one counted once (``sun``: +1.0 … ``glad``: +1.3); bleak words cost (``dull``: −1.0 …);
  - a little enthusiasm: the first ``!`` +0.6, a second +0.3 — and every ``!`` past the second −0.9 (nobody likes
    "!!!!!");
  - no rambling: each word repeated −0.8, each word past eight −0.4.
The policy never sees this function: RL optimises a reward model trained on the human's *rankings* only, of notes the
warm-ish writer it starts from (SFT on :func:`corpus`) happened to write. That writer rarely repeats a warm word, never
writes a note of nothing but warm words and rarely passes two ``!``, so the rankings say little there; and a
character-level reward model learns "warm words are good" partly as letter patterns. GRPO against it first improves
the notes, then fills them with repeated warm words and warm-looking fragments that the reward model scores ever higher
and gold punishes. Gold itself is only logged (weight 0), never optimised.

The **simulated human** (:func:`simulate_ranking`) ranks K notes by sampling a Plackett-Luce ranking from
``gold / temperature``: near-equal notes are often swapped, clearly different ones rarely (Bradley-Terry noise);
notes it values exactly the same (e.g. identical ones) it calls a tie.
"""

from __future__ import annotations

import math
import random
import re

WARM = {"sun": 1.0, "joy": 1.2, "kind": 1.1, "warm": 0.9, "glad": 1.3, "calm": 0.8}
BLEAK = {"dull": -1.0, "cold": -0.9, "sad": -1.2, "grey": -0.8, "harsh": -1.1, "dark": -0.7}
PLAIN = ("the", "a", "day", "we", "walk", "by", "and", "see", "old", "long", "near", "with")
TOPICS = ("sea", "tree", "road", "home", "town", "hill", "rain", "field", "lake", "park", "bird", "boat")
BANG_GAIN = (0.6, 0.3)  # the first and second '!'
BANG_COST = 0.9  # each '!' past the second
REPEAT_COST = 0.8  # each repeated word
LONG_COST = 0.4  # each word past LONG_AFTER
LONG_AFTER = 8

_WORD = re.compile(r"[a-z]+")


def prompt_for(topic: str) -> str:
    """The prompt a note is written for.

    >>> prompt_for("sea")
    'note on sea:'
    """
    return f"note on {topic}:"


def gold_score(text: str) -> float:
    """The hidden preference for one note (see the module docstring).

    >>> gold_score(" glad sun by the sea!")  # 1.3 + 1.0 + the first '!'
    2.9
    >>> round(gold_score(" glad glad glad!!!!!"), 2)  # 1.3 − 2 repeats × 0.8 + 0.9 − 3 × 0.9
    -2.1
    """
    words = _WORD.findall(text)
    distinct = set(words)
    score = sum(WARM.get(w, 0.0) for w in distinct) + sum(BLEAK.get(w, 0.0) for w in words)
    bangs = text.count("!")
    score += sum(BANG_GAIN[:bangs]) - BANG_COST * max(0, bangs - len(BANG_GAIN))
    score -= REPEAT_COST * (len(words) - len(distinct)) + LONG_COST * max(0, len(words) - LONG_AFTER)
    return round(score, 6)


def gold(prompts, completions, **kwargs) -> list[float]:
    """The gold judge as an aha reward function (logged with weight 0, never optimised)."""
    return [gold_score(c if isinstance(c, str) else c[-1]["content"]) for c in completions]


def write_note(rng: random.Random, topic: str) -> str:
    """One note of the warm-ish writer the policy imitates: 3–7 words, mostly plain, some warm, some bleak, the topic
    now and then; ends with '.', '!' or (rarely) '!!'. Repeats happen only by chance."""
    words = []
    for _ in range(rng.randint(3, 7)):
        u = rng.random()
        if u < 0.22:
            words.append(rng.choice(list(WARM)))
        elif u < 0.40:
            words.append(rng.choice(list(BLEAK)))
        elif u < 0.52:
            words.append(topic)
        else:
            words.append(rng.choice(PLAIN))
    end = rng.choices([".", "!", "!!"], weights=[0.55, 0.33, 0.12])[0]
    return " " + " ".join(words) + end


def corpus(n: int, seed: int) -> list[dict]:
    """``n`` SFT demonstrations ``{"prompt", "completion"}`` over every topic."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        rows.append({"prompt": prompt_for(topic), "completion": write_note(rng, topic)})
    return rows


def simulate_ranking(completions: list[str], rng: random.Random, temperature: float) -> list:
    """A noisy human's ranking of ``completions`` (tiers, best first): Plackett-Luce sampling from
    ``gold / temperature`` — repeatedly pick the best of the rest with probability ∝ exp(gold / temperature);
    notes of equal gold (identical ones, say) share a tier: the human sees no difference between them.

    >>> simulate_ranking([" sad.", " glad!", " dull."], random.Random(0), 0.01)
    [[1], [2], [0]]
    >>> simulate_ranking([" sad.", " day.", " a day."], random.Random(0), 0.01)
    [[1, 2], [0]]
    """
    scores = [gold_score(c) for c in completions]
    left = sorted(set(scores))
    order = []
    while left:
        weights = [math.exp((g - left[-1]) / temperature) for g in left]
        pick = rng.choices(left, weights=weights)[0]
        order.append(pick)
        left.remove(pick)
    return [[i for i, g in enumerate(scores) if g == pick] for pick in order]
