"""Reward functions: built-ins on concrete values, spec resolution, the weighted combiner."""

from __future__ import annotations

import pytest

from aha.rewards import (
    BUILTIN_REWARDS,
    RewardConfigError,
    RewardError,
    compute_rewards,
    resolve_reward,
)
from aha.rewards.builtin import (
    accuracy,
    completion_text,
    overlong,
    repetition,
    tag_count,
    think_format,
)


def chat(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# ─────────────────────────────── accuracy ───────────────────────────────


def test_accuracy_plain_digits():
    completions = ["42", " 42\n", "41", "042", "-7", "+7"]
    answer = ["42", "42", "42", "42", "-7", "7"]
    assert accuracy([""] * 6, completions, answer=answer) == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]


def test_accuracy_integer_gold_column():
    assert accuracy(["", ""], ["12", "13"], answer=[12, 12]) == [1.0, 0.0]


def test_accuracy_answer_tags_take_the_inside():
    completions = [
        "<think>6*7 is 42</think> <answer>42</answer>",
        "<think>I think 42</think> <answer>41</answer>",
        "<answer>1</answer> then <answer> 42 </answer>",  # the last pair counts
    ]
    assert accuracy([""] * 3, completions, answer=["42"] * 3) == [1.0, 0.0, 1.0]


def test_accuracy_equivalent_latex_via_math_verify():
    completions = ["<answer>1/2</answer>", "<answer>\\frac{1}{2}</answer>", "0.5", "<answer>0.25</answer>"]
    assert accuracy([""] * 4, completions, answer=["0.5", "0.5", "\\frac{1}{2}", "1/2"]) == [
        1.0,
        1.0,
        1.0,
        0.0,
    ]


def test_accuracy_expressions_and_free_text():
    completions = ["<answer>1+x</answer>", "<answer>x+2</answer>", "So the total is 8."]
    assert accuracy([""] * 3, completions, answer=["x+1", "x+1", "8"]) == [1.0, 0.0, 1.0]


def test_accuracy_missing_gold_is_no_opinion():
    assert accuracy([""] * 3, ["1", "1", "1"], answer=[None, "", "1"]) == [None, None, 1.0]


def test_accuracy_without_answer_column_says_so():
    with pytest.raises(ValueError, match="'answer' column"):
        accuracy(["p"], ["1"])


def test_accuracy_conversational():
    prompts = [[{"role": "user", "content": "2+2?"}]] * 2
    completions = [chat("<answer>4</answer>"), chat("<answer>5</answer>")]
    assert accuracy(prompts, completions, answer=["4", "4"]) == [1.0, 0.0]


# ─────────────────────────────── format ───────────────────────────────


def test_think_format():
    completions = [
        "<think>2+2 is 4</think>\n<answer>4</answer>",
        "<think>\nmulti\nline\n</think><answer>\n4\n</answer>\n",
        "<answer>4</answer>",  # no think block
        "<think>a</think><answer>4</answer> trailing words",
        "intro <think>a</think><answer>4</answer>",
        "<think>a</think><answer>4</answer><answer>5</answer>",  # two answers
        "<think>a</think>",
    ]
    assert think_format([""] * 7, completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_tag_count_partial_credit():
    completions = [
        "<think>x</think><answer>1</answer>",  # all four once
        "<think>x</think> 1",  # two
        "<think><think>x</think><answer>1</answer>",  # <think> twice → three
        "no tags",
    ]
    assert tag_count([""] * 4, completions) == [1.0, 0.5, 0.75, 0.0]


# ─────────────────────────────── overlong ───────────────────────────────


def test_overlong_soft_punishment_by_hand():
    # L_max = 100, buffer = 100 // 4 = 25: free up to 75, linear to -1 at 100, -1 beyond.
    lengths = [10, 75, 76, 80, 90, 100, 130]
    ids = [[0] * n for n in lengths]
    got = overlong([""] * 7, [""] * 7, completion_ids=ids, max_completion_length=100)
    assert got == pytest.approx([0.0, 0.0, -0.04, -0.2, -0.6, -1.0, -1.0])


def test_overlong_explicit_buffer_and_text_fallback():
    # L_max = 10, buffer = 4: free up to 6; 8 chars → (6 - 8) / 4 = -0.5.
    got = overlong(["", ""], ["abcdef", "abcdefgh"], max_completion_length=10, overlong_buffer=4)
    assert got == [0.0, -0.5]
    # buffer 0: a hard step at the limit.
    ids = [[0] * 10, [0] * 11]
    assert overlong(["", ""], ["", ""], completion_ids=ids, max_completion_length=10, overlong_buffer=0) == [0.0, -1.0]


def test_overlong_needs_max_length():
    with pytest.raises(ValueError, match="max_completion_length"):
        overlong([""], ["x"])


def test_overlong_message_names_what_exists():
    with pytest.raises(ValueError, match="rollout.max_new_tokens"):  # the setting a user can change
        overlong([None], ["x"])


# ─────────────────────────────── repetition ───────────────────────────────


def test_repetition_repetitive_vs_varied():
    repetitive = "the cat sat the cat sat the cat sat"  # 7 trigrams, 3 distinct
    varied = "the quick brown fox jumps over the lazy dog"
    got = repetition(["", ""], [repetitive, varied])
    assert got == pytest.approx([-(1 - 3 / 7), 0.0])


def test_repetition_characters_when_few_words_and_short_texts():
    # "1111111": one word → 7 chars → 5 trigrams, 1 distinct → (1 - 1/5) * -1 = -0.8
    assert repetition(["", "", ""], ["1111111", "ab", ""]) == pytest.approx([-0.8, 0.0, 0.0])


def test_repetition_conversational():
    assert repetition([""], [chat("a b a b a b")]) == [-0.5]


# ─────────────────────────────── helpers ───────────────────────────────


def test_completion_text_forms():
    assert completion_text("plain") == "plain"
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert completion_text(messages) == "a"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "hi"}]}]) == "hi"
    assert completion_text([]) == ""


def test_builtins_ignore_unknown_kwargs():
    extra = {"completion_ids": [[1, 2]], "max_completion_length": 8, "foo": ["bar"]}
    for name, fn in BUILTIN_REWARDS.items():
        kwargs = dict(extra, answer=["4"]) if name == "accuracy" else extra
        out = fn(prompts=["p"], completions=["<answer>4</answer>"], **kwargs)
        assert len(out) == 1, name


# ─────────────────────────────── resolve_reward ───────────────────────────────


def test_resolve_builtin_and_module():
    assert resolve_reward("accuracy") is accuracy
    assert resolve_reward("aha.rewards.builtin:think_format") is think_format


def test_resolve_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(
        "def short(prompts, completions, **kwargs):\n"
        "    return [1.0 if len(c) < 5 else 0.0 for c in completions]\n"
        "NOT_A_FN = 3\n"
    )
    fn = resolve_reward(f"{path}:short")
    assert fn(prompts=["", ""], completions=["abc", "abcdefgh"]) == [1.0, 0.0]
    with pytest.raises(RewardConfigError, match="has no attribute 'missing'"):
        resolve_reward(f"{path}:missing")
    with pytest.raises(RewardConfigError, match="not a function"):
        resolve_reward(f"{path}:NOT_A_FN")


def test_resolve_errors_are_one_clear_line(tmp_path):
    with pytest.raises(RewardConfigError) as info:
        resolve_reward("acuracy")
    message = str(info.value)
    assert "unknown reward 'acuracy'" in message and "accuracy" in message
    assert "think_format" in message and "\n" not in message

    with pytest.raises(RewardConfigError, match="file not found"):
        resolve_reward(f"{tmp_path}/nope.py:fn")
    with pytest.raises(RewardConfigError, match="cannot import module 'no_such_pkg_xyz.rewards'"):
        resolve_reward("no_such_pkg_xyz.rewards:fn")

    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('needs torch_xyz')\n")
    with pytest.raises(RewardConfigError, match="ImportError: needs torch_xyz"):
        resolve_reward(f"{broken}:fn")


# ─────────────────────────────── compute_rewards ───────────────────────────────


def fails_on_bad(prompts, completions, **kwargs):
    """Raises on any completion containing 'bad'."""
    out = []
    for c in completions:
        if "bad" in c:
            raise ZeroDivisionError("cannot score this one")
        out.append(1.0)
    return out


PROMPTS = ["p0", "p1", "p2"]
COMPLETIONS = ["good", "bad answer", "good"]


def test_raising_user_fn_names_fn_and_sample():
    with pytest.raises(RewardError) as info:
        compute_rewards([("picky", fails_on_bad, 1.0)], PROMPTS, COMPLETIONS, {})
    message = str(info.value)
    assert "'picky'" in message and "sample 1" in message
    assert '"p1"' in message and '"bad answer"' in message
    assert "ZeroDivisionError: cannot score this one" in message
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_preview_is_short():
    long = "bad " + "x" * 500
    with pytest.raises(RewardError) as info:
        compute_rewards([("picky", fails_on_bad, 1.0)], ["p"], [long], {})
    assert len(str(info.value)) < 300


def test_skip_gives_none_only_to_the_bad_sample():
    const = lambda prompts, completions, **kw: [0.5] * len(completions)  # noqa: E731
    totals, per_fn, skipped = compute_rewards(
        [("picky", fails_on_bad, 1.0), ("const", const, 2.0)],
        PROMPTS,
        COMPLETIONS,
        {},
        on_error="skip",
    )
    assert per_fn == {"picky": [1.0, None, 1.0], "const": [0.5, 0.5, 0.5]}
    assert totals == [2.0, 1.0, 2.0]
    assert skipped == 1


def test_bad_return_values():
    def wrong_length(prompts, completions, **kw):
        return [1.0]

    def nan_at_2(prompts, completions, **kw):
        return [1.0, 1.0, float("nan")]

    def string_value(prompts, completions, **kw):
        return [1.0, "yes", 1.0]

    with pytest.raises(RewardError, match="'wrong_length' failed on the batch of 3.*returned 1 values"):
        compute_rewards([("wrong_length", wrong_length, 1.0)], PROMPTS, COMPLETIONS, {})
    with pytest.raises(RewardError, match="'nan_at_2' failed on sample 2.*nan"):
        compute_rewards([("nan_at_2", nan_at_2, 1.0)], PROMPTS, COMPLETIONS, {})
    with pytest.raises(RewardError, match="sample 1.*'yes'"):
        compute_rewards([("string_value", string_value, 1.0)], PROMPTS, COMPLETIONS, {})

    _, per_fn, skipped = compute_rewards([("nan_at_2", nan_at_2, 1.0)], PROMPTS, COMPLETIONS, {}, on_error="skip")
    assert per_fn["nan_at_2"] == [1.0, 1.0, None] and skipped == 1


def test_weights_combine_with_none():
    a = lambda prompts, completions, **kw: [1.0, None, 0.0, None]  # noqa: E731
    b = lambda prompts, completions, **kw: [0.5, 0.5, True, None]  # noqa: E731
    totals, per_fn, skipped = compute_rewards([("a", a, 2.0), ("b", b, -1.0)], ["p"] * 4, ["c"] * 4, {})
    # 2*1 - 0.5 = 1.5;  None - 0.5 = -0.5;  2*0 - 1 = -1;  all None → 0.0
    assert totals == [1.5, -0.5, -1.0, 0.0]
    assert per_fn["b"] == [0.5, 0.5, 1.0, None]
    assert skipped == 0


def test_columns_and_extra_reach_the_functions():
    seen = {}

    def spy(prompts, completions, **kwargs):
        seen.update(kwargs)
        return [0.0] * len(completions)

    compute_rewards(
        [("spy", spy, 1.0), ("accuracy", accuracy, 1.0), ("overlong", overlong, 1.0)],
        ["p", "q"],
        ["<answer>4</answer>", "5"],
        {"answer": ["4", "4"]},
        completion_ids=[[1, 2], [3]],
        max_completion_length=16,
    )
    assert seen == {"answer": ["4", "4"], "completion_ids": [[1, 2], [3]], "max_completion_length": 16}


def test_end_to_end_with_builtins_conversational():
    funcs = [(name, resolve_reward(name), w) for name, w in [("accuracy", 1.0), ("think_format", 0.5)]]
    completions = [chat("<think>2+2=4</think><answer>4</answer>"), chat("4"), chat("<answer>5</answer>")]
    totals, per_fn, _ = compute_rewards(funcs, ["q"] * 3, completions, {"answer": ["4", "4", "4"]})
    assert per_fn == {"accuracy": [1.0, 1.0, 0.0], "think_format": [1.0, 0.0, 0.0]}
    assert totals == [1.5, 1.0, 0.0]


def test_config_errors():
    with pytest.raises(RewardConfigError, match="on_error"):
        compute_rewards([], ["p"], ["c"], {}, on_error="ignore")
    f = lambda prompts, completions, **kw: [0.0]  # noqa: E731
    with pytest.raises(RewardConfigError, match="repeated: f"):
        compute_rewards([("f", f, 1.0), ("f", f, 1.0)], ["p"], ["c"], {})


def test_accuracy_refuses_the_question_restated_as_the_answer():
    """A policy learned to write <answer>80+51</answer> for "80+51": math-verify evaluates it to 131 and called it
    right. Where the gold is a number, a sum/difference/product left to compute is not an answer; a fraction is."""
    completions = [
        "<answer>80+51</answer>",
        "80+51",
        "<answer>$80 \\times 1 + 51$</answer>",
        "<answer>131</answer>",
        "80+51=131",
        "So the answer is 131.",
        "<answer>262/2</answer>",
    ]
    assert accuracy(["80+51="] * 7, completions, answer=["131"] * 7) == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert accuracy([""], ["<answer>1+x</answer>"], answer=["x+1"]) == [1.0]  # symbolic golds keep math-verify
