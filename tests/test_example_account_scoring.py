"""examples/account_scoring runs the way its README says, from its one command."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "account_scoring"


def test_the_example_runs_with_the_command_its_readme_gives() -> None:
    readme = (EXAMPLE / "README.md").read_text(encoding="utf-8")
    command = re.search(r"```sh\n(examples/account_scoring/run\.sh)\n```", readme)
    assert command is not None, "the README's one command"
    done = subprocess.run([str(ROOT / command.group(1))], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    hour1, hour2 = out.split("== hour 2", 1)
    assert "write_path bulk" in hour1 and "bulk_uploads 1" in hour1
    assert "write_path collections" in hour2
    assert "all 5,000 accounts in the org hold the model's score" in out
    history = subprocess.run([str(ROOT / ".venv" / "bin" / "tidegate"), "runs", "--json",
                              "--project", str(EXAMPLE / ".run")],
                             capture_output=True, text=True, check=True)
    runs = {r["run_id"]: r for r in json.loads(history.stdout)["runs"]}
    assert [runs[i]["status"] for i in (1, 2, 3)] == ["succeeded"] * 3
    assert runs[2]["delivered"]["updated"] == 5000  # hour 1: every score
    assert runs[3]["planned"]["changed"] == runs[3]["delivered"]["updated"] == 100  # hour 2
