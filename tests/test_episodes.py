"""aha.rollout.episodes and the RL loop with environments: multi-turn episodes played in batched turns, the model's
tokens masked in and the environment's out, the sampler's logprobs equal to a training pass's across turns, and the
shapes users already write (TRL's environment_factory class, tools=, gym 5-tuples, OpenEnv step objects) training
unchanged."""

from __future__ import annotations

import json
import string
import textwrap

import pytest
import torch

from aha.algos.losses import aggregate_loss, policy_loss
from aha.config import load_config
from aha.env import build_environment
from aha.models import build_tiny
from aha.rl import train_rl
from aha.rl.forward import policy_forward
from aha.rollout import SamplingParams, pack_rollouts
from aha.rollout.episodes import EpisodeFormat, run_episodes
from aha.rollout.hf import HFEngine
from aha.track.metrics import read_metrics

TINY_ENV = "tiny:layers=1,hidden=32,heads=2,ff=64,ctx=1024"
DIGITS = [str(d) for d in range(10)]  # a turn ends at its first digit: a guess


def _played(seed: int = 0, rows=None, group_size: int = 3, env=None):
    torch.manual_seed(seed)
    model, tok = build_tiny(TINY_ENV, string.printable[:94] + " \n", seed)
    model.eval()
    fmt = EpisodeFormat(tok, "plain", env or build_environment("guess_number"))
    rows = rows or [{"prompt": "Guess: ", "low": 1, "high": 9, "target": 7}, {"prompt": "Guess: ", "low": 1, "high": 9}]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=40, stop=DIGITS)
    batch = run_episodes(
        HFEngine(model, tok, torch.device("cpu"), None), fmt, rows, group_size, sampling, 5, 600, [1] * 6
    )
    return model, tok, batch


def test_turns_alternate_and_only_the_models_tokens_are_masked_in():
    _, tok, batch = _played()
    roll = batch.rollouts
    multi = [i for i, t in enumerate(batch.transcripts) if sum(m["role"] == "assistant" for m in t) >= 2]
    assert multi, "no episode reached a second turn"
    for i in multi:
        mask = roll.completion_mask[i]
        assert 0 in mask[mask.index(1) : len(mask) - mask[::-1].index(1)]  # env tokens between the model's turns
        env_text = tok.decode([t for t, m in zip(roll.completion_ids[i], mask) if m == 0])
        assert any(word in env_text for word in ("Higher.", "Lower.", "Correct!", "Answer with"))
        roles = [m["role"] for m in batch.transcripts[i]]
        assert roles[0] == "assistant" and all(a != b for a, b in zip(roles, roles[1:]))  # assistant, user, ...
        assert all(lp == 0.0 for lp, m in zip(roll.logprobs[i], mask) if m == 0)
    solved = [ep for ep in batch.episodes if ep.env.solved]
    assert all(ep.reward == 1.0 and ep.done for ep in solved)


def test_sampler_logprobs_equal_a_training_pass_across_turns():
    model, tok, batch = _played(seed=1)
    t = pack_rollouts(batch.rollouts, tok.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        logp, _, _ = policy_forward(model, None, t["input_ids"], t["attention_mask"], t["mask"].shape[1], 1.0)
    on = t["mask"].bool()
    assert on.sum() > 0 and (~on & (t["attention_mask"][:, -on.shape[1] :] == 1)).any()  # env tokens are present
    assert torch.allclose(logp[on], t["sampler_logp"][on], atol=1e-4), (logp[on] - t["sampler_logp"][on]).abs().max()


class ReEncoding(HFEngine):
    """The engine without its turn cache: each turn encodes the episode's whole context again."""

    keeps_turn_cache = False


@pytest.mark.parametrize("greedy", [True, False])
def test_the_turn_cache_plays_the_same_episodes_as_re_encoding_each_turn_and_encodes_less(greedy):
    model, tok = build_tiny(TINY_ENV, string.printable[:94] + " \n", 3)
    model.eval()
    encoded = []
    model.register_forward_pre_hook(
        lambda m, args, kwargs: encoded.append(kwargs["input_ids"].numel()), with_kwargs=True
    )
    rows = [{"prompt": "Guess: ", "low": 1, "high": 9, "target": t} for t in (2, 7, 5)]
    # a turn ends at its first character but a space (so the untrained model's turns end, greedy too)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=12, stop=[*string.printable[:94], "\n"], greedy=greedy)
    played, cost = [], []
    for engine in (HFEngine, ReEncoding):
        torch.manual_seed(0)
        encoded.clear()
        fmt = EpisodeFormat(tok, "plain", build_environment("guess_number"))
        played.append(run_episodes(engine(model, tok, torch.device("cpu"), None), fmt, rows, 2, sampling, 6, 400))
        cost.append(sum(encoded))
    kept, fresh = (p.rollouts for p in played)
    assert kept.completion_ids == fresh.completion_ids and kept.completion_mask == fresh.completion_mask
    assert max(len(t) for t in played[0].transcripts) >= 5  # several turns: the cache was carried across them
    for a, b in zip(kept.logprobs, fresh.logprobs):
        assert a == pytest.approx(b, abs=1e-5)
    assert cost[0] < cost[1] / 2, cost  # tokens run through the model: the answers only, not every context again


def test_environment_tokens_get_no_gradient():
    _, tok, batch = _played(seed=2)
    t = pack_rollouts(batch.rollouts, tok.pad_token_id, torch.device("cpu"))
    logp = (t["sampler_logp"] - 0.1).requires_grad_(True)
    adv = torch.randn(len(batch.rollouts))
    per_token, _ = policy_loss("clip")(logp, t["sampler_logp"], adv, t["mask"], epsilon_low=0.2, epsilon_high=0.2)
    aggregate_loss(per_token, t["mask"], "dapo", 40, len(adv), t["mask"].sum().item()).backward()
    env = (t["mask"] == 0) & (t["attention_mask"][:, -t["mask"].shape[1] :] == 1)
    assert env.any() and torch.all(logp.grad[env] == 0)
    assert logp.grad[t["mask"].bool()].abs().sum() > 0


GYM_SHAPES = textwrap.dedent('''
    import random

    class Tuple5:
        """gymnasium's step: (observation, reward, terminated, truncated, info)."""
        def reset(self, seed=None, **row):
            self.target = random.Random(seed).randint(0, 9)
            return "Pick a digit: "
        def step(self, action):
            hit = str(self.target) in action
            return ("yes" if hit else "no"), float(hit), hit, False, {}

    class Result:
        def __init__(self, observation, reward, done):
            self.observation, self.reward, self.done = observation, reward, done

    class StepObject:
        """OpenEnv's step: an object with .observation, .reward, .done."""
        def reset(self, seed=None, **row):
            self.n = 0
            return "Say three digits, one a turn: "
        def step(self, action):
            self.n += 1
            return Result("next", 0.5, self.n >= 3)
''')


@pytest.mark.parametrize("shape", ["Tuple5", "StepObject"])
def test_gym_shapes_play_episodes_and_sum_their_rewards(tmp_path, shape):
    (tmp_path / "games.py").write_text(GYM_SHAPES)
    env = build_environment(f"{tmp_path / 'games.py'}:{shape}")
    _, _, batch = _played(rows=[{"prompt": "go: "}], group_size=4, env=env)
    own = env.reward_function()([], [], environments=[ep.env for ep in batch.episodes])
    assert own == [ep.reward for ep in batch.episodes]
    if shape == "StepObject":  # three turns, 0.5 each, where no cap cut the episode
        assert all(ep.reward == 1.5 for ep, cut in zip(batch.episodes, batch.truncated) if not cut)
        assert any(not cut for cut in batch.truncated)


WORDLE = textwrap.dedent('''
    class WordleEnv:
        """Guess a secret five-letter word; each guess is answered letter by letter."""

        def __init__(self):
            self.secret, self.won = "", False

        def reset(self, **kwargs) -> str | None:
            self.secret, self.won = kwargs["secret"], False
            return "Guess the word."

        def guess(self, word: str) -> str:
            """Guess the secret word.

            Args:
                word: A five-letter word in lowercase.
            """
            self.won = word == self.secret
            return "".join("G" if a == b else "Y" if a in self.secret else "X" for a, b in zip(word, self.secret))

        def get_reward(self) -> float:
            return 1.0 if self.won else 0.0


    def called(prompts, completions, environments, **kwargs):
        return [float(any(m["role"] == "tool" for m in c)) if isinstance(c, list) else float("<tool_call>" in c)
                for c in completions]
''')


def _env_config(tmp_path, write_config, env: dict, rewards=None, steps: int = 2):
    data = tmp_path / "words.jsonl"
    data.write_text("".join(json.dumps({"prompt": "w: ", "secret": w, "answer": w}) + "\n" for w in ["crane", "slate"]))
    extra = {
        "model": {"name": TINY_ENV},
        "task": {"name": "dataset", "path": str(data), "eval_path": str(data)},
        "env": {"max_turns": 3, **env},
        "rollout": {"max_new_tokens": 24, "stop": ["</tool_call>"], "max_episode_tokens": 900},
        "train": {"steps": steps},
        "log": {"eval_every": 0, "save_every": steps},
    }
    if rewards is not None:
        extra["rewards"] = rewards
    return load_config(write_config(extra))


def test_a_trl_environment_class_trains_unchanged(tmp_path, write_config):
    (tmp_path / "wordle.py").write_text(WORDLE)
    cfg = _env_config(tmp_path, write_config, {"factory": f"{tmp_path / 'wordle.py'}:WordleEnv"})
    assert [r.name for r in cfg.rewards] == ["env"]  # its get_reward is the run's reward
    train_rl(cfg, tmp_path / "run")
    steps = [r for r in read_metrics(tmp_path / "run") if r["step"] > 0]
    assert len(steps) == 2 and all("env/turns" in r and "env/tool_calls" in r for r in steps)
    assert all(r["env/turns"] >= 1 for r in steps)
    sample = json.loads((tmp_path / "run" / "samples.jsonl").read_text().splitlines()[0])
    assert isinstance(sample["completion"], list) and sample["completion"][0]["role"] == "assistant"
    assert "Guess the word." in sample["prompt"] or sample["prompt"] == "w: "


def test_tools_functions_and_a_reward_that_reads_the_environments(tmp_path, write_config):
    (tmp_path / "wordle.py").write_text(WORDLE)
    cfg = _env_config(
        tmp_path,
        write_config,
        {"factory": f"{tmp_path / 'wordle.py'}:WordleEnv", "tools": ["calculator"]},
        rewards=[{"name": f"{tmp_path / 'wordle.py'}:called"}, {"name": "env"}],
        steps=1,
    )
    train_rl(cfg, tmp_path / "run")
    (last,) = [r for r in read_metrics(tmp_path / "run") if r["step"] > 0]
    assert "reward/called/mean" in last and "reward/env/mean" in last


def test_an_environment_without_a_reward_of_its_own_needs_named_rewards(tmp_path, write_config):
    from aha.errors import TrainingError

    cfg = _env_config(tmp_path, write_config, {"tools": ["calculator"]}, rewards=[{"name": "env"}], steps=1)
    with pytest.raises(TrainingError, match="has none"):
        train_rl(cfg, tmp_path / "run")


def _guess_config(tmp_path, write_config, steps: int = 4):
    data = tmp_path / "games.jsonl"  # small ranges: a random model wins some, loses others
    data.write_text("".join(json.dumps({"prompt": "Guess: ", "low": 1, "high": 3 + i % 3}) + "\n" for i in range(40)))
    return load_config(
        write_config(
            {
                "model": {"name": TINY_ENV},
                "env": {"factory": "guess_number", "max_turns": 3},
                "rollout": {"max_new_tokens": 6, "stop": DIGITS, "max_episode_tokens": 300},
                "task": {"name": "dataset", "path": str(data), "num_eval": 6},
                "rl": {"beta": 0.04},
                "train": {"steps": steps},
                "log": {"eval_every": 2, "save_every": 2},
            }
        )
    )


def _untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/", "memory/"))} for r in rows]


def test_eval_plays_greedy_episodes_and_a_run_killed_mid_episode_resumes_exactly(tmp_path, write_config, monkeypatch):
    import aha.run
    from aha.env.games import GuessNumber

    cfg = _guess_config(tmp_path, write_config)
    a, b = tmp_path / "a", tmp_path / "b"
    train_rl(cfg, a)
    rows_a = read_metrics(a)
    assert all("eval/accuracy" in r and "eval/env/turns" in r for r in rows_a if r["step"] in (0, 2, 4))
    assert rows_a[-1]["grad_norm"] > 0 and rows_a[-1]["env/turns"] >= 1
    # aha eval plays the same greedy episodes from the saved model: the accuracy the run logged at its last step
    evaluated = aha.evaluate(a / "checkpoints" / "step-4" / "model")
    assert evaluated["n"] == 6 and "env/turns" in evaluated
    assert (evaluated["accuracy"], evaluated["env/turns"]) == (
        rows_a[-1]["eval/accuracy"],
        rows_a[-1]["eval/env/turns"],
    )

    # run B: killed inside an episode (an environment's step) of the batch after its step-2 checkpoint
    saved, real_save, real_step = {}, aha.run.save_checkpoint, GuessNumber.step

    def save(run_dir, step, *args, **kwargs):
        saved[step] = True
        return real_save(run_dir, step, *args, **kwargs)

    def step(self, action):
        if saved.get(2):
            raise KeyboardInterrupt
        return real_step(self, action)

    monkeypatch.setattr(aha.run, "save_checkpoint", save)
    monkeypatch.setattr(GuessNumber, "step", step)
    with pytest.raises(KeyboardInterrupt):
        train_rl(cfg, b)
    monkeypatch.undo()
    train_rl(cfg, b, resume=True)
    assert _untimed(read_metrics(b)) == _untimed(rows_a)


def test_the_readme_environment_example_runs_as_shown(tmp_path, monkeypatch, capsys):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    part = readme[readme.index("## Agents in environments") : readme.index("\n## Train\n")]
    code = re.search(r"```python\n(.*?)```", part, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    turns, calls = map(float, capsys.readouterr().out.strip().splitlines()[-1].split())
    last = read_metrics(tmp_path / "runs" / "counter")[-1]
    assert last["step"] == 2 and (turns, calls) == (last["env/turns"], last["env/tool_calls"]) and turns >= 1


def test_a_reset_that_raises_stops_the_run_with_one_line_naming_the_row(tmp_path, write_config):
    from typer.testing import CliRunner

    from aha.cli import app

    (tmp_path / "bad.py").write_text(
        "class Bad:\n    def reset(self, seed=None, **row):\n        raise KeyError('no board')\n"
        "    def step(self, action):\n        return 'x', 0.0, True, False, {}\n"
    )
    cfg = write_config({"env": {"factory": f"{tmp_path / 'bad.py'}:Bad"}, "model": {"name": TINY_ENV}})
    result = CliRunner().invoke(app, ["train", str(cfg), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "reset" in error[0] and "'prompt'" in error[0] and "no board" in error[0], error
    assert "Traceback" not in result.output


def test_rollouts_keep_the_mask_through_select_and_concat():
    from aha.rollout import Rollouts

    plain = Rollouts([[0]], [[5, 6]], [[-1.0, -1.0]], ["stop"])
    turns = Rollouts([[0]], [[5, 9, 6]], [[-1.0, 0.0, -1.0]], ["stop"], [[1, 0, 1]])
    assert Rollouts([], [], [], []).concat(turns).completion_mask == [[1, 0, 1]]  # (how shards are joined)
    assert plain.concat(turns).completion_mask == [[1, 1], [1, 0, 1]]
    assert plain.concat(plain).completion_mask is None and turns.select([0]).completion_mask == [[1, 0, 1]]
