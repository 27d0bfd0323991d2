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
import shutil
import subprocess

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
    # line comments end at the newline (re.S is for the block comments only)
    return "\n".join(re.findall(r"//[^\n]*|/\*.*?\*/", text, re.S))


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


CELL_KINDS = re.compile(r"^\s*X\((\w+),\s*(\w+)\)", re.M)


def cell_list():
    """(kind, struct) of every entry of cells.h's RNNFAST_CELLS."""
    with open(os.path.join(CSRC, "core", "cells.h"), encoding="utf-8") as f:
        text = f.read()
    body = text[text.index("#define RNNFAST_CELLS(X)"):]
    body = body[: body.index("\n\n")]
    return CELL_KINDS.findall(body)


def test_cell_list_is_read():
    # guards the test below against a parser that finds nothing
    assert ("rnn_relu", "RnnReluCell") in cell_list() and len(cell_list()) >= 5


# The LSTM projection (lstm_proj: LstmCell with loop.h's projection hook, args.h's kLstmProjSlots) is
# the one op written out by name, so its cell may be named where the projection is.
PROJECTION_CELL = ("lstm", "LstmCell")


@pytest.mark.parametrize("path", sources("", "core", "cpu", "cuda", "kernels"), ids=rel)
def test_only_cells_h_names_a_cell(path):
    # a cell is its struct and its RNNFAST_CELLS entry: no other C++ file names it (the CellKind
    # enum, the kind tables, entry points, registrations and schemas are generated from the list)
    if rel(path) == "csrc/core/cells.h":
        return
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"//[^\n]*|/\*.*?\*/", "", f.read(), flags=re.S)  # code, not comments
    named = sorted({w for entry in cell_list() if entry != PROJECTION_CELL for w in entry
                    if re.search(rf"\b{w}(_forward|_backward)?\b", text)})
    assert not named, f"{rel(path)} names cells {named}: add a cell through csrc/core/cells.h's RNNFAST_CELLS"


TOY_CELL = """
struct RnnLinearCell {  // a cell added the documented way: its struct and its RNNFAST_CELLS entry
  static constexpr CellKind kind = CellKind::rnn_linear;
  static constexpr const char* name = "rnn_linear";
  enum Gate : int { kGateA };
  enum Slot : int { kNumSlots };
  static constexpr CellTraits traits{1, kNumSlots, 1, 1, -1, -1, -1, false, false};
  template <class S>
  RNNFAST_HOST_DEVICE static void forward(S& s, Phase<0>) { s.set_h(s.x(kGateA) + s.h(kGateA)); }
  template <class S>
  RNNFAST_HOST_DEVICE static void backward(S& s, Phase<0>) { s.set_dg(kGateA, s.dh()); }
};
"""

TOY_MAIN = r"""
#include <cstdio>
#include "cells.h"
using namespace rnnfast::core;
struct Gates {
  template <class Cell>
  int run() const { return Cell::traits.gates; }
};
int main() {
  for_each_cell([](auto tag) {
    using Cell = typename decltype(tag)::type;
    std::printf("%s %d %d %d %d\n", Cell::name, static_cast<int>(Cell::kind), has_own_op<Cell>() ? 1 : 0,
                has_option<Cell>() ? 1 : 0, traits_of(Cell::kind).slots);
  });
  std::printf("gates %d\n", for_cell(CellKind::rnn_linear, Gates{}));
}
"""


def test_a_new_cell_is_its_struct_and_one_entry(tmp_path):
    # cells.h with one more struct and one more RNNFAST_CELLS line, nothing else: the generated
    # CellKind, traits_of, for_cell and for_each_cell (what the op entry points, registrations and
    # schemas are built from) know it, and it gets ops of its own
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    assert cxx, "a C++ compiler is needed (the extension itself is built with one)"
    with open(os.path.join(CSRC, "core", "cells.h"), encoding="utf-8") as f:
        text = f.read()
    last = "  X(lstm, LstmCell)\n"
    assert last in text and text.count("// ---- Generated from RNNFAST_CELLS") == 1
    text = text.replace(last, "  X(lstm, LstmCell) \\\n  X(rnn_linear, RnnLinearCell)\n")
    text = text.replace("// ---- Generated from RNNFAST_CELLS", TOY_CELL + "\n// ---- Generated from RNNFAST_CELLS")
    (tmp_path / "cells.h").write_text(text)
    (tmp_path / "main.cpp").write_text(TOY_MAIN)
    exe = str(tmp_path / "toy")
    subprocess.run([cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", str(tmp_path / "main.cpp"), "-o", exe],
                   check=True)
    lines = subprocess.run([exe], check=True, capture_output=True, text=True).stdout.splitlines()
    rows = [line.split() for line in lines[:-1]]
    assert [r[0] for r in rows] == ["rnn_tanh", "rnn_relu", "gru", "gru", "lstm", "rnn_linear"]
    assert rows[-1] == ["rnn_linear", str(len(cell_list())), "1", "0", "0"]
    assert ["gru", "3", "0", "0", "4"] in rows  # gru_reset_before: a CellKind, no op of its own
    assert lines[-1] == "gates 1"
