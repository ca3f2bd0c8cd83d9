"""Each example runs the way its README says (`make example NAME=…`) and checks its result."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("name", "expected"), [
    ("reengagement_list", ["1 unsubscribe request(s)", "the same users"]),
    ("product_usage_to_hubspot", ["request(s) for 625 companies", "600 in the model; 0 differ"]),
])
def test_an_example_runs_as_its_readme_says(tmp_path: Path, name: str,
                                            expected: list[str]) -> None:
    readme = (ROOT / "examples" / name / "README.md").read_text()
    assert f"make example NAME={name}" in readme
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ITERABLE_", "HUBSPOT_"))}
    done = subprocess.run(["make", "-s", "example", f"NAME={name}"], cwd=ROOT,
                          env={**env, "EXAMPLE_WORKDIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for line in expected:
        assert line in done.stdout, done.stdout
    assert "Traceback" not in done.stdout + done.stderr
