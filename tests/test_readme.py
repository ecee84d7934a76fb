"""Every ```python block of README.md runs as written, each in a fresh namespace.

One test per block, named by its line and the heading above it
(``L142-weighted-cross-entropy``); a failure's traceback points at the
README's own lines. A block that truly cannot run here (a GPU, a DDP launch)
starts with the line ``# not run: <reason>`` and is reported as skipped with
that reason. Deprecation warnings raised by a block's own calls (such as the
old ``weights=`` keyword) fail its test: the README shows the current API.
"""
import re
import warnings
from pathlib import Path
from typing import List, NamedTuple

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_RUN = "# not run:"
NAMESPACE = "__readme__"  # the __name__ of each block's namespace (what the warning filter matches)


class Block(NamedTuple):
    heading: str
    line: int  # 1-based README line of the block's first code line
    code: str

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-") or "top"
        return f"L{self.line}-{slug}"


def python_blocks(text: str) -> List[Block]:
    """The ```python fenced blocks of a markdown text, with their headings."""
    blocks, heading = [], ""
    fence, start, body = None, 0, []
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            if stripped.startswith("```"):
                fence, start, body = stripped[3:].strip().lower(), n + 1, []
            elif line.startswith("#"):
                heading = line.lstrip("#").strip()
        elif stripped == "```":
            if fence == "python":
                blocks.append(Block(heading, start, "\n".join(body) + "\n"))
            fence = None
        else:
            body.append(line)
    assert fence is None, "README.md: unclosed code fence"
    return blocks


def run_block(block: Block, filename: str = str(README)) -> dict:
    """Executes one block in a fresh namespace; returns that namespace."""
    first = block.code.lstrip().splitlines()[0] if block.code.strip() else ""
    if first.startswith(NOT_RUN):
        pytest.skip(first[len(NOT_RUN):].strip() or "marked not run")
    code = compile("\n" * (block.line - 1) + block.code, filename, "exec")
    namespace = {"__name__": NAMESPACE}
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=DeprecationWarning, module=NAMESPACE)
        exec(code, namespace)
    return namespace


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs(block):
    run_block(block)


def test_readme_has_its_examples_and_few_unrun_ones():
    assert len(BLOCKS) >= 8, "README.md's python examples were not found"
    not_run = [b.id for b in BLOCKS if b.code.lstrip().startswith(NOT_RUN)]
    assert len(not_run) <= 2, f"too many README blocks marked '{NOT_RUN}': {not_run}"


_SAMPLE = """# Title

```bash
# a shell comment, not a heading
echo hi
```

## Good example

```python
x = 1 + 1
assert x == 2
```

### Broken example

```python
undefined_name + 1
```

```python
# not run: needs a GPU
raise SystemExit("must not run")
```

```python
import warnings
warnings.warn("old keyword", DeprecationWarning)
```
"""


def test_extractor_and_runner_catch_broken_blocks():
    good, broken, skipped, deprecated = python_blocks(_SAMPLE)
    assert (good.heading, good.line, good.id) == ("Good example", 11, "L11-good-example")
    assert broken.heading == "Broken example" and broken.code == "undefined_name + 1\n"
    assert run_block(good)["x"] == 2
    with pytest.raises(NameError) as err:
        run_block(broken, "SAMPLE.md")
    assert err.traceback[-1].lineno + 1 == broken.line  # points at the markdown line
    with pytest.raises(pytest.skip.Exception, match="needs a GPU"):
        run_block(skipped)
    with pytest.raises(DeprecationWarning, match="old keyword"):
        run_block(deprecated)
