"""Training data: sources (image folders, Hugging Face datasets, webdataset shards, built-in scenes),
cleaning with per-reason counts, the shared teacher/student crop and the per-sample draws."""
from distill.data.augment import CropConfig, CropParams, apply_crop, crop_generator, sample_crop
from distill.data.build import build_dataset
from distill.data.captions import CaptionPair
from distill.data.draws import Draws, MaskConfig
from distill.data.loader import make_dataloader
from distill.data.sample import CAPTION_KEYS, DataStats, Sample

__all__ = ["CAPTION_KEYS", "CaptionPair", "CropConfig", "CropParams", "DataStats", "Draws", "MaskConfig", "Sample",
           "apply_crop", "build_dataset", "crop_generator", "make_dataloader", "sample_crop"]
