"""Training data: sources (image folders, Hugging Face datasets, webdataset shards, built-in scenes),
cleaning with per-reason counts, and the shared teacher/student crop."""
from distill.data.augment import CropParams, apply_crop, crop_generator, sample_crop
from distill.data.build import build_dataset
from distill.data.loader import make_dataloader
from distill.data.sample import CAPTION_KEYS, DataStats, Sample

__all__ = ["CAPTION_KEYS", "CropParams", "DataStats", "Sample", "apply_crop", "build_dataset", "crop_generator",
           "make_dataloader", "sample_crop"]
