"""Ultralytics' ModelEMA, and what it needs when the model it follows changes shape."""

from __future__ import annotations

from ultralytics.utils.torch_utils import ModelEMA


def refresh_ema(ema: ModelEMA) -> None:
    """Make ``ema.update`` read the current tensors after channels were removed from the model and its EMA.

    ultralytics 8.4.190 caches the (EMA, model) tensor pairs on the first update (``_pairs``); pruning replaces every
    pruned parameter with a new tensor, so without this the EMA would go on averaging tensors the model no longer uses
    and freeze at its pre-pruning values.
    """
    ema._pairs = None
