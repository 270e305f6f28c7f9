"""twinview's core in a plain PyTorch loop: SimCLR on random data, no trainer, no config.

Run: python examples/minimal_simclr.py
"""

import torch

from twinview.methods import build_method
from twinview.nn.backbones import build_backbone

backbone, dim = build_backbone("convnet", in_channels=3)
method = build_method("simclr", backbone, feature_dim=dim, temperature=0.5)
optimizer = torch.optim.SGD(method.param_groups(weight_decay=1e-4), lr=0.1, momentum=0.9)
images = torch.rand(64, 3, 32, 32)  # stand-in for a real dataset

for step in range(20):
    batch = images[torch.randperm(64)[:32]]
    views = [batch + 0.1 * torch.randn_like(batch), batch.flip(-1)]  # stand-in augmentations
    out = method(views)  # StepOutput: loss, detached features, logs
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    method.on_step_end(progress=(step + 1) / 20)  # momentum updates (none for SimCLR)
    print(f"step {step:2d}  loss {out.loss.item():.4f}")
