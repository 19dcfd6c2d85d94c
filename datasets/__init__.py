"""Data for super-resolution: MATLAB-style resizing, HDF5 patch packing, torch Datasets."""

from .errors import OptionError
from .folder_pairs import ImageFolderPairs, crop_to_multiple
from .images import IMAGE_SUFFIXES, ImageReadError, list_images, read_image, write_image
from .pack import PATCH_FILE_FORMAT, PackSummary, collect_sources, pack_images
from .patch_dataset import PatchDataset, PatchFileError, read_patch_attrs
from .photos import SAMPLE_PHOTO_FILES, sample_photo_paths, sample_photos
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
    "SAMPLE_PHOTO_FILES",
    "collect_sources",
    "crop_to_multiple",
    "imresize",
    "list_images",
    "pack_images",
    "read_image",
    "read_patch_attrs",
    "resize_weights",
    "sample_photo_paths",
    "sample_photos",
    "write_image",
]
