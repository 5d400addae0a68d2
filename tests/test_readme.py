"""The README's Python snippets run as written, each on its own in a fresh interpreter and an empty
directory. A snippet that needs a file it cannot make (a downloaded checkpoint) starts with a
`# placeholder: <what it needs>` line: it is only compiled. Everything else must run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PLACEHOLDER = "# placeholder:"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the opening fence, code) of every ```python block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            blocks.append((start, "\n".join(body) + "\n"))
        i += 1
    return blocks


BLOCKS = python_blocks(README.read_text())


def test_readme_has_runnable_snippets():
    runnable = [code for _, code in BLOCKS if not code.lstrip().startswith(PLACEHOLDER)]
    assert len(runnable) >= 4, "the README's examples should run as written"
    for line, code in BLOCKS:
        if code.lstrip().startswith(PLACEHOLDER):  # says what it needs, and compiles
            assert code.lstrip().splitlines()[0][len(PLACEHOLDER):].strip(), f"README.md:{line}: say what is needed"
            compile(code, f"README.md:{line}", "exec")


def test_python_api_is_documented():
    text = README.read_text()
    cli = text[text.index("<!-- section:cli -->"):text.index("<!-- /section:cli -->")]
    for name in ("load_predictor", "predict_video"):
        assert re.search(rf"\b{name}\(", cli), f"{name} is not documented in the cli section"


@pytest.mark.slow  # a fresh interpreter per snippet: importing JAX and compiling take most of the time
@pytest.mark.parametrize("line,code", [b for b in BLOCKS if not b[1].lstrip().startswith(PLACEHOLDER)],
                         ids=[f"README.md:{line}" for line, code in BLOCKS if not code.lstrip().startswith(PLACEHOLDER)])
def test_readme_snippet_runs(line, code, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"README.md:{line} failed:\n{result.stderr[-3000:]}"
