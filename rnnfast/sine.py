"""The textbook's "Sequence models" experiment: an autoregressive MLP on a noisy sine wave.

x_t = sin(0.01 t) + N(0, 0.2), t = 1..1000. Each example's features are the last `tau` values
(x_{t-tau}, ..., x_{t-1}) and its label is x_t. A two-layer MLP is trained on the first 600 examples;
then it predicts

- one step ahead from true observations (good), and
- many steps ahead from t = n_train + tau on, feeding its own predictions back (errors compound and the
  prediction decays to a constant),
- k steps ahead for k = 1, 4, 16, 64 (quality drops as k grows).

run_sine() returns the losses and writes two PNGs (when matplotlib is installed).
"""
import os

import torch
from torch import nn

__all__ = ["make_sine_data", "make_features", "run_sine"]


def make_sine_data(T=1000, noise=0.2, generator=None):
    """time = 1..T and x = sin(0.01 * time) + N(0, noise)."""
    time = torch.arange(1, T + 1, dtype=torch.float32)
    x = torch.sin(0.01 * time) + torch.normal(0.0, noise, (T,), generator=generator)
    return time, x


def make_features(x, tau):
    """features[i] = x[i : i + tau], labels[i] = x[i + tau]: shapes (T - tau, tau) and (T - tau, 1)."""
    T = x.numel()
    if not 1 <= tau < T:
        raise ValueError(f"tau must be in [1, {T - 1}], got {tau}")
    features = torch.stack([x[i:T - tau + i] for i in range(tau)], dim=1)
    labels = x[tau:].reshape(-1, 1)
    return features, labels


def _mlp(tau):
    net = nn.Sequential(nn.Linear(tau, 10), nn.ReLU(), nn.Linear(10, 1))
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
    return net


def _plot(path, xlabel, series, xlim):
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone
    fig = Figure(figsize=(6, 3))
    ax = fig.add_subplot()
    for (t, y, label) in series:
        ax.plot(t.numpy(), y.detach().numpy(), label=label, linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("x")
    ax.set_xlim(*xlim)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run_sine(tau=4, epochs=5, out_dir=None, seed=0, T=1000, n_train=600, batch_size=16, lr=0.01,
             max_steps=64, steps=(1, 4, 16, 64)):
    """Train the MLP with Adam and MSE loss; returns a dict of losses (and the PNG paths it wrote).

    Keys: 'train_loss' (mean MSE on the training examples after each epoch), 'onestep_mse' (one-step
    predictions on the test examples), 'multistep_mse' (test range, predictions fed back),
    'kstep_mse' ({k: mse of k-step-ahead predictions}), 'plots' (paths, empty when out_dir is None or
    matplotlib is missing). Seeding is local: the caller's global RNG is left untouched.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if not tau < n_train < T - tau:
        raise ValueError(f"need tau < n_train < T - tau, got tau={tau}, n_train={n_train}, T={T}")
    if any(k < 1 or k > max_steps for k in steps):
        raise ValueError(f"steps must lie in [1, max_steps={max_steps}], got {steps}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        time, x = make_sine_data(T)
        features, labels = make_features(x, tau)
        net = _mlp(tau)
        loss = nn.MSELoss()
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        train_x, train_y = features[:n_train], labels[:n_train]
        train_loss = []
        for _ in range(epochs):
            for idx in torch.randperm(n_train).split(batch_size):
                optimizer.zero_grad()
                l = loss(net(train_x[idx]), train_y[idx])
                l.backward()
                optimizer.step()
            with torch.no_grad():
                train_loss.append(loss(net(train_x), train_y).item())

    with torch.no_grad():
        # One-step-ahead: every input is a true observation.
        onestep = net(features)
        onestep_mse = loss(onestep[n_train:], labels[n_train:]).item()
        # Multi-step from n_train + tau on: inputs become the model's own earlier predictions.
        multistep = torch.zeros(T)
        multistep[:n_train + tau] = x[:n_train + tau]
        for i in range(n_train + tau, T):
            multistep[i] = net(multistep[i - tau:i].reshape(1, -1)).squeeze()
        multistep_mse = ((multistep[n_train + tau:] - x[n_train + tau:]) ** 2).mean().item()
        # k-step-ahead for all start points at once: columns 0..tau-1 are observations, column
        # tau + i - 1 is the (i)-step-ahead prediction built from columns i-1 .. tau+i-2.
        n = T - tau - max_steps + 1
        kf = torch.zeros(n, tau + max_steps)
        for i in range(tau):
            kf[:, i] = x[i:i + n]
        for i in range(tau, tau + max_steps):
            kf[:, i] = net(kf[:, i - tau:i]).reshape(-1)
        kstep_mse = {k: ((kf[:, tau + k - 1] - x[tau + k - 1:tau + k - 1 + n]) ** 2).mean().item()
                     for k in steps}

    plots = []
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            import warnings
            warnings.warn("matplotlib is not installed: no sine plots written", stacklevel=2)
        else:
            p1 = os.path.join(out_dir, "sine_predictions.png")
            _plot(p1, "time", [(time, x, "data"),
                               (time[tau:], onestep.reshape(-1), "1-step preds"),
                               (time[n_train + tau:], multistep[n_train + tau:], "multistep preds")],
                  (1, T))
            p2 = os.path.join(out_dir, "sine_kstep.png")
            _plot(p2, "time", [(time[tau + k - 1:tau + k - 1 + n], kf[:, tau + k - 1], f"{k}-step preds")
                               for k in steps], (5, T))
            plots = [p1, p2]
    return {"train_loss": train_loss, "onestep_mse": onestep_mse, "multistep_mse": multistep_mse,
            "kstep_mse": kstep_mse, "plots": plots}
