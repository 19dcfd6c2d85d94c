"""Suite-wide settings: one intra-op thread per process.

The suite's tensors are tiny, so torch's thread pool costs more than it gains, and the
tests that start child processes (DataLoader workers, distributed ranks) would
oversubscribe the two cores of a CI machine. Child processes inherit OMP_NUM_THREADS.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
