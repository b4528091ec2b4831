"""IDA-L's support-set regressor (SSR): two fully connected layers with a ReLU, trained with
MSE to predict a face's density term from its embedding alone (backbone frozen), so IDA needs
no anchor set at run time.

The target is the log-space density term in cosine units, v = logsumexp(tau s) / tau
(= -log F / tau, between the nearest anchor's cosine and that plus log(k)/tau): F spans many
orders of magnitude at the large tau dlib needs, its log does not. Targets are standardised
with the training mean/std, stored as buffers in the state_dict.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerank._util.checkpoint import load_checkpoint, load_into, read_config
from facerank.errors import ModelFileError

KIND = "ida-l"
DEFAULT_CHECKPOINT = "ida-l-dlib-halfA"


class SSR(torch.nn.Module):
    """(N, D) embeddings -> (N,) predicted v = -log F / tau."""

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, 1))
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised prediction (what the MSE is taken on)."""
        return self.net(x).squeeze(-1)

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """x (N, D) float32 -> (N,) float64 v in cosine units.

        Two numpy matmuls, not a torch call: with the torch forward, a calibrated LFW gallery
        search took 9.2 ms at p50, with this 1.4 ms (uncalibrated 0.7-0.9 ms; benchmarks.
        calibrate speed, two runs on the busy shared machine; one probe alone: 0.15 ms).
        """
        l1, l2 = self.net[0], self.net[2]
        h = np.ascontiguousarray(x, dtype=np.float32) @ l1.weight.detach().numpy().T
        h = np.maximum(h + l1.bias.detach().numpy(), 0.0)
        z = (h @ l2.weight.detach().numpy().T)[:, 0] + float(l2.bias)
        return z.astype(np.float64) * float(self.std) + float(self.mean)


def default_checkpoint() -> Path:
    """The bundled checkpoint (dlib features, trained on LFW identity half A =
    `identity_fold` True)."""
    with resources.as_file(resources.files("facerank.calibrate") / "defaults"
                           / f"{DEFAULT_CHECKPOINT}.pt") as p:
        return Path(p)


def load_ssr(path: str | Path | None, backbone: str | None = None
             ) -> tuple[SSR, dict[str, Any], Path]:
    """(model, config, path) of an IDA-L checkpoint; refuses another backbone or a bad file."""
    p = Path(path) if path is not None else default_checkpoint()
    config = read_config(p)
    try:
        dim, hidden = int(config["dim"]), int(config["hidden"])
        float(config["tau"]), int(config["k"])
    except (KeyError, TypeError, ValueError):
        raise ModelFileError(f"{p}: IDA-L config lacks dim/hidden/tau/k; retrain it with "
                             "`facerank train ida-l`") from None
    state, config = load_checkpoint(p, KIND, backbone)
    model = SSR(dim, hidden)
    load_into(model, state, p)
    return model, config, p


def train_ssr(x: np.ndarray, v: np.ndarray, hidden: int = 256, epochs: int = 300,
              lr: float = 1e-3, batch: int = 512, seed: int = 0,
              progress: bool = True) -> tuple[SSR, list[float]]:
    """Fit the SSR on x (N, D) -> v (N,) with Adam + MSE (standardised targets); losses/epoch."""
    from facerank._util.progress import progress_bar

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = SSR(x.shape[1], hidden)
    mean, std = float(v.mean()), float(v.std() + 1e-12)
    model.mean.fill_(mean)
    model.std.fill_(std)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    zt = torch.from_numpy(((v - mean) / std).astype(np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    losses: list[float] = []
    model.train()
    with progress_bar(progress, "training IDA-L", epochs) as advance:
        for _ in range(epochs):
            perm = torch.randperm(len(xt), generator=g)
            total = 0.0
            for s in range(0, len(xt), batch):
                idx = perm[s : s + batch]
                loss = torch.nn.functional.mse_loss(model(xt[idx]), zt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            sched.step()
            losses.append(total / len(xt))
            advance(1)
    model.eval()
    return model, losses


def r2(pred: np.ndarray, target: np.ndarray) -> float:
    """Coefficient of determination of predictions against targets."""
    ss = float(((target - target.mean()) ** 2).sum())
    return 1.0 - float(((pred - target) ** 2).sum()) / max(ss, 1e-300)
