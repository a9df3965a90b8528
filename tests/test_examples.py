"""Every example in examples/ runs offline and prints what it promises (smoke tests)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPECT = {
    "quickstart.py": "reloaded identical arrays",
    "contrastive.py": "rather than",
    "gender_bias.py": "pronoun attributed more than the occupation",
    "vmap_functional.py": "in one vmapped call",
    "research_composition.py": "the parameter whose change moves it most",
    "attribute_dataset.py": "reported error(s)",
}


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_example_runs(name, tmp_path):
    args = [sys.executable, os.path.join(ROOT, "examples", name)]
    if name in ("quickstart.py", "attribute_dataset.py"):
        args += ["--out", str(tmp_path)]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert EXPECT[name] in res.stdout, res.stdout[-2000:]
