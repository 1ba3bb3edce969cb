"""``membound plan audit``: claims above the physical bounds are flagged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from membound.planner.audit import audit, read_claims
from membound.planner.cli import main
from membound.planner.errors import PlannerError
from membound.planner.hardware import HardwareTable

CLAIMS = """model,gpu,precision,batch_size,tokens_per_s,tp,input_len,output_len
llama-3-8b,h100,bf16,1,160,,,
llama-3-8b,h100,bf16,1,400,,,
llama-2-7b,a100,bf16,1,104.9,,,
llama-3-70b,h200,fp8,256,3897,1,128,128
llama-3-8b,h100,bf16,1,215,,,
"""


def test_planted_impossible_claim_is_flagged(tmp_path: Path) -> None:
    path = tmp_path / "claims.csv"
    path.write_text(CLAIMS)
    verdicts = audit(read_claims(path), HardwareTable())
    assert [v.verdict for v in verdicts] == [
        "plausible", "impossible", "plausible", "plausible", "doubtful"
    ]  # fmt: skip
    # batch-1 decode bound = bandwidth / bytes read per token
    assert verdicts[1].bound == "memory"
    assert verdicts[1].bound_tokens_per_s == pytest.approx(3350e9 / 15_009_849_344, rel=1e-3)


def test_audit_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "claims.csv"
    path.write_text(CLAIMS)
    assert main(["plan", "audit", str(path)]) == 1
    assert "IMPOSSIBLE" in capsys.readouterr().out
    assert main(["plan", "audit", str(path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["claims"][1]["verdict"] == "impossible"
    path.write_text("model,gpu,precision,batch_size,tokens_per_s\nllama-3-8b,h100,bf16,1,100\n")
    assert main(["plan", "audit", str(path)]) == 0


def test_bad_claims_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "claims.csv"
    path.write_text("model,gpu\nllama-3-8b,h100\n")
    with pytest.raises(PlannerError, match="lacks column"):
        read_claims(path)
    path.write_text("model,gpu,precision,batch_size,tokens_per_s\nllama-3-8b,h999,bf16,1,1\n")
    assert main(["plan", "audit", str(path)]) == 2
    assert "claims row 2: GPU 'h999' is not known" in capsys.readouterr().err
