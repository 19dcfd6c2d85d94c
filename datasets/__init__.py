"""Data for super-resolution: MATLAB-style resizing, HDF5 patch packing, torch Datasets."""

from .images import IMAGE_SUFFIXES, ImageReadError, list_images, read_image, write_image
from .photos import SAMPLE_PHOTO_FILES, sample_photo_paths, sample_photos
from .resize import imresize, resize_weights

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "SAMPLE_PHOTO_FILES",
    "imresize",
    "list_images",
    "read_image",
    "resize_weights",
    "sample_photo_paths",
    "sample_photos",
    "write_image",
]
