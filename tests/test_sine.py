"""The textbook's sequence-model experiment on a noisy sine (rnnfast.sine)."""
import pytest
import torch

from rnnfast.sine import make_features, make_sine_data, run_sine


# Tiny models: one intra-op thread is faster, and spares shared cores OpenMP spinning.
pytestmark = pytest.mark.usefixtures("one_thread")



def test_data_and_features_shapes():
    time, x = make_sine_data(1000, generator=torch.Generator().manual_seed(0))
    assert time.shape == x.shape == (1000,) and time[0] == 1 and time[-1] == 1000
    noise = x - torch.sin(0.01 * time)
    assert 0.17 < noise.std().item() < 0.23  # N(0, 0.2)
    f, y = make_features(x, 4)
    assert f.shape == (996, 4) and y.shape == (996, 1)
    assert torch.equal(f[10], x[10:14]) and y[10, 0] == x[14]
    with pytest.raises(ValueError, match="tau"):
        make_features(x, 0)


def test_run_sine_learns_and_writes_plots(tmp_path):
    rng = torch.get_rng_state()
    r = run_sine(tau=4, epochs=3, out_dir=tmp_path, seed=0)
    assert torch.equal(torch.get_rng_state(), rng), "run_sine must not disturb the global RNG"
    loss = r["train_loss"]
    assert len(loss) == 3 and loss[-1] < loss[0]
    # the label noise has variance 0.04: one-step predictions get close to that floor
    assert 0.03 < r["onestep_mse"] < 0.08
    k = r["kstep_mse"]
    assert sorted(k) == [1, 4, 16, 64]
    assert k[1] == pytest.approx(r["onestep_mse"], rel=0.05)  # same predictions, nearly same range
    assert k[1] < k[16] < k[64]  # errors compound with the horizon
    assert r["multistep_mse"] > 5 * r["onestep_mse"]  # fed-back predictions drift off
    pytest.importorskip("matplotlib")
    assert len(r["plots"]) == 2
    for p in r["plots"]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_run_sine_is_reproducible_and_checks_arguments():
    a = run_sine(epochs=1, seed=3)
    b = run_sine(epochs=1, seed=3)
    assert a["train_loss"] == b["train_loss"] and a["plots"] == []
    with pytest.raises(ValueError, match="epochs"):
        run_sine(epochs=0)
    with pytest.raises(ValueError, match="n_train"):
        run_sine(tau=700)
    with pytest.raises(ValueError, match="steps"):
        run_sine(epochs=1, steps=(1, 100))
