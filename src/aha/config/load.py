"""Loading a :class:`RunConfig` from YAML plus ``--set a.b=c`` overrides, saving it, describing its fields.

A wrong field ends in one line naming it and what is allowed (:class:`ConfigError`), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from aha.config.run import RunConfig
from aha.config.sections import ConfigError
from aha.errors import first_line

# ----------------------------------------------------------------------------- loading


RENAMED = {  # old name → new: an old key is one line saying so
    "sft.warmup_steps": "sft.imitation_steps",
    "sft.warmup_lr": "sft.imitation_lr",
    "log.eval_reward": "task.eval_reward",
    "log.reflection_phrases": "task.reflection_phrases",
}
RENAMED_VALUES = {("stage", "grpo"): "rl", ("task.name", "jsonl"): "dataset"}  # pre-release names, refused by name


def _format_error(err: ValidationError) -> str:
    """One line per problem: ``rl.betta: unknown field (allowed: beta, mu, ...)``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        loc = loc if loc.isprintable() else repr(loc)  # a key with a line break stays on the line
        if e["type"] == "extra_forbidden" and loc in RENAMED:
            lines.append(f"{loc} was renamed to {RENAMED[loc]}")
        elif e["type"] == "extra_forbidden":
            parent = _model_at(RunConfig, e["loc"][:-1])
            allowed = ", ".join(parent.model_fields) if parent is not None else "?"
            lines.append(f"{loc}: unknown field (allowed: {allowed})")
        elif isinstance(e.get("input"), str) and (loc, e["input"]) in RENAMED_VALUES:
            lines.append(f"{loc}: {e['input']!r} was renamed to {RENAMED_VALUES[loc, e['input']]!r}")
        else:
            msg = e["msg"].replace("Value error, ", "")
            lines.append(f"{loc}: {msg} (got {e.get('input')!r})" if loc else msg)
    return "config error: " + "; ".join(lines)


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        found = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if found is None:
            return None
        model = found
    return model


# what PyYAML raises on text it cannot read: bad syntax; a date that does not exist (2020-13-45: ValueError); nesting
# deeper than Python's recursion limit
YAML_ERRORS = (yaml.YAMLError, ValueError, RecursionError)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'rl.beta=0.04'`` → ``(['rl', 'beta'], 0.04)``; the value is parsed as YAML (so lists and bools work)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set rl.beta=0.04")
    key, value = text.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(value) if value.strip() else None
    except YAML_ERRORS as e:
        raise ConfigError(
            f"--set {text!r}: the value is not valid YAML ({first_line(e)}); quote a value meant as text"
        ) from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise ConfigError(f"--set {text!r}: {part} is not a section")
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **defaults: Any) -> RunConfig:
    """Read YAML (optional), apply ``a.b=c`` overrides, validate. Raises :class:`ConfigError` with one line."""
    data: dict = dict(defaults)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except YAML_ERRORS as e:
            raise ConfigError(f"{path}: not valid YAML ({first_line(e)})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        data.update(relative_to(loaded, path.parent))
    data = apply_overrides(data, overrides or [])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


_PATH_FIELDS = (
    ("task", "path"),
    ("task", "eval_path"),
    ("sft", "path"),
    ("reward_model", "path"),
    ("reward_model", "eval_path"),
    ("critic", "init_from"),
    ("model", "name"),
    ("init_from",),
)
_REWARD_REFS = (("guard", "gold"), ("guard", "proxy"), ("guard", "disagreement"), ("task", "eval_reward"))


def _near(value: Any, base: Path) -> Any:
    """``value`` as the path next to the config file, where it is a relative path found there and not in the
    working directory; otherwise unchanged."""
    if not isinstance(value, str) or not value or value.startswith(("hf:", "tiny", "smollm2")):
        return value
    candidate = Path(value).expanduser()
    if candidate.is_absolute() or candidate.exists() or not (base / candidate).exists():
        return value
    return str((base / candidate).resolve())


def _near_spec(spec: Any, base: Path) -> Any:
    """A reward spec whose file (``file.py:fn``, ``rm:DIR``) lies next to the config file, made absolute."""
    if not isinstance(spec, str):
        return spec
    if spec.startswith("rm:"):
        return "rm:" + _near(spec[3:], base)
    target, sep, attr = spec.rpartition(":")
    if sep and (target.endswith(".py") or "/" in target):
        return f"{_near(target, base)}:{attr}"
    return spec


def relative_to(data: dict, base: Path) -> dict:
    """A config mapping whose relative paths (data files, reward files, model dirs) are looked up next to the config
    file first, then in the working directory (a recipe runs from anywhere; --set values stay relative to the
    working directory). A reward spec made absolute is renamed everywhere the config names it."""
    import copy

    data = copy.deepcopy(data)
    for keys in _PATH_FIELDS:
        section: Any = data
        for key in keys[:-1]:
            section = section.get(key) if isinstance(section, dict) else None
        if isinstance(section, dict) and keys[-1] in section:
            section[keys[-1]] = _near(section[keys[-1]], base)
    renamed = {}
    for spec in data["rewards"] if isinstance(data.get("rewards"), list) else []:  # (validation names a non-list)
        if isinstance(spec, dict) and "name" in spec:
            new = _near_spec(spec["name"], base)
            renamed[spec["name"]], spec["name"] = new, new
    for section, key in _REWARD_REFS:
        part = data.get(section)
        if isinstance(part, dict) and isinstance(part.get(key), str):
            part[key] = renamed.get(part[key], _near_spec(part[key], base))
    return data


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def describe(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """Flatten the schema into ``(dotted.name, default, description)`` rows for ``aha config show``."""
    rows = []
    for name, field in model.model_fields.items():
        sub = _model_at(model, (name,))
        if sub is not None and name != "rewards":
            rows.extend(describe(sub, f"{prefix}{name}."))
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = [d.model_dump() if isinstance(d, BaseModel) else d for d in default]
        rows.append((prefix + name, repr(default), field.description or ""))
    return rows
