"""PatchDataset and ImageFolderPairs: workers, augmentation alignment, refusals, LR making."""

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cinn_sr.datasets import (
    ImageFolderPairs,
    PatchDataset,
    PatchFileError,
    imresize,
    pack_images,
    read_image,
    sample_photo_paths,
    write_image,
)


def to_uint8(tensor: torch.Tensor) -> torch.Tensor:
    return torch.floor(tensor * 255 + 0.5).to(torch.uint8)


@pytest.fixture(scope="module")
def patch_file(tmp_path_factory):
    paths = [path for _, path in sample_photo_paths()][:4]
    out = tmp_path_factory.mktemp("patches") / "photos.h5"
    pack_images(paths, out, scale=4, patch=64, per_image=6, progress=False)
    return out


def test_items_are_float_chw_in_unit_range(patch_file):
    dataset = PatchDataset(patch_file, augment=False, scale=4)
    assert len(dataset) == 24 and (dataset.scale, dataset.patch) == (4, 64)
    assert dataset.attrs["degradation"] == "bicubic"
    hr, lr = dataset[5]
    assert hr.shape == (3, 64, 64) and lr.shape == (3, 16, 16)
    assert hr.dtype == lr.dtype == torch.float32
    assert 0 <= hr.min() and hr.max() <= 1
    with h5py.File(patch_file) as handle:
        np.testing.assert_array_equal(to_uint8(hr).permute(1, 2, 0).numpy(), handle["hr"][5])
        np.testing.assert_array_equal(to_uint8(lr).permute(1, 2, 0).numpy(), handle["lr"][5])
    with pytest.raises(IndexError):
        dataset[24]


def test_two_workers_give_the_same_patches(patch_file):
    dataset = PatchDataset(patch_file, augment=False)
    dataset[0]  # a handle opened in the parent must not leak into the workers
    serial = list(DataLoader(dataset, batch_size=5, num_workers=0))
    parallel = list(DataLoader(dataset, batch_size=5, num_workers=2))
    assert len(serial) == len(parallel) == 5
    for (hr_a, lr_a), (hr_b, lr_b) in zip(serial, parallel, strict=True):
        assert torch.equal(hr_a, hr_b) and torch.equal(lr_a, lr_b)


def test_augmentation_keeps_hr_and_lr_aligned(patch_file):
    torch.manual_seed(0)
    dataset = PatchDataset(patch_file, augment=True)
    plain = PatchDataset(patch_file, augment=False)
    changed = 0
    for index in range(len(dataset)):
        hr, lr = dataset[index]
        assert torch.equal(to_uint8(lr), imresize(to_uint8(hr), 1 / 4))
        original, _ = plain[index]
        variants = [original.rot90(k, (1, 2)) for k in range(4)]
        variants += [v.flip(-1) for v in variants]
        assert any(torch.equal(hr, v) for v in variants)
        changed += not torch.equal(hr, original)
    assert changed >= len(dataset) // 2


def test_refuses_files_that_are_not_patch_files(tmp_path, patch_file):
    png = write_image(tmp_path / "image.png", np.zeros((8, 8, 3), np.uint8))
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["hr"] = np.zeros((1, 8, 8, 3), np.uint8)
    cases = [
        (png, "image.png is not a cinn-sr patch file"),
        (other, "other.h5 is not a cinn-sr patch file"),
        (tmp_path / "missing.h5", "no such file"),
    ]
    for path, message in cases:
        with pytest.raises(PatchFileError, match=message) as error:
            PatchDataset(path)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="holds x4 patches, but x8 was asked for"):
        PatchDataset(patch_file, scale=8)


def test_image_folder_pairs_bicubic_and_div2k_names(tmp_path):
    astronaut, chelsea = (read_image(path) for _, path in sample_photo_paths()[:2])
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    write_image(hr_dir / "0801.png", astronaut[:203, :198])
    write_image(hr_dir / "0802.png", chelsea)
    made = ImageFolderPairs(hr_dir, scale=4)
    assert len(made) == 2
    name, hr, lr = made[0]
    assert name == "0801" and hr.shape == (3, 200, 196) and lr.shape == (3, 50, 49)
    hr_uint8 = to_uint8(hr).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(hr_uint8, astronaut[:200, :196])
    np.testing.assert_array_equal(to_uint8(lr).permute(1, 2, 0).numpy(), imresize(hr_uint8, 1 / 4))

    real_lr = np.random.default_rng(0).integers(0, 256, size=(50, 49, 3), dtype=np.uint8)
    write_image(lr_dir / "0801x4.png", real_lr)
    write_image(lr_dir / "0802x4.png", np.zeros((75, 112, 3), np.uint8))
    paired = ImageFolderPairs(hr_dir, scale=4, lr_dir=lr_dir)
    _, _, lr = paired[0]
    np.testing.assert_array_equal(to_uint8(lr).permute(1, 2, 0).numpy(), real_lr)
    assert paired[1][2].shape == (3, 75, 112)

    (lr_dir / "0802x4.png").unlink()
    with pytest.raises(ValueError, match="no LR image for 1 HR images \\(0802.png\\)"):
        ImageFolderPairs(hr_dir, scale=4, lr_dir=lr_dir)
    with pytest.raises(ValueError, match="no images found"):
        ImageFolderPairs(tmp_path / "lr" / "..", scale=4)


def _broken_copy(source, target, edit):
    """A copy of the patch file `source` at `target` with `edit(handle)` applied."""
    import shutil

    shutil.copy(source, target)
    with h5py.File(target, "r+") as handle:
        edit(handle)
    return target


def _replace(name, values):
    def edit(handle):
        del handle[name]
        handle[name] = values

    return edit


def test_refuses_patch_files_whose_layout_does_not_fit(tmp_path, patch_file):
    from click.testing import CliRunner

    from cli import main

    with h5py.File(patch_file) as handle:
        hr, lr = handle["hr"][:], handle["lr"][:]
    cases = {
        "float": (_replace("hr", hr.astype(np.float32) / 255), "dataset 'hr' must be uint8"),
        "lr_size": (_replace("lr", lr[:, :-1, :-1]), "dataset 'lr' must be N x 16 x 16 x 3"),
        "counts": (_replace("lr", lr[:-1]), "hold different numbers of patches"),
        "three_d": (_replace("hr", hr[..., 0]), "dataset 'hr' must be N x 64 x 64 x 3"),
        "rgba": (_replace("hr", np.concatenate([hr, hr[..., :1]], -1)), "x 64 x 64 x 4"),
        "no_scale": (
            lambda h: h.attrs.__delitem__("scale"), "attribute 'scale' must be a positive"
        ),
        "bad_patch": (lambda h: h.attrs.__setitem__("patch", 62), "'patch' 62 is not a multiple"),
    }
    assert hr.shape[1:] == (64, 64, 3) and len(hr) > 4
    for name, (edit, message) in cases.items():
        path = _broken_copy(patch_file, tmp_path / f"{name}.h5", edit)
        with pytest.raises(PatchFileError, match=message) as error:
            PatchDataset(path)
        assert str(error.value).startswith(f"{name}.h5: ") and "\n" not in str(error.value)
    result = CliRunner().invoke(
        main, ["train", str(tmp_path / "float.h5"), "--preset", "tiny-4x", "--iterations", "1",
               "--out", str(tmp_path / "run")],
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith(
        "Error: patch file: float.h5: dataset 'hr' must be uint8"
    )
    assert not (tmp_path / "run").exists()
