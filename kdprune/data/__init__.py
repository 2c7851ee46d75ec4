"""Datasets: the DataModule over ultralytics' YOLO dataset, the embedded generator, and checks at the edge."""

from kdprune.data.datamodule import YOLODataModule, prepare_batch, square_val_loader
from kdprune.data.resolve import resolve_data
from kdprune.data.stats import class_counts, data_fingerprint

__all__ = ["YOLODataModule", "class_counts", "data_fingerprint", "prepare_batch", "resolve_data", "square_val_loader"]
