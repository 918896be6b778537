"""``aha label``: serve the ranking app, add and revoke labelers, reissue tokens, back up the database, export
rankings for ``stage: reward_model``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from aha.console import friendly

label_app = typer.Typer(
    no_args_is_help=True,
    help="The ranking app: people rank model outputs in a browser; their rankings train the reward model.",
)

DB_HELP = "The SQLite database (created on first use)."


def read_prompts(path: Path) -> list[dict]:
    """Rows of a prompts JSONL file (``{"prompt": ...}`` plus any columns, kept), or LabelError."""
    from aha.label.store import LabelError, jsonl_rows  # (the store: ~0.1 s, only for the commands that open one)

    rows = jsonl_rows(path, "--prompts", "no prompts in it (one JSON object per line with a 'prompt')")
    for n, row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), (str, list)):
            raise LabelError(f"{path} line {n}: expected an object with a 'prompt' (a text or chat messages)")
    return [row for _, row in rows]


def sample_tasks(
    model_name: str, prompts: list[dict], k: int, max_new_tokens: int, temperature: float, seed: int = 0
) -> list[dict]:
    """K sampled completions per prompt from ``model_name`` with aha's own sampler, as task rows."""
    import torch

    from aha.config import ModelConfig  # (this block: torch and transformers, loaded only to sample)
    from aha.data.templates import render_prompt, resolve_template
    from aha.modeling.device import seed_everything
    from aha.models import load_policy
    from aha.rollout import SamplingParams
    from aha.rollout.hf import sample_completions

    seed_everything(seed)
    model, tok = load_policy(ModelConfig(name=model_name))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    template = resolve_template("auto", tok)
    prompt_ids = [render_prompt(r["prompt"], tok, template) for r in prompts]
    sampling = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens)
    groups = sample_completions(model, tok, prompt_ids, k, sampling, device, batch=16)
    return [
        {
            "prompt": row["prompt"],
            "completions": texts,
            **{key: v for key, v in row.items() if key not in ("prompt", "completions")},
            "model": model_name,
        }
        for row, texts in zip(prompts, groups)
    ]


@label_app.command()
@friendly
def serve(
    db: Path = typer.Option(Path("rankings.sqlite"), "--db", help=DB_HELP),
    tasks: Path | None = typer.Option(
        None,
        "--tasks",
        help='Tasks JSONL: {"prompt", "completions": [K texts]} '
        "per line, extra columns kept. Imported idempotently (a task already in "
        "--db is not added twice). With --model: where the sampled tasks are "
        "written (default: next to --db).",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Sample the K completions first with this model "
        "(a checkpoint's model dir, an HF dir, .gguf, alias or tiny spec).",
    ),
    prompts: Path | None = typer.Option(
        None, "--prompts", help='With --model: prompts JSONL ({"prompt"} per line, extra columns kept).'
    ),
    k: int = typer.Option(4, "--k", min=2, max=26, help="With --model: completions sampled per prompt."),
    max_new_tokens: int = typer.Option(128, min=1, help="With --model: the longest completion, in tokens."),
    temperature: float = typer.Option(1.0, min=0.01, help="With --model: sampling temperature."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 to let other machines in)."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    per_task: int | None = typer.Option(
        None,
        "--per-task",
        min=1,
        help="Labelers per task (default: the value stored in --db, else 1). 2+ gives inter-annotator agreement.",
    ),
    secure_cookies: bool = typer.Option(
        False, help="Always mark the login cookies Secure (they are anyway on a request that came over HTTPS)."
    ),
    trust_proxy: list[str] = typer.Option(
        [],
        "--trust-proxy",
        help="The address of your TLS proxy (repeatable, "
        "e.g. 127.0.0.1): its X-Forwarded-Proto and X-Forwarded-For are honoured "
        "(HTTPS cookies, the client's address for the rate limit); nobody else's.",
    ),
    session_hours: float = typer.Option(
        12.0, min=0.01, help="A login lasts this long, then the page asks for the token again."
    ),
    logins_per_minute: int = typer.Option(
        10,
        min=1,
        help="Logins allowed per client address per minute (failed "
        "token checks: 3× that); past it: HTTP 429 with Retry-After.",
    ),
):
    """Start the ranking app: the labelers' page at /, the admin page at /admin, the API at /api/."""
    import uvicorn

    from aha.label.app import create_app  # (FastAPI and uvicorn: only to serve)
    from aha.label.schema import SCHEMA_VERSION  # (the store: ~0.1 s, only for the commands that open one)
    from aha.label.store import (
        LabelError,
        Store,
        read_tasks,
    )  # (the store: ~0.1 s, only for the commands that open one)

    if (model is None) != (prompts is None):
        raise LabelError("--model and --prompts go together: the model samples --k completions for each prompt")
    rows = None
    if model is not None:
        assert prompts is not None  # --model and --prompts go together (checked above)
        prompt_rows = read_prompts(prompts)
        t0 = time.perf_counter()
        rows = sample_tasks(model, prompt_rows, k, max_new_tokens, temperature)
        out = tasks or db.with_name(db.stem + "-samples.jsonl")
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        typer.echo(
            f"sampled {k} completions for each of {len(rows)} prompts with {model} "
            f"in {time.perf_counter() - t0:.0f} s → {out}"
        )
    elif tasks is not None:
        rows = read_tasks(tasks)
    existed = db.is_file()
    store = Store(db, session_s=session_hours * 3600)
    if existed and store.schema_before < SCHEMA_VERSION:
        typer.echo(f"upgraded {db} from schema v{store.schema_before} to v{SCHEMA_VERSION} (every row kept)")
    if per_task is not None:
        store.set_per_task(per_task)
    if rows is not None:
        added, present = store.add_tasks(rows)
        typer.echo(f"tasks: {added} added, {present} already in {db}; {store.task_count()} in all")
    elif store.task_count() == 0:
        raise LabelError(f"{db} holds no tasks yet: pass --tasks FILE (or --model CKPT --prompts FILE)")
    token = store.ensure_admin()
    if token:
        typer.echo(f"admin token (shown once, store it): {token}")
    typer.echo(
        f"each task goes to {store.per_task} labeler(s); add labelers with `aha label add-labeler NAME --db {db}`"
    )
    typer.echo(f"serving http://{host}:{port}/  (labelers: /, admin: /admin, log in: /login)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(
            "note: aha label speaks plain HTTP: on a network, put it behind a TLS proxy (Caddy, nginx) and "
            "pass --trust-proxy PROXY_ADDRESS"
        )
    app = create_app(
        db,
        store=store,
        secure_cookies=secure_cookies,
        trusted_proxies=tuple(trust_proxy),
        logins_per_minute=logins_per_minute,
    )
    # proxy_headers=False: uvicorn would trust X-Forwarded-* from 127.0.0.1 on its own; the app decides (--trust-proxy)
    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False)


@label_app.command("add-labeler")
@friendly
def add_labeler(
    name: str = typer.Argument(..., help="The labeler's name (shown on the admin page and in the export)."),
    db: Path = typer.Option(Path("rankings.sqlite"), "--db", help=DB_HELP),
):
    """Create a labeler and print their token (stored only as a hash: keep it)."""
    from aha.label.store import Store  # (the store: ~0.1 s, only for the commands that open one)

    typer.echo(Store(db).add_labeler(name))


@label_app.command()
@friendly
def revoke(
    name: str = typer.Argument(..., help="The labeler to revoke."),
    db: Path = typer.Option(..., "--db", help="The ranking app's SQLite database."),
):
    """Revoke a labeler: their token and login sessions stop working at once (a running server included);
    the rankings they gave stay."""
    changed = _existing_store(db).revoke(name)
    typer.echo(
        f"revoked {name.strip()}: their token no longer works; their rankings stay"
        if changed
        else f"{name.strip()} was already revoked"
    )


@label_app.command("new-token")
@friendly
def new_token(
    name: str | None = typer.Argument(None, help="Whose token to replace (default: the admin's)."),
    db: Path = typer.Option(..., "--db", help="The ranking app's SQLite database."),
):
    """Print a new token for the admin (or NAME); the old one and its login sessions stop working at once."""
    typer.echo(_existing_store(db).new_token(name))


@label_app.command()
@friendly
def backup(
    db: Path = typer.Option(..., "--db", help="The ranking app's SQLite database."),
    out: Path = typer.Option(..., "--out", "-o", help="The copy to write (replaced whole, never half-written)."),
):
    """Copy the database with SQLite's online backup API: safe while `aha label serve` is writing to it."""
    t0 = time.perf_counter()
    counts = _existing_store(db).backup(out)
    typer.echo(
        f"backed up {counts['rankings']} rankings, {counts['tasks']} tasks, {counts['labelers']} labelers "
        f"to {out} in {time.perf_counter() - t0:.1f} s"
    )


def _existing_store(db: Path):
    from aha.label.store import LabelError, Store  # (the store: ~0.1 s, only for the commands that open one)

    if not db.is_file():
        raise LabelError(f"--db {db}: file not found")
    return Store(db)


@label_app.command()
@friendly
def export(
    db: Path = typer.Option(..., "--db", help="The ranking app's SQLite database."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Where to write the JSONL (the ranking format that stage: reward_model reads)."
    ),
):
    """Write every ranking as a row {prompt, completions, ranking (ties nested), labeler, task_id, …}."""
    from aha.label.store import LabelError  # (the store: ~0.1 s, only for the commands that open one)

    store = _existing_store(db)
    n = 0
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as f:
            for row in store.export_rows():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
    except OSError as e:
        raise LabelError(f"--out {out}: cannot write it ({e.strerror or e})") from None
    typer.echo(f"wrote {n} rankings to {out}")
