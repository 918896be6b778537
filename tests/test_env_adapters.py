"""aha.env's adapters: a class written for TRL's ``environment_factory`` runs unchanged (loaded from its file, with a
reward function from the same file), ``tools=`` functions, gym-style classes returning gymnasium's 5-tuple or
OpenEnv's ``StepResult``, style detection, and every refusal in one line."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from aha.env import EnvError, build_environment, detect_style, episode_metrics

# An in-process Wordle-like game in TRL's documented environment_factory shape, as a user writes it for GRPOTrainer.
WORDLE = textwrap.dedent('''
    class WordleEnv:
        """Guess a secret five-letter word; each guess is answered letter by letter."""

        def __init__(self):
            self.secret = ""
            self.guesses = []
            self.won = False

        def reset(self, **kwargs) -> str | None:
            self.secret = kwargs["secret"]
            self.guesses = []
            self.won = False
            return "Guess the five-letter word with the guess tool."

        def guess(self, word: str) -> str:
            """Guess the secret word.

            Args:
                word: A five-letter word in lowercase.

            Returns:
                One letter per position: G (right place), Y (elsewhere in the word), X (not in the word).
            """
            if len(word) != 5 or not word.isalpha():
                raise ValueError(f"{word!r} is not a five-letter word")
            self.guesses.append(word)
            self.won = word == self.secret
            return "".join("G" if a == b else "Y" if a in self.secret else "X" for a, b in zip(word, self.secret))

        def get_reward(self) -> float:
            return 1.0 if self.won else 0.0

        def _letters(self):  # private: not a tool
            return set(self.secret)


    def solved(prompts, completions, environments, **kwargs):
        return [1.0 if isinstance(env, WordleEnv) and env.won else 0.0 for env in environments]
''')


def call(name: str, **arguments) -> str:
    import json

    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


@pytest.fixture
def wordle_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_env.py"
    path.write_text(WORDLE)
    return path


def test_a_trl_environment_class_runs_unchanged_from_its_file(wordle_file):
    from aha.rewards.specs import resolve_reward

    env = build_environment(f"{wordle_file}:WordleEnv")
    assert (env.style, env.name, [t.name for t in env.tools]) == ("tools", "WordleEnv", ["guess"])
    assert "guess" in env.system_prompt() and "<tool_call>" in env.system_prompt()
    assert "WordleEnv" in env.summary() and "Hermes" in env.summary()
    episodes = env.episodes(2)
    assert episodes[0].env is not episodes[1].env  # one instance per episode
    row = {"prompt": [{"role": "user", "content": "Play."}], "secret": "crane"}
    assert episodes[0].start(row) == "Guess the five-letter word with the guess tool."
    assert episodes[1].start({**row, "secret": "slate"}) is not None

    turn = episodes[0].respond("I'll try. " + call("guess", word="trace"))
    assert turn.messages == [{"role": "tool", "name": "guess", "content": "XGGYG"}] and not turn.done
    turn = episodes[0].respond(call("guess", word="crane"))
    assert turn.messages[0]["content"] == "GGGGG"
    turn = episodes[0].respond("The word is crane.")  # no call: the episode ends
    assert turn.done and turn.messages == [] and episodes[0].done

    # the user's reward function, from the same file, sees the same class
    reward = resolve_reward(f"{wordle_file}:solved")
    assert reward([], [], environments=[e.env for e in episodes]) == [1.0, 0.0]
    own = env.reward_function()  # get_reward, as TRL adds it (named after the class)
    assert own.__name__ == "WordleEnv" and own(environments=[e.env for e in episodes]) == [1.0, 0.0]
    assert episodes[0].tool_calls == 2 and episodes[0].calls_by_tool["guess"] == 2 and episodes[0].turns == 3


def test_a_batch_of_episodes_answers_at_once(wordle_file):
    from aha.env import respond_all, with_observation

    env = build_environment(f"{wordle_file}:WordleEnv")
    episodes = env.episodes(4)
    secrets = ["crane", "slate", "crane", "pious"]
    prompts = [
        with_observation([{"role": "user", "content": "Play. "}], e.start({"secret": s}))
        for e, s in zip(episodes, secrets)
    ]
    assert prompts[0][0]["content"] == "Play. Guess the five-letter word with the guess tool."
    turns = respond_all(episodes, [call("guess", word="crane")] * 3 + ["no call"], workers=2)
    assert [t.messages[0]["content"] if t.messages else None for t in turns] == ["GGGGG", "XXGXG", "GGGGG", None]
    assert [e.done for e in episodes] == [False, False, False, True]


def test_instances_are_pooled_across_batches_as_trl_does(wordle_file):
    built = []

    class Counted:
        def __init__(self):
            built.append(self)

        def reset(self, **row):
            return None

        def noop(self) -> str:
            """Do nothing."""
            return "ok"

    env = build_environment(Counted)
    assert len(built) == 1  # the probe
    first = env.episodes(3)
    assert len(built) == 3 and first[0].env is built[0]
    again = env.episodes(2)
    assert len(built) == 3 and [e.env for e in again] == built[:2]


def test_tool_functions_alone_are_stateless_tools():
    def multiply(a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: The first factor.
            b: The second factor.
        """
        return a * b

    env = build_environment(tools=[multiply, "calculator"])
    assert [t.name for t in env.tools] == ["multiply", "calculator"] and env.style == "tools"
    [episode] = env.episodes(1)
    assert episode.start({"prompt": "What is 12 * 34?"}) is None and episode.env is None
    turn = episode.respond(call("multiply", a=12, b=34) + call("calculator", expression="12 * 34 + 0.5"))
    assert [m["content"] for m in turn.messages] == ["408", "408.5"] and turn.tool_calls == 2
    assert episode.respond("408").done
    assert env.reward_function() is None


def test_tools_beside_a_trl_class(wordle_file):
    def hint(letter: str) -> str:
        """Say whether a letter is a vowel.

        Args:
            letter: One letter.
        """
        return str(letter in "aeiou")

    env = build_environment(f"{wordle_file}:WordleEnv", tools=[hint])
    assert [t.name for t in env.tools] == ["guess", "hint"]
    [episode] = env.episodes(1)
    episode.start({"secret": "crane"})
    assert episode.respond(call("hint", letter="a")).messages[0]["content"] == "True"


class CountTo:
    """Gymnasium's shape: reset(*, seed, options) -> (obs, info); step -> (obs, reward, terminated, truncated, info)."""

    def reset(self, *, seed=None, options=None):
        self.seed, self.goal, self.n = seed, options["goal"], 0
        return f"Count to {self.goal}, one number a turn.", {}

    def step(self, action):
        right = action.strip() == str(self.n + 1)
        self.n += right
        return f"at {self.n}", 1.0 if right else -0.5, self.n >= self.goal, False, {}

    def render(self):  # (gym's lifecycle methods do not make it TRL-style)
        return ""


@dataclass
class EchoObservation:
    text: str
    done: bool = False
    reward: float | None = None


@dataclass
class StepResult:  # OpenEnv's client type
    observation: EchoObservation
    reward: float | None = None
    done: bool = False


class Echo:
    """OpenEnv's shape: reset and step return a StepResult whose observation carries the text."""

    def reset(self, seed=None, **row):
        self.turns = 0
        return StepResult(EchoObservation(f"say {row['word']}"))

    def step(self, action):
        self.turns += 1
        return StepResult(EchoObservation(f"you said {action}"), reward=0.25, done=self.turns == 2)

    def close(self):
        pass


def test_gym_style_with_gymnasiums_five_tuple():
    env = build_environment(CountTo)
    assert env.style == "gym" and env.tools == [] and env.system_prompt() is None
    [episode] = env.episodes(1)
    assert episode.start({"prompt": "count", "goal": 2}, seed=7) == "Count to 2, one number a turn."
    assert episode.env.seed == 7  # the seed reaches reset; the row arrives as options
    turns = [episode.respond(text) for text in ["1", "3", "2"]]
    assert [(t.messages, t.reward, t.done) for t in turns] == [
        ([{"role": "user", "content": "at 1"}], 1.0, False),
        ([{"role": "user", "content": "at 1"}], -0.5, False),
        ([{"role": "user", "content": "at 2"}], 1.0, True),
    ]
    assert episode.reward == 1.5 and episode.turns == 3
    assert episode.respond("4").done and episode.turns == 3  # (done: nothing more happens)
    assert env.reward_function()(environments=[episode.env]) == [1.5]


def test_gym_style_with_openenvs_step_result():
    env = build_environment(Echo)
    assert env.style == "gym"
    episodes = env.episodes(2)
    assert episodes[0].start({"word": "hi"}, seed=1) == "say hi"
    episodes[1].start({"word": "yo"}, seed=2)
    assert episodes[0].respond("hi").messages == [{"role": "user", "content": "you said hi"}]
    last = episodes[0].respond("hi!")
    assert last.done and last.reward == 0.25 and episodes[0].reward == 0.5
    metrics = episode_metrics(episodes)
    assert metrics["env/turns"] == 1.0 and metrics["env/done"] == 0.5 and metrics["env/reward"] == 0.25
    assert "env/tool_calls" not in metrics


def test_a_step_that_raises_ends_its_episode_and_is_counted():
    class Broken(Echo):
        def step(self, action):
            raise RuntimeError("lost connection")

    [episode] = build_environment(Broken).episodes(1)
    episode.start({"word": "x"})
    turn = episode.respond("x")
    assert turn.done and turn.errors == ["step_raised"] and episode.errors["step_raised"] == 1


def test_a_reset_that_raises_stops_the_run_with_one_line_naming_the_row(wordle_file):
    [episode] = build_environment(f"{wordle_file}:WordleEnv").episodes(1)
    with pytest.raises(EnvError) as info:
        episode.start({"prompt": "play", "word": "crane"}, row_index=17)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("env WordleEnv: reset raised on row 17 {'prompt': 'play', 'word': 'crane'}: KeyError")


def test_style_is_detected_and_can_be_overridden():
    class OnlyStep:
        def reset(self, **row):
            return None

        def step(self, direction: str) -> str:
            """Take a step.

            Args:
                direction: north, south, east or west.
            """
            return f"you went {direction}"

    assert detect_style(CountTo) == "gym" and detect_style(Echo) == "gym" and detect_style(OnlyStep) == "gym"
    env = build_environment(OnlyStep, style="tools")
    assert env.style == "tools" and [t.name for t in env.tools] == ["step"]
    [episode] = env.episodes(1)
    episode.start({})
    assert episode.respond(call("step", direction="north")).messages[0]["content"] == "you went north"


class NoReset:
    def step(self, action):
        return action


class NeedsArgs:
    def __init__(self, size):
        self.size = size

    def reset(self, **row):
        return None


class Undocumented:
    def reset(self, **row):
        return None

    def move(self, x):
        return x


def add(a: int, b: int) -> int:
    """Add.

    Args:
        a: One.
        b: Two.
    """
    return a + b


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"factory": NoReset}, "NoReset fits no environment shape: expected TRL's environment_factory shape"),
        ({"factory": NeedsArgs}, "NeedsArgs.__init__ needs size, but an environment is built with no arguments"),
        ({"factory": add}, "a function with parameters (a, b) is not an environment"),
        ({"factory": 42}, "expected a class, got int"),
        (
            {"factory": Undocumented},
            "tool Undocumented.move: Cannot generate JSON schema for move because it has no docstring",
        ),
        ({"factory": "chess"}, "unknown environment 'chess'; built-ins: guess_number"),
        ({"factory": "no_such_file.py:Env"}, "file not found"),
        ({"factory": "json:NoSuchClass"}, "module 'json' has no 'NoSuchClass'"),
        ({"factory": "no_such_module_xyz:Env"}, "cannot import module 'no_such_module_xyz'"),
        ({"factory": CountTo, "style": "tools"}, "tool CountTo.render:"),
        ({"factory": NoReset, "style": "gym"}, "NoReset has no reset (gym-style needs both)"),
        ({"factory": CountTo, "tools": [add]}, "env.tools cannot go with the gym-style CountTo"),
        ({"factory": CountTo, "style": "agent"}, "env.style must be one of auto, tools, gym"),
        ({}, "give env.factory (a class) or env.tools (functions)"),
        ({"tools": [add], "tool_timeout_s": 0}, "env.tool_timeout_s must be a positive number of seconds"),
        ({"tools": [CountTo]}, "CountTo is a class; tools are functions"),
        ({"tools": ["abacus"]}, "unknown tool 'abacus'; built-ins: calculator, python"),
        ({"tools": [add, add]}, "two tools are named 'add'"),
        ({"tools": [lambda x: x]}, "a tool needs type hints and a Google-style docstring"),
    ],
)
def test_shapes_that_fit_nothing_are_refused_in_one_line(kwargs, expected):
    with pytest.raises(EnvError) as info:
        build_environment(**kwargs)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_factory_that_raises_is_one_line():
    class Boom:
        def __init__(self):
            raise OSError("no display")

        def reset(self, **row):
            return None

    with pytest.raises(EnvError, match=r"building an instance raised OSError: no display$"):
        build_environment(Boom)


def test_a_module_spec_and_a_factory_function():
    env = build_environment("aha.env.games:GuessNumber")
    assert env.style == "gym" and env.name == "GuessNumber"
    env = build_environment(lambda: Echo())
    assert env.style == "gym" and env.name == "Echo"
