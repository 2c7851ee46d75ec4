"""LightningDataModule over ultralytics' own YOLO dataset, augmentation pipeline and collate."""

from __future__ import annotations

from copy import copy

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler
from ultralytics.data.build import build_yolo_dataset, seed_worker

from kdprune.data.checks import split_image_files


def prepare_batch(batch: dict, device: torch.device | str | None = None) -> dict:
    """A loader's batch as models take it: every tensor on ``device`` (None: where it is) and ``img`` as float in
    [0, 1] (loaders give uint8, as ultralytics' do: 4x less to move). A new dict (a cached batch is not changed); a
    batch already prepared is returned as is. The one place images are normalised: Lightning's loops get it through
    ``on_after_batch_transfer``, every other loop over a loader calls it."""
    out = {k: (v.to(device) if device is not None and isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    if out["img"].dtype == torch.uint8:
        out["img"] = out["img"].float() / 255
    return out


class YOLODataModule(L.LightningDataModule):
    """Train/val loaders exactly as ultralytics' detection trainer builds them (mosaic etc. for train, rect val).

    ``hyp`` is ultralytics' hyperparameter namespace (imgsz, augmentation, cache, ...). Workers are not persistent:
    each epoch forks them from the main process's dataset, so closing mosaic there reaches them at the next epoch
    (ultralytics' InfiniteDataLoader needs an explicit reset for the same reason).
    """

    def __init__(self, data: dict, hyp, batch: int, val_batch: int, workers: int, seed: int, stride: int = 32):
        super().__init__()
        self.data, self.hyp = data, hyp
        self.batch, self.val_batch, self.workers, self.seed, self.stride = batch, val_batch, workers, seed, stride
        self.train_set = self.val_set = None
        self.mosaic_closed = False

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = build_yolo_dataset(self.hyp, self.data["train"], self.batch, self.data, mode="train",
                                                stride=self.stride)
        if self.val_set is None:
            self.val_set = build_yolo_dataset(self.hyp, self.data["val"], self.val_batch, self.data, mode="val",
                                              rect=True, stride=self.stride)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        return prepare_batch(batch)  # on the device already: normalising there moves 4x fewer bytes

    def skipped_images(self) -> dict[str, int]:
        """Images ultralytics dropped as unreadable or corrupt, per split (files found minus files kept)."""
        out = {}
        for split, ds in (("train", self.train_set), ("val", self.val_set)):
            if ds is not None:
                out[split] = len(split_image_files(self.data[split])) - len(ds.im_files)
        return out

    def close_mosaic(self) -> None:
        """Switch off mosaic/mixup/cutmix/copy-paste for the final epochs, as ultralytics' trainer does.

        ``YOLODataset.close_mosaic`` rebuilds the transforms from the hyp it is given and zeroes its augmentation
        fields, so it gets a copy (ultralytics passes ``copy(self.args)`` too).
        """
        if not self.mosaic_closed and hasattr(self.train_set, "close_mosaic"):
            self.train_set.close_mosaic(hyp=copy(self.hyp))
            self.mosaic_closed = True

    def _loader(self, ds, batch: int, train: bool, shard: bool = True) -> DataLoader:
        world = self.trainer.world_size if self.trainer is not None and shard else 1
        rank = self.trainer.global_rank if world > 1 else 0
        g = torch.Generator()
        g.manual_seed(self.seed)
        sampler = None
        if train:
            sampler = _EpochShuffle(ds, g, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        elif world > 1:  # we set use_distributed_sampler=False: val shards must not be padded with duplicates
            sampler = _ContiguousSampler(len(ds), world, rank)
        workers = min(self.workers, len(ds) // max(batch, 1) or 0)
        return DataLoader(
            ds, batch_size=min(batch, len(ds)), shuffle=False, sampler=sampler,
            num_workers=workers, pin_memory=torch.cuda.is_available(), collate_fn=ds.collate_fn,
            worker_init_fn=seed_worker, generator=g, drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch, train=True)

    def val_dataloader(self, shard: bool = True) -> DataLoader:
        """This rank's slice of the val set under DDP; with ``shard=False`` all of it (the final evaluation)."""
        return self._loader(self.val_set, self.val_batch, train=False, shard=shard)


class _EpochShuffle(DistributedSampler):
    """DistributedSampler's shuffle, a function of (seed, epoch) (one replica when not under DDP). Lightning calls
    ``set_epoch`` before each epoch's loader is iterated; it also re-seeds the loader's generator (the workers' base
    seed) and empties ultralytics' mosaic buffer, so epoch k draws the same batches and augmentations whether the run
    went through epochs 0..k-1 or was resumed from a checkpoint of epoch k-1."""

    def __init__(self, ds, generator: torch.Generator, **kw):
        super().__init__(ds, **kw)
        self.generator = generator

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.generator.manual_seed(self.seed + epoch)
        reset_mosaic_buffer(self.dataset)


def reset_mosaic_buffer(ds) -> None:
    """Empty a YOLO dataset's mosaic buffer (the recently loaded images mosaic draws partners from): with workers=0 it
    would otherwise carry from one epoch into the next, and a resumed run would start with another one."""
    if not hasattr(ds, "buffer"):
        return
    # images held only because they are in the buffer (ultralytics' BaseDataset.load_image)
    if getattr(ds, "cache", None) != "ram":
        for j in ds.buffer:
            ds.ims[j], ds.im_hw0[j], ds.im_hw[j] = None, None, None
    ds.buffer.clear()


class _ContiguousSampler(torch.utils.data.Sampler):
    """Each rank gets one contiguous, unpadded slice (rect batches keep their shapes; no duplicate images)."""

    def __init__(self, n: int, world: int, rank: int):
        per = -(-n // world)
        self.idx = list(range(rank * per, min(n, (rank + 1) * per)))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self):
        return len(self.idx)


def square_val_loader(data: dict, hyp, imgsz: int, workers: int = 0) -> DataLoader:
    """The val split of ``data`` as ultralytics' val dataset builds it, letterboxed to ``imgsz x imgsz``, batch 1,
    in file order. ``hyp`` is the run's ultralytics namespace (``kdprune.build.hyp_from_cfg``); it is not modified."""
    hyp = copy(hyp)
    hyp.imgsz, hyp.rect = int(imgsz), False
    ds = build_yolo_dataset(hyp, data["val"], 1, data, mode="val", rect=False, stride=32)
    return DataLoader(ds, batch_size=1, shuffle=False, num_workers=workers, collate_fn=ds.collate_fn,
                      pin_memory=False, drop_last=False)
