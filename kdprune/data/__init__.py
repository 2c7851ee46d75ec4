"""Datasets: the DataModule over ultralytics' YOLO dataset, the embedded generator, and checks at the edge."""

from kdprune.data.datamodule import YOLODataModule
from kdprune.data.resolve import resolve_data

__all__ = ["YOLODataModule", "resolve_data"]
