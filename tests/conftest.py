"""Suite-wide settings: one intra-op thread per process.

The suite's tensors are tiny, so torch's thread pool costs more than it gains, and the
tests that start child processes (DataLoader workers, distributed ranks) would
oversubscribe the two cores of a CI machine. Child processes inherit OMP_NUM_THREADS.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """A cache folder holding the embedded default patch files, packed once per session."""
    from cinn_sr.default_data import default_patches

    folder = tmp_path_factory.mktemp("cache")
    default_patches(4, folder)
    return folder
