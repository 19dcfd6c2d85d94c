"""Data for super-resolution: MATLAB-style resizing, HDF5 patch packing, torch Datasets."""
