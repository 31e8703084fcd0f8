"""benchmarks/chaos.py, one small round of each kind: a kill under load, a model file
truncated under the live daemon, and both copies of the token file damaged across a restart."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import chaos


def test_one_small_chaos_round_loses_nothing_and_crashes_nothing(tmp_path: Path) -> None:
    scenarios = ["kill9-under-load", "nest-truncated-live", "tokens-both-corrupt"]
    rounds, final = chaos.run(tmp_path, scenarios, passes=1,
                              options=chaos.Options(threads=2, load_s=0.5, seed=0))
    total = chaos.summary(rounds, final)
    assert not chaos.failed(total), chaos.report(rounds, total)
    assert total["apps_checked"] > 0 and total["requests"] > 0
    truncated = rounds[1]
    assert truncated.during is not None and truncated.during.wrong_state == 0
    codes = [(e.event, e.code) for r in rounds for e in r.exits]
    assert ("kill -9", -9) in codes and ("start", 2) in codes  # the refusal, in one line
    refusal = next(e.line for r in rounds for e in r.exits if e.event == "start")
    assert refusal.startswith("nestdnn: error: app token file")
    assert [e.code for e in final] == [-15]
