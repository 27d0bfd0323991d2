"""The C++ tree's room rules (docs/core.md, "Layout"), checked on the sources:

- csrc/core is backend-neutral: it includes nothing of csrc/cpu, csrc/cuda or csrc/kernels (that
  the CUDA side includes nothing of csrc/cpu is tests/test_core_cells.py's);
- a comment cites only files that exist in the repository (no DESIGN.md or CONTRACTS: they live
  outside it);
- one host loop: the backends define no loop over time steps of their own (the walk over steps is
  csrc/core/loop.h's);
- names the C++ side retired stay retired.
"""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def sources(*rooms):
    out = []
    for room in rooms:
        base = os.path.join(CSRC, room) if room else CSRC
        for dirpath, _, files in os.walk(base):
            if not room and dirpath != CSRC:
                continue
            out += [os.path.join(dirpath, f) for f in files if f.endswith((".h", ".cuh", ".cu", ".cpp"))]
    return sorted(out)


def rel(path):
    return os.path.relpath(path, ROOT)


def included_files(path):
    """Repository files that `path` includes with quotes, resolved like the compiler (its folder, then ROOT)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    found = []
    for inc in INCLUDE.findall(text):
        for base in (os.path.dirname(path), ROOT):
            cand = os.path.normpath(os.path.join(base, inc))
            if os.path.isfile(cand):
                found.append(rel(cand))
                break
    return found


def test_rooms_exist():
    for room in ("core", "cpu", "cuda", "kernels"):
        assert sources(room), f"csrc/{room} has no sources"


@pytest.mark.parametrize("path", sources("core"), ids=rel)
def test_core_includes_no_backend(path):
    bad = [f for f in included_files(path) if f.startswith(("csrc/cpu/", "csrc/cuda/", "csrc/kernels/"))]
    assert not bad, f"{rel(path)} includes {bad}: csrc/core must stay backend-neutral"


def test_include_resolver_sees_a_known_include():
    # guards the test above against a resolver that finds nothing
    assert "csrc/core/loop.h" in included_files(os.path.join(CSRC, "cpu", "backend.h"))
    assert "csrc/core/cells.h" in included_files(os.path.join(CSRC, "kernels", "kernels.h"))


CITED = re.compile(r"\b((?:csrc|tests|docs|rnnfast|bench|tools)/[\w./-]*\w)")


def comment_text(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".py"):
        return text  # setup.py: docstrings and comments; code paths there are globs checked below
    if path.endswith("CMakeLists.txt"):
        return "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
    return "\n".join(re.findall(r"//.*|/\*.*?\*/", text, re.S))


CITING = sources("") + sources("core", "cpu", "cuda", "kernels") + [
    os.path.join(ROOT, "setup.py"), os.path.join(ROOT, "CMakeLists.txt"), os.path.join(ROOT, "tests", "cuda_emulation.cpp")]


@pytest.mark.parametrize("path", CITING, ids=rel)
def test_comments_cite_existing_files(path):
    text = comment_text(path)
    assert "DESIGN.md" not in text and "CONTRACTS" not in text, f"{rel(path)} cites a file outside the repository"
    missing = []
    for cited in CITED.findall(text):
        if "*" in cited or cited.endswith("/"):
            continue
        # a citation may name a folder or a file; a trailing ".h's" style possessive is cut by the regex
        if not os.path.exists(os.path.join(ROOT, cited)):
            missing.append(cited)
    assert not missing, f"{rel(path)} cites files that do not exist: {missing}"


STEP_LOOP = re.compile(r"for\s*\(\s*int64_t\s+s\s*=")


@pytest.mark.parametrize("path", sources("cpu", "cuda"), ids=rel)
def test_backends_do_not_walk_time_steps(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert not STEP_LOOP.search(text), f"{rel(path)} walks the time steps itself; that is csrc/core/loop.h's job"


def test_one_loop_walks_the_steps():
    with open(os.path.join(CSRC, "core", "loop.h"), encoding="utf-8") as f:
        assert len(STEP_LOOP.findall(f.read())) == 2  # forward_loop and backward_loop


RETIRED = re.compile(r"\b(forward_no_cell|Fwd3|Bwd6|Bwd7|fptr|mptr|G0|GR|gn|RNN_TANH|RNN_RELU|kRnnTanh|kRnnRelu)\b")


@pytest.mark.parametrize("path", sources("", "core", "cpu", "cuda", "kernels"), ids=rel)
def test_retired_names(path):
    with open(path, encoding="utf-8") as f:
        found = sorted(set(RETIRED.findall(f.read())))
    assert not found, f"{rel(path)} uses retired names {found}"
