"""Every reasoning metric (aha.track.reasoning) on hand-written completions: only what the model itself wrote counts.

The cases the metrics must not be fooled by: a reflection phrase inside another word, in a copy of the prompt (the
question repeated, a template's or an example's text), after the final answer, in ``task.response_prefix``, in a
multi-turn transcript's environment or user messages; and an empty completion."""

from __future__ import annotations

import pytest

from aha.config import load_config
from aha.data.templates import R1_SYSTEM
from aha.tasks import Task
from aha.track.reasoning import (
    REFLECTION_PHRASES,
    ReasoningMeter,
    Written,
    find_aha,
    judge,
    lenient_answer,
    reasoning_meter,
    reasoning_metrics,
    reflection_pattern,
)

PATTERN = reflection_pattern(REFLECTION_PHRASES)
SUM = "23+45="  # gold 68


def reflects(completion, prompt=SUM, **kw) -> bool:
    return judge(completion, "68", PATTERN, prompt, **kw).reflects


# ----------------------------------------------------------------------------- reflection: whole words only


@pytest.mark.parametrize(
    "text",
    [
        "I await the sum: 68",
        "a waitress brought 68",
        "Rechecking: 68",  # only the listed forms count ('recheck'), not other forms of them
        "checking again: 68",  # 'check again' is the phrase, not 'checking again'
        "it is verified: 68",
        "pre-evaluate: 68",  # a hyphenated prefix: not 're-evaluate'
        "wait-list of 68",  # a hyphenated compound: not 'wait'
        "nowait 68",
        "howevers 68",
    ],
)
def test_a_phrase_inside_another_word_is_no_reflection(text):
    assert not reflects(text)


@pytest.mark.parametrize(
    "text",
    [
        "Wait, 68",
        "(wait) 68",
        "WAIT! 68",
        "Let me check\n  again: 68",
        "re-evaluate: 68",
        "68? Recheck: 68",
        "24wait 68",  # a number, then the word: a model may drop the space
    ],
)
def test_a_whole_phrase_in_any_case_and_spacing_is_a_reflection(text):
    assert reflects(text)


# ----------------------------------------------------------------------------- reflection: the model's own words


WORD_PROBLEM = "However many apples Ann has, Bob has 45 more. Ann has 23. How many apples has Bob?"


def test_the_question_repeated_is_not_the_models_reflection():
    repeated = "However many apples Ann has, Bob has 45 more: 23+45 = 68. <answer>68</answer>"
    assert not reflects(repeated, WORD_PROBLEM)
    # the same word in the model's own sentence counts (a word is not a copy: a run of 4 words is)
    assert reflects("23+45 = 58. However, 3+5 is 8 and 2+4 is 6: 68. <answer>68</answer>", WORD_PROBLEM)
    # and repeating the question does not hide a reflection of its own further on
    assert reflects(repeated.replace("68.", "58. Wait, 68."), WORD_PROBLEM)


def test_a_word_of_the_prompt_used_in_the_models_own_sentence_counts():
    assert reflects("Let me verify: 68-45 = 23. <answer>68</answer>", "Verify that 23+45=68.")
    assert not reflects("Verify that 23+45=68. <answer>68</answer>", "Verify that 23+45=68.")


def test_a_short_question_repeated_whole_is_a_copy():
    assert not reflects("Verify: 23+45. 68", "Verify: 23+45")  # 3 words: the whole prompt
    assert reflects("Verify 68", "Verify: 23+45")  # one word of it is not


def test_an_examples_text_copied_from_the_prompt_is_not_a_reflection():
    few_shot = "Example: 2+3=6? Wait, let me check again: 2+3=5.\nNow: 23+45="
    assert not reflects("Wait, let me check again: 23+45=68", few_shot)
    assert reflects("23+45=58? No, let me recheck: 68", few_shot)


def test_the_r1_templates_text_copied_is_not_a_reflection():
    """The template's instruction is prompt too: a model that echoes it has not reflected (here with a phrase list
    that the R1 instruction holds, "reasoning process"), while the same words of its own count."""
    pattern = reflection_pattern(["reasoning process"])
    echo = "<think> reasoning process here </think> <answer>68</answer>"
    assert not judge(echo, "68", pattern, SUM, template_text=R1_SYSTEM).reflects
    assert judge(echo, "68", pattern, SUM).reflects  # without the template's text there is no copy to see
    own = "<think>my reasoning process: 3+5=8</think> <answer>68</answer>"
    assert judge(own, "68", pattern, SUM, template_text=R1_SYSTEM).reflects


def test_the_response_prefix_is_not_the_models():
    assert not reflects("<think>Wait, 23+45=68</think><answer>68</answer>", response_prefix="<think>Wait,")
    assert reflects("<think>Wait, 23+45=68. Wait, yes</think><answer>68</answer>", response_prefix="<think>Wait,")


# ----------------------------------------------------------------------------- reflection: before the final answer


def test_a_phrase_after_the_final_answer_is_no_reflection():
    after = judge("<think>23+45=68</think> <answer>68</answer> Wait, is that right?", "68", PATTERN, SUM)
    assert (after.reflects, after.strict_correct, after.format, after.aha) == (False, True, False, None)
    # between two answers it is before the final one: it counts, and here it corrected the answer
    between = judge("<answer>58</answer> Wait, 3+5=8, 2+4=6. <answer>68</answer>", "68", PATTERN, SUM)
    assert between.reflects and between.aha is not None and between.aha.first_answer == "58"
    # inside the final answer block it is before the block's end: it counts
    assert reflects("<answer>wait, 68</answer>")


def test_without_tags_the_whole_text_counts():
    """Untagged text has no marked end of the answer: a trailing phrase counts as a reflection (not an aha)."""
    j = judge("The answer is 68. Wait.", "68", PATTERN, SUM)
    assert (j.reflects, j.lenient_correct, j.aha) == (True, True, None)


# ----------------------------------------------------------------------------- the aha moment, in order


def test_a_phrase_before_a_corrected_answer_is_an_aha_moment():
    tagged = judge(
        "<think>23+45 = 58. Wait, let me recheck: 3+5=8, 2+4=6, so 68.</think> <answer>68</answer>", "68", PATTERN, SUM
    )
    assert tagged.reflects and tagged.strict_correct
    assert (tagged.aha.phrase, tagged.aha.first_answer, tagged.aha.final_answer) == ("Wait", "58", "68")
    untagged = judge("23+45 = 58. Wait: 3+5=8, 2+4=6, so 68", "68", PATTERN, SUM)  # the final answer: the last number
    assert untagged.aha is not None and (untagged.aha.first_answer, untagged.aha.final_answer) == ("58", "68")


def test_a_phrase_and_an_unchanged_wrong_answer_is_no_aha():
    j = judge("23+45 = 58. Wait, let me recheck: 58. <answer>58</answer>", "68", PATTERN, SUM)
    assert (j.reflects, j.strict_correct, j.lenient_correct, j.aha) == (True, False, False, None)


@pytest.mark.parametrize(
    "text,why",
    [
        ("23+45 = 58. Wait, let me recheck: 67. <answer>67</answer>", "changed, but to a wrong answer"),
        ("23+45 = 68. Wait, let me recheck: 68. <answer>68</answer>", "right before and after: a check"),
        ("Wait: 23+45, 3+5=8 and 2+4=6. <answer>68</answer>", "no answer of its own before the phrase"),
        ("<think>58</think> <answer>68</answer> Wait, 58?", "the phrase comes after the final answer"),
        ("58. Now 68, I think. Wait.", "no tags: the final answer (the last number) comes before the phrase"),
        (
            "23+45 = 58. Wait, let me check again if unsure. 68 <answer>68</answer>",
            "the phrase is in a copy of the prompt's example",
        ),
    ],
)
def test_not_an_aha_moment(text, why):
    prompt = "Example: Wait, let me check again if unsure.\n23+45="
    assert judge(text, "68", PATTERN, prompt).aha is None, why


def test_the_aha_is_the_first_phrase_with_an_answer_before_it():
    """'Wait' opens the working (no answer yet); 'recheck' follows a wrong sum: that is the moment."""
    moment = find_aha("Wait, let me add: 23+45 = 58. Then recheck: 3+5=8, 2+4=6, 68. <answer>68</answer>", "68")
    assert moment is not None and (moment.phrase, moment.first_answer) == ("recheck", "58")
    # the answer before is the last one written before the phrase
    moment = find_aha("<answer>57</answer> hmm <answer>58</answer> Wait, 3+5=8. <answer>68</answer>", "68")
    assert moment is not None and moment.first_answer == "58"


# ----------------------------------------------------------------------------- answers and format


def test_strict_answer_is_the_rewards_and_lenient_is_the_models_own_last_number():
    j = judge("<think>x</think><answer>67</answer> or 68", "68", PATTERN, SUM)
    assert (j.strict_correct, j.lenient_correct) == (False, True)
    # the question repeated after the answer: its numbers are not the model's answer
    assert lenient_answer("68. Next question: what is 23+45?", "What is 23+45?") == "68"
    assert judge("68. Next question: what is 23+45?", "68", PATTERN, "What is 23+45?").lenient_correct
    # the question restated is no answer at all (the restated-sum hack of docs/r1-zero.md)
    assert lenient_answer("0+4", "0+4=") is None
    assert not judge("0+4", "4", PATTERN, "0+4=").lenient_correct
    # the prompt's numbers still count where the model writes them in its own words
    assert lenient_answer("so the answer is 45", "23+45=") == "45"


def test_format_is_the_whole_completion_as_the_reward_sees_it():
    ok = "<think>3+5=8, 2+4=6</think>\n<answer>68</answer>"
    assert judge(ok, "68", PATTERN, SUM).format
    assert judge(ok, "68", PATTERN, SUM, response_prefix="<think>").format  # the prefix opens the format
    for bad in ["<answer>68</answer>", ok + " more", "<think>a</think><think>b</think><answer>68</answer>", ""]:
        assert not judge(bad, "68", PATTERN, SUM).format, bad


def test_an_empty_completion():
    j = judge("", "68", PATTERN, SUM)
    assert (j.format, j.reflects, j.strict_correct, j.lenient_correct, j.aha) == (False, False, False, False, None)
    assert judge("", None, PATTERN, SUM) == judge("", None, PATTERN, SUM)  # and without an answer to compare
    assert Written("").lenient() is None and Written("", "Wait for it").reflections(PATTERN) == []


# ----------------------------------------------------------------------------- multi-turn transcripts


def test_a_transcript_counts_only_the_assistants_messages():
    transcript = [
        {"role": "assistant", "content": "I will ask the calculator."},
        {"role": "tool", "content": "Wait: 23+45 = 68"},  # the environment's phrase and number
        {"role": "assistant", "content": "<think>the tool agrees</think> <answer>68</answer>"},
    ]
    j = judge(transcript, "68", PATTERN, [{"role": "user", "content": SUM}])
    assert (j.reflects, j.format, j.strict_correct) == (False, True, True)
    # the assistant repeating the tool's words is a copy, not its reflection
    echo = [*transcript[:2], {"role": "assistant", "content": "It said: Wait: 23+45 = 68. <answer>68</answer>"}]
    assert not judge(echo, "68", PATTERN, SUM).reflects
    # the environment's last number is not the model's answer
    unsure = [{"role": "assistant", "content": "58?"}, {"role": "user", "content": "No: it is 68"}]
    assert lenient_answer(unsure, SUM) == "58" and not judge(unsure, "68", PATTERN, SUM).lenient_correct


def test_an_aha_across_turns_and_format_on_the_last_turn():
    transcript = [
        {"role": "assistant", "content": "<think>23+45</think> <answer>58</answer>"},
        {"role": "user", "content": "Are you sure?"},
        {"role": "assistant", "content": "<think>Wait, 3+5=8 and 2+4=6.</think> <answer>68</answer>"},
    ]
    j = judge(transcript, "68", PATTERN, SUM)
    assert j.format and j.strict_correct and j.aha is not None
    assert (j.aha.first_answer, j.aha.final_answer) == ("58", "68")
    # the strict answer is the last assistant message's (as the rewards read it): no tags there, none
    no_tags = [transcript[0], {"role": "assistant", "content": "it is 68"}]
    j = judge(no_tags, "68", PATTERN, SUM)
    assert (j.format, j.strict_correct, j.lenient_correct) == (False, False, True)
    empty = judge([{"role": "user", "content": "Wait"}], "68", PATTERN, SUM)  # no assistant message
    assert (empty.reflects, empty.format, empty.lenient_correct) == (False, False, False)


# ----------------------------------------------------------------------------- a batch's metrics, by hand


def test_every_metric_of_a_batch_by_hand():
    completions = [  # (completion, its length in tokens)
        ("<think>3+5=8, 2+4=6</think> <answer>68</answer>", 10),  # format, right, no reflection
        ("<think>23+45 = 58. Wait, 3+5=8: 68</think> <answer>68</answer>", 20),  # format, right, reflects: aha
        ("23+45 = 58. Wait, let me recheck: 58. <answer>58</answer>", 14),  # reflects, wrong, unchanged
        ("<think>x</think> <answer>68</answer> Wait, sure?", 12),  # right; the phrase after the answer: no
        ("I await 68", 4),  # 'wait' inside a word; lenient right only
        ("What is 23+45? Wait, think again.", 9),  # a copy of the prompt: no reflection, no answer
        ("", 0),  # empty
    ]
    prompt = "What is 23+45? Wait, think again."
    js = [judge(c, "68", PATTERN, prompt) for c, _ in completions]
    assert [j.reflects for j in js] == [False, True, True, False, False, False, False]
    m = reasoning_metrics(js, [n for _, n in completions])
    assert m["reasoning/format"] == pytest.approx(2 / 7)
    assert m["reasoning/reflection_rate"] == pytest.approx(2 / 7)
    assert m["reasoning/accuracy_strict"] == pytest.approx(3 / 7)
    assert m["reasoning/accuracy_lenient"] == pytest.approx(4 / 7)
    assert m["reasoning/accuracy_reflecting"] == 0.5  # the aha (right) and the unchanged wrong answer
    assert m["reasoning/accuracy_not_reflecting"] == pytest.approx(2 / 5)
    assert m["reasoning/length_correct"] == pytest.approx((10 + 20 + 12) / 3)
    assert m["reasoning/length_wrong"] == pytest.approx((14 + 4 + 9 + 0) / 4)
    assert m["reasoning/aha_rate"] == pytest.approx(1 / 7)


def test_an_empty_batch_and_no_reference_answers():
    assert reasoning_metrics([], []) == {"reasoning/format": None, "reasoning/reflection_rate": None}
    js = [judge("Wait, <think>x</think>", None, PATTERN), judge("", None, PATTERN)]
    assert reasoning_metrics(js, [5, 0], "eval/reasoning/") == {
        "eval/reasoning/format": 0.0,
        "eval/reasoning/reflection_rate": 0.5,
    }  # correctness keys left out: nothing to compare with


# ----------------------------------------------------------------------------- the meter a run builds


def _meter(*overrides: str, verifier: str = "accuracy") -> ReasoningMeter:
    cfg = load_config(None, ["log.reasoning_metrics=true", *overrides])
    meter = reasoning_meter(cfg.log.reasoning_metrics, cfg.task, Task("t", [], [], verifier=verifier))
    assert meter is not None
    return meter


def test_the_runs_meter_knows_its_template_and_response_prefix():
    meter = _meter("task.template=r1", "task.response_prefix=<think>", "task.reflection_phrases=[reasoning process]")
    echo = "<think> reasoning process here </think> <answer>68</answer>"  # the R1 instruction's example, echoed
    own = "<think>my reasoning process: 3+5=8</think> <answer>68</answer>"
    assert [j.reflects for j in meter.judge([SUM, SUM], [echo, own], ["68", "68"])] == [False, True]
    prefixed = _meter("task.response_prefix=Wait,")
    assert [j.reflects for j in prefixed.judge([SUM, SUM], ["Wait, 68", "Wait, wait: 68"], ["68", "68"])] == [
        False,
        True,
    ]


def test_the_meter_judges_transcripts_and_eval_results():
    meter = ReasoningMeter()
    transcript = [{"role": "tool", "content": "Wait"}, {"role": "assistant", "content": "<answer>68</answer>"}]
    [j] = meter.judge([SUM], [transcript], ["68"])
    assert (j.reflects, j.strict_correct) == (False, True)
    rows = [{"prompt": SUM, "answer": "68"}, {"prompt": "What is 23+45?", "answer": "68"}]
    result = {"completions": ["23+45 = 58. Wait: 68", "What is 23+45? 68"], "lengths": [9, 6]}
    m = meter.of_eval(rows, result, "eval/reasoning/")
    assert m["eval/reasoning/reflection_rate"] == 0.5 and m["eval/reasoning/aha_rate"] == 0.5
    assert m["eval/reasoning/accuracy_lenient"] == 1.0 and m["eval/reasoning/accuracy_strict"] == 0.0
