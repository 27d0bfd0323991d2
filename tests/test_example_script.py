"""A third-party-style training script (tests/scripts/word_language_model.py, in the style of the
public PyTorch word_language_model example) run end to end with only its recurrent layer class
swapped: training, whole-model torch.save / torch.load (weights_only=True), evaluation and
generation. With torch.nn's layers and with rnnfast's, from the same seed: the same initial
weights and dropout masks, so the same losses to float tolerance and the same sampled words."""
import json
import os
import subprocess
import sys

import pytest
import torch

import rnnfast  # noqa: F401  (registers its layers as safe globals, as in the script)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "word_language_model.py")
CORPUS = os.path.join(ROOT, "rnnfast", "data", "timemachine.txt")


def run_script(tmp_path, layers, model):
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():  # a slice of the bundled corpus
        with open(CORPUS, encoding="utf8") as f:
            corpus.write_text(f.read(40_000), encoding="utf8")
    out, save = tmp_path / f"{layers}-{model}.json", tmp_path / f"{layers}-{model}.pt"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, SCRIPT, "--data", str(corpus), "--layers", layers, "--model", model,
                          "--save", str(save), "--out", str(out), "--max-batches", "15"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text()), save


@pytest.mark.slow  # four runs of a training script (~10 s each); runs in CI
@pytest.mark.parametrize("model", ["LSTM", "GRU"])
def test_script_with_layer_swapped_matches_torch_nn(tmp_path, model):
    ref, _ = run_script(tmp_path, "torch", model)
    ours, saved = run_script(tmp_path, "rnnfast", model)
    assert ref["layer_class"] == f"torch.nn.modules.rnn.{model}"
    assert ours["layer_class"] == f"rnnfast.nn.{model}"  # the reloaded model still runs rnnfast
    # nothing of rnnfast's needs allowlisting by the script: `import rnnfast` did it
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(saved)
    assert not [g for g in unsafe if g.startswith("rnnfast")], unsafe
    assert len(ours["train_losses"]) == len(ref["train_losses"]) == 30
    torch.testing.assert_close(ours["train_losses"], ref["train_losses"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["val_losses"], ref["val_losses"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["test_loss"], ref["test_loss"], rtol=1e-5, atol=1e-5)
    assert ours["train_losses"][-1] < ours["train_losses"][0]  # it did learn something
    assert ours["words"] == ref["words"] and len(ours["words"]) == 20
