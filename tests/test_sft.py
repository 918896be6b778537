"""aha.sft: supervised fine-tuning; what it does with a run directory it is asked to resume."""

from __future__ import annotations

import pytest

from aha.config import load_config
from aha.errors import TrainingError
from aha.sft import train_sft


def test_sft_resume_without_a_checkpoint_raises_and_clears_nothing(tmp_path, write_config):
    data = tmp_path / "sft.jsonl"
    data.write_text('{"prompt": "1+1=", "completion": "2"}\n' * 4)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    cfg = load_config(write_config({"stage": "sft", "sft": {"path": str(data)}}))
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        train_sft(cfg, run, resume=True)
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'
