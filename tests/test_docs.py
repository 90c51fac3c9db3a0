"""Every code block of README.md and docs/*.md runs as shown.

What runs, per Markdown file, in the order of the file:

- every fenced ``python`` block;
- every fenced ``bash`` block whose commands all call ``restartable ...``
  (the command line, on what the blocks before it wrote). Other shell blocks
  (installing packages, running the test suite, a user's own script) are not
  run: they would install or take minutes, and the README's test command is
  what CI runs anyway.

A block whose fence is preceded, on the line before, by ``<!-- excerpt -->``
is skipped; the doc says in its text why it cannot run (a method taken out of
a class, a CUDA device, a flyte cluster). A fence without a language is
refused: mark output and diagrams ``text`` so that no code hides from the
test.

The blocks of one file run one after another in one fresh Python process
(later blocks may use what earlier ones defined), in a temporary working
directory, with ``RESTARTABLE_CACHE`` inside it. Blocks that name an
``s3://`` bucket run against the moto S3 server of ``conftest.py``: the
buckets they name are created empty on it first. A failure names the file and
the line of the failing block, with its traceback (whose line numbers are the
file's).
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from conftest import run_python

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXCERPT = "<!-- excerpt -->"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
BUCKET = re.compile(r"s3://([a-z0-9][a-z0-9.-]{2,62})")
# A string literal that starts an absolute path ("/tmp/run", "/scratch"): examples must not write there.
OUTSIDE = re.compile(r"""["']/(?:tmp|scratch|home|data|mnt|var)\b""")


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, the line of its opening fence, its code (dedented)."""

    lang: str
    line: int
    code: str
    excerpt: bool


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        lang = match["info"].strip().split(" ")[0].lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence) and lines[i].strip().strip(fence[0]) == ""):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        excerpt = start > 0 and lines[start - 1].strip() == EXCERPT
        found.append(Block(lang, start + 1, "\n".join(body) + "\n", excerpt))
        i += 1
    return found


def runs(block: Block) -> bool:
    """Whether the test executes this block (see the module docstring)."""
    if block.excerpt:
        return False
    if block.lang == "python":
        return True
    if block.lang in ("bash", "sh", "shell"):
        commands = [c.strip() for c in block.code.splitlines() if c.strip() and not c.strip().startswith("#")]
        return bool(commands) and all(c.startswith("restartable ") for c in commands)
    return False


# Runs in the fresh process: argv[1] is the Markdown file, argv[2] a JSON list of blocks.
RUNNER = r"""
import json, os, subprocess, sys, time, traceback, types

doc, blocks = sys.argv[1], json.loads(sys.argv[2])
main = types.ModuleType("__main__")
main.__file__ = doc
sys.modules["__main__"] = main  # dataclasses and type hints look their module up here
env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
for block in blocks:
    where = f"{os.path.basename(doc)}:{block['line']}"
    print(f"----- {block['lang']} block at {where}", flush=True)
    started = time.perf_counter()
    if block["lang"] == "python":
        try:
            # Padding with newlines makes the traceback's line numbers the file's.
            exec(compile("\n" * block["line"] + block["code"], doc, "exec"), main.__dict__)
        except BaseException:
            traceback.print_exc()
            print(f"FAILED: the python block at {where}", flush=True)
            sys.exit(1)
    else:
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block["code"]], env=env)
        if done.returncode:
            print(f"FAILED: the bash block at {where} (exit status {done.returncode})", flush=True)
            sys.exit(1)
    print(f"(ran in {time.perf_counter() - started:.2f} s)", flush=True)
"""


def run_blocks(doc: Path, blocks: list[Block], cwd: Path) -> subprocess.CompletedProcess[str]:
    payload = json.dumps([asdict(b) for b in blocks])
    # Forked from an interpreter that imported numpy and torch only: what a
    # reader's fresh interpreter would do, without paying torch's import again.
    return run_python(RUNNER, str(doc), payload, cwd=cwd, timeout=180, check=False, warm=True)


def empty_buckets(names: set[str]) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for name in sorted(names):
        if fs.exists(name):
            fs.rm(name, recursive=True)  # also removes the bucket
        fs.mkdir(name)


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_doc_blocks_run(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    blocks = blocks_of(doc)
    unlabelled = [b.line for b in blocks if not b.lang]
    assert not unlabelled, (
        f"{doc.name}: fenced blocks without a language at lines {unlabelled}; "
        "write ```python for code, ```text for output and diagrams"
    )
    chosen = [b for b in blocks if runs(b)]
    if not chosen:
        return  # diagrams and output only: labelled, nothing to run
    outside = [b.line for b in chosen if OUTSIDE.search(b.code)]
    assert not outside, (
        f"{doc.name}: the blocks at lines {outside} write to an absolute path; "
        "use a relative path or tempfile so that the example stays in its working directory"
    )
    buckets = {name for b in chosen for name in BUCKET.findall(b.code)}
    if buckets:
        request.getfixturevalue("s3_server")
        empty_buckets(buckets)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("RESTARTABLE_CACHE", str(work / ".cache" / "restartable"))
    # The examples' tempfile.mkdtemp() folders go where pytest removes them.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setenv("EARTH2STUDIO_CACHE", str(work / ".cache" / "earth2studio"))
    done = run_blocks(doc, chosen, work)
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED: ")]
    assert done.returncode == 0, (
        f"{doc.name}: {failed[-1] if failed else 'a code block failed'} (exit status {done.returncode})\n"
        f"{done.stdout}\n{done.stderr}"
    )
    ran = done.stdout.count("----- ")
    assert ran == len(chosen), f"{doc.name}: {ran} of {len(chosen)} blocks ran\n{done.stdout}"


# A path in backquotes that starts with one of these names a file or folder of this repository.
REPO_DIRS = ("docs/", "tests/", "examples/", "benchmarks/", "src/")
PACKAGE_DIRS = ("store/", "catalog/", "remote/", "workflows/", "components/", "iterators/")
MENTION = re.compile(r"`([^`\s]+)`")


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_docs_point_only_at_files_in_the_repository(doc: Path):
    text = doc.read_text(encoding="utf-8")
    outside = sorted({m.group(0) for m in re.finditer(r"\S*\.\./\S*", text)})
    assert not outside, f"{doc.name} points outside the repository: {outside}; describe it here instead"
    missing = []
    for name in MENTION.findall(text):
        if name.startswith(REPO_DIRS):
            base = ROOT
        elif name.startswith(PACKAGE_DIRS):
            base = ROOT / "src" / "restartable"
        else:
            continue
        if not (base / name).exists():
            missing.append(name)
    assert not missing, f"{doc.name} names files that this repository does not have: {missing}"


def test_a_failing_block_is_named_by_file_and_line(tmp_path: Path):
    doc = tmp_path / "guide.md"
    doc.write_text(
        "# Guide\n\n"
        "```python\nx = 41\n```\n\n"
        f"{EXCERPT}\n```python\nthis is not python\n```\n\n"
        "```text\nnot run\n```\n\n"
        "```python\nx += 1\nassert x == 41, x\n```\n",
        encoding="utf-8",
    )
    blocks = blocks_of(doc)
    assert [(b.lang, b.line, b.excerpt) for b in blocks] == [
        ("python", 3, False),
        ("python", 8, True),
        ("text", 12, False),
        ("python", 16, False),
    ]
    chosen = [b for b in blocks if runs(b)]
    done = run_blocks(doc, chosen, tmp_path)
    assert done.returncode == 1
    assert "FAILED: the python block at guide.md:16" in done.stdout
    # The traceback points at the failing line of the Markdown file, with its text.
    assert f'File "{doc}", line 18' in done.stderr
    assert "assert x == 41, x" in done.stderr
    assert "AssertionError: 42" in done.stderr
