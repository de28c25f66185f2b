"""Negative control for tests/test_pretrain.py's DDP test, started by torchrun in place of
``-m svt.pretrain``: DistributedDataParallel is replaced by the bare module, so every rank
steps on its own local gradients. All else (process group, loss and centre all-reduce,
checkpoint gathering) stays. Not a test module: pytest does not collect it."""

import sys

import torch.nn.parallel

torch.nn.parallel.DistributedDataParallel = lambda module, **kwargs: module

from svt import pretrain  # noqa: E402  (after the patch: it looks DDP up at call time anyway)

if __name__ == "__main__":
    sys.exit(pretrain.main())
