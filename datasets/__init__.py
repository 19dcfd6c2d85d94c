"""Data for super-resolution: MATLAB-style resizing, HDF5 patch packing, torch Datasets."""

from .errors import OptionError
from .folder_pairs import ImageFolderPairs, crop_to_multiple
from .images import (
    IMAGE_SUFFIXES,
    ImageReadError,
    check_scaled_size,
    list_images,
    lr_files_by_stem,
    png_bytes,
    read_image,
    scaled_size_mismatch,
    to_tensor,
    write_image,
)
from .pack import PATCH_FILE_FORMAT, PackSummary, collect_sources, pack_images
from .patch_dataset import PatchDataset, PatchFileError, read_patch_attrs
from .photos import SAMPLE_PHOTO_FILES, sample_photo_paths, sample_photos
from .png_rows import PngRowWriter
from .resize import imresize, resize_weights

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFolderPairs",
    "ImageReadError",
    "OptionError",
    "PATCH_FILE_FORMAT",
    "PackSummary",
    "PatchDataset",
    "PatchFileError",
    "PngRowWriter",
    "SAMPLE_PHOTO_FILES",
    "check_scaled_size",
    "collect_sources",
    "crop_to_multiple",
    "imresize",
    "list_images",
    "lr_files_by_stem",
    "pack_images",
    "png_bytes",
    "read_image",
    "read_patch_attrs",
    "resize_weights",
    "sample_photo_paths",
    "sample_photos",
    "scaled_size_mismatch",
    "to_tensor",
    "write_image",
]
