"""Multi-turn episodes in the rollout: the model acts, the environment answers, the model goes on.

    prompts + reset's observations ─► turn: ONE batched generate over every episode still running
        ─► each episode's environment answers (tool results, or the game's next observation) ─► its tokens are
            appended in the chat template's format ─► next turn, until the model calls no tool, the environment
            says done, env.max_turns, or rollout.max_episode_tokens

An episode's completion is everything after its prompt: the model's turns and the environment's answers in order,
with a per-token mask (1 = the model's own token, 0 = the environment's). Only the model's tokens enter the policy
loss, the KL, the entropy bonus, the critic's targets and the logprob checks (:func:`aha.rollout.pack_rollouts`
folds the mask in); the environment's are context. The sampler's logprobs of the model's tokens are kept, as in a
single turn. The in-process engine keeps its KV cache from one turn to the next (:class:`~aha.rollout.turn_cache.
TurnCache`): a turn encodes only the environment's answer (and the model's last token), not the whole context again.
Other engines (the compiled one, a test's scripted player) re-encode each episode's context every turn.

Formats: with a chat template, the prompt is rendered with the tools (the template's own tool support where it has
one, else the Hermes block in the system prompt) and the environment's answers as the template renders them
(:func:`aha.env.env_suffix_text`); with a text template ('plain', for the tiny models), the answers are appended as
text lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aha.data.templates import encode_text, render_prompt
from aha.env import Environment, Episode, env_suffix_text, episode_metrics, tools_system_prompt, with_observation
from aha.env import render_prompt as render_tools_prompt
from aha.env.episode import respond_all
from aha.rollout import Engine, Rollouts, SamplingParams
from aha.rollout.hf import HFEngine
from aha.rollout.turn_cache import TurnCache

CHAT_TEMPLATES = ("chat", "r1")
PYTHON_ENVS: dict[str, Any] = {}  # py:NAME → an environment class or tool function handed to aha.train


@dataclass
class EpisodeFormat:
    """How an episode's text becomes tokens for ``tokenizer`` under a resolved ``template``."""

    tokenizer: Any
    template: str
    env: Environment
    response_prefix: str = ""

    @property
    def chat(self) -> bool:
        return self.template in CHAT_TEMPLATES

    def prompt_ids(self, prompt: str | list, observation: str | None) -> list[int]:
        """The prompt with the reset's observation appended to its last message (TRL's way), and the tools."""
        prompt = with_observation(prompt, observation)
        schemas = self.env.schemas()
        if self.chat and schemas:
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            text = render_tools_prompt(self.tokenizer, messages, schemas, self.env.native_tools)
            prefix = encode_text(self.response_prefix, self.tokenizer) if self.response_prefix else []
            return self.tokenizer(text, add_special_tokens=False)["input_ids"] + prefix
        if schemas and isinstance(prompt, str):
            prompt = tools_system_prompt(schemas) + "\n\n" + prompt
        return render_prompt(prompt, self.tokenizer, self.template, self.response_prefix)

    def answer_ids(self, messages: list[dict], model_ids: list[int]) -> list[int]:
        """The tokens that follow a finished model turn (``model_ids``): the environment's ``messages`` and the
        opening of the next assistant turn. A chat turn that stopped on something else than the template's
        end-of-turn token gets that token first (as context: it is not the model's)."""
        if not messages:
            return []
        tok = self.tokenizer
        if not self.chat:
            return encode_text("\n" + "\n".join(str(m.get("content", "")) for m in messages) + "\n", tok)
        close = [] if model_ids and model_ids[-1] == tok.eos_token_id else [tok.eos_token_id]
        text = env_suffix_text(tok, messages, self.env.native_tools)
        return close + tok(text, add_special_tokens=False)["input_ids"]


@dataclass
class EnvRecipe:
    """What another process (a Ray rollout worker) needs to build the run's environment and play its episodes: the
    ``env`` section's specs (``py:NAME`` objects carried along, pickled by Ray) and how turns become tokens."""

    factory: Any
    tools: list
    style: str
    tool_timeout_s: float
    template: str
    response_prefix: str
    max_turns: int
    max_episode_tokens: int
    workers: int = 1

    def build(self, tokenizer) -> EpisodeFormat:
        from aha.env import build_environment

        env = build_environment(self.factory, self.tools, self.style, self.tool_timeout_s, tokenizer=tokenizer)
        return EpisodeFormat(tokenizer, self.template, env, self.response_prefix)


@dataclass
class EpisodeStats:
    """An episode's counters without its environment instance (what a worker sends back for the metrics)."""

    style: str
    turns: int
    done: bool
    tool_calls: int
    errors: dict
    calls_by_tool: dict
    reward: float | None

    @classmethod
    def of(cls, ep: Episode) -> EpisodeStats:
        return cls(ep.style, ep.turns, ep.done, ep.tool_calls, dict(ep.errors), dict(ep.calls_by_tool), ep.reward)


@dataclass
class EpisodeBatch:
    """A batch of finished episodes: their rollouts (completion = model turns and environment answers, with the
    mask), each episode's transcript as chat messages, and the episodes themselves (counters, ``env``)."""

    rollouts: Rollouts
    transcripts: list[list[dict]]
    episodes: list[Episode]
    truncated: list[bool] = field(default_factory=list)  # cut by a cap (turns, tokens) rather than ended


def run_episodes(
    engine: Engine,
    fmt: EpisodeFormat,
    rows: list[dict],
    group_size: int,
    sampling: SamplingParams,
    max_turns: int,
    max_episode_tokens: int,
    seeds: list[int] | None = None,
    workers: int = 1,
) -> EpisodeBatch:
    """``group_size`` episodes of each row (grouped, as :meth:`Engine.generate` groups completions), played turn by
    turn. ``seeds``: one per episode for the environments' ``reset`` (None: no seed). ``workers``: episodes answered
    at once, in threads (``env.workers``)."""
    B = len(rows) * group_size
    episodes = fmt.env.episodes(B)
    contexts: list[list[int]] = []
    for i, ep in enumerate(episodes):
        row = rows[i // group_size]
        observation = ep.start(row, seed=None if seeds is None else seeds[i])
        contexts.append(fmt.prompt_ids(row["prompt"], observation))
    prompts = [list(c) for c in contexts]
    completion: list[list[int]] = [[] for _ in range(B)]
    mask: list[list[int]] = [[] for _ in range(B)]
    logps: list[list[float]] = [[] for _ in range(B)]
    transcripts: list[list[dict]] = [[] for _ in range(B)]
    running = [True] * B
    truncated = [False] * B
    kept = (
        TurnCache(engine, B) if isinstance(engine, HFEngine) and engine.keeps_turn_cache else None
    )  # (else: re-encode)
    for turn in range(max_turns):
        live = [i for i in range(B) if running[i]]
        if not live:
            break
        room = {i: max_episode_tokens - len(completion[i]) for i in live}
        turn_sampling = replace(sampling, max_new_tokens=max(1, min(sampling.max_new_tokens, max(room.values()))))
        if kept is not None:
            roll = kept.generate(live, [contexts[i] for i in live], turn_sampling)
        else:
            roll = engine.generate([contexts[i] for i in live], 1, turn_sampling)
        answered, texts = [], []
        for k, i in enumerate(live):
            ids, lps = roll.completion_ids[k][: room[i]], roll.logprobs[k][: room[i]]
            completion[i] += ids
            mask[i] += [1] * len(ids)
            logps[i] += lps
            contexts[i] += ids
            text = (fmt.response_prefix if turn == 0 else "") + fmt.tokenizer.decode(ids, skip_special_tokens=True)
            transcripts[i].append({"role": "assistant", "content": text})
            if roll.finish_reasons[k] == "length" or len(roll.completion_ids[k]) > room[i]:
                running[i], truncated[i] = False, True  # the turn was cut: the episode ends here
                continue
            answered.append(i)
            texts.append(text)
        for i, reply in zip(answered, respond_all([episodes[i] for i in answered], texts, workers)):
            transcripts[i] += reply.messages
            if reply.done or turn + 1 == max_turns:  # (after the last turn: its answer is not context for another)
                running[i] = False
                truncated[i] = not reply.done
                continue
            answer = fmt.answer_ids(reply.messages, completion[i])
            if len(completion[i]) + len(answer) >= max_episode_tokens:  # no room left for another model turn
                running[i], truncated[i] = False, True
                continue
            completion[i] += answer
            mask[i] += [0] * len(answer)
            logps[i] += [0.0] * len(answer)
            contexts[i] += answer
    reasons = ["length" if t else "stop" for t in truncated]
    return EpisodeBatch(Rollouts(prompts, completion, logps, reasons, mask), transcripts, episodes, truncated)


class ScriptedEngine:
    """A rollout engine whose turns a function writes: ``turn(the context's text) → the turn's text``, encoded as the
    tokenizer encodes it, then EOS, as a model's turn ends (:class:`~aha.rollout.Engine`'s interface, no model). A
    scripted teacher: played through :func:`run_episodes`, its episodes are token for token what an RL run renders,
    and :func:`sft_rows` turns them into a warm-up's rows."""

    weights_version = 0
    exact_logprobs = False

    def __init__(self, tokenizer, turn: Callable[[str], str]):
        self.tokenizer, self.turn = tokenizer, turn

    def generate(self, prompt_token_ids: list[list[int]], n: int, sampling: SamplingParams) -> Rollouts:
        prompts = [list(p) for p in prompt_token_ids for _ in range(n)]
        eos = self.tokenizer.eos_token_id
        completions = [encode_text(self.turn(self.tokenizer.decode(p)), self.tokenizer) + [eos] for p in prompts]
        return Rollouts(prompts, completions, [[0.0] * len(c) for c in completions], ["stop"] * len(prompts))

    def sync(self, policy) -> int:
        return self.weights_version


def model_turns(batch: EpisodeBatch) -> list[tuple[list[int], list[int]]]:
    """``(context ids, turn ids)`` for every model turn of ``batch``: the episode's tokens before the turn, and the
    turn's own tokens (its mask's runs of 1)."""
    out = []
    roll = batch.rollouts
    for prompt, completion, mask in zip(roll.prompt_ids, roll.completion_ids, roll.completion_mask or []):
        start = None
        for j, m in enumerate([*mask, 0]):
            if m and start is None:
                start = j
            elif not m and start is not None:
                out.append((prompt + completion[:start], completion[start:j]))
                start = None
    return out


def sft_rows(batch: EpisodeBatch, tokenizer) -> list[dict]:
    """One SFT row per model turn of ``batch`` (e.g. a scripted teacher's episodes, for a warm-up before RL): ``prompt`` the context's text, ``completion`` the turn's text without its EOS
    (SFT appends it). Each is checked to encode back to exactly the tokens the episode played (ValueError if not)."""
    rows = []
    eos = tokenizer.eos_token_id
    for context, turn in model_turns(batch):
        text = turn[:-1] if turn and turn[-1] == eos else turn
        row = {"prompt": tokenizer.decode(context), "completion": tokenizer.decode(text)}
        if encode_text(row["prompt"], tokenizer) != context or encode_text(row["completion"], tokenizer) != text:
            raise ValueError(f"an SFT row does not encode back to the episode's tokens: {row['completion'][:60]!r}")
        rows.append(row)
    return rows


def evaluate_episodes(
    engine: Engine,
    fmt: EpisodeFormat,
    scorer,
    rows: list[dict],
    sampling: SamplingParams,
    max_turns: int,
    max_episode_tokens: int,
    chunk: int = 64,
) -> dict:
    """One greedy episode per row (row ``i`` seeds its environment's ``reset`` with ``i``: the same games every
    time), rewarded by ``scorer`` (a :class:`~aha.rollout.scoring.RewardScorer`) as training rewards them. Returns
    ``accuracy`` (the share whose total reward is above 0.5: a success), ``reward_mean``, and the episodes' counters
    (``env/turns``, ``env/tool_calls``, ``env/tool_errors``, ... as :func:`aha.env.episode_metrics` names them)."""
    greedy = replace(sampling, greedy=True)
    totals: list[float] = []
    turns: list[int] = []
    episodes: list[Episode] = []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        seeds = list(range(start, start + len(part)))
        played = run_episodes(engine, fmt, part, 1, greedy, max_turns, max_episode_tokens, seeds)
        envs = [e.env for e in played.episodes]
        scores = scorer(part, played.rollouts, transcripts=played.transcripts, environments=envs, group_size=1)
        totals += scores.rewards
        turns += [sum(m["role"] == "assistant" for m in t) for t in played.transcripts]
        episodes += played.episodes
    n = max(1, len(totals))
    return {
        "accuracy": sum(t > 0.5 for t in totals) / n,
        "reward_mean": sum(totals) / n,
        **episode_metrics(episodes),
        "env/turns": sum(turns) / n,  # the model's turns, a last one cut by a cap too
    }
