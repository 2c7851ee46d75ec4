"""Which config keys a run actually reads: ``recording()`` notes every key looked up on an OmegaConf node (attribute,
item, ``get``, iteration), every node handed whole to ``OmegaConf.to_container`` (all its keys), every
``OmegaConf.select`` path and the keys an interpolation is made of, as dotted full keys (``prune.target.ratio``).
Writing the whole config down (``OmegaConf.to_yaml``: the run dir's config.yaml) is not a read.

The one place that patches omegaconf, and only in tests: OmegaConf has no hook for key access. The patches are
restored on exit; if a later omegaconf renames ``DictConfig._get_impl``, nothing is recorded and every key of
tests/test_config_keys.py fails, loudly, rather than the guard going blind."""

from __future__ import annotations

import re
from contextlib import contextmanager

from omegaconf import DictConfig, ListConfig, OmegaConf


def _leaf_keys(node, prefix: str, read: set[str]) -> None:
    """Every leaf under ``node`` (a node handed whole to ``to_container``), and the keys its interpolations use."""
    if isinstance(node, DictConfig):
        for k in node.keys():
            _leaf_keys(node._get_node(k), f"{prefix}.{k}" if prefix else str(k), read)
        return
    read.add(prefix)
    if not isinstance(node, ListConfig) and node._is_interpolation():
        _add_refs(node._get_root(), str(node._value()), read)


def _add_refs(root, text: str, read: set[str]) -> None:
    """The absolute ``${a.b}`` keys in ``text`` (resolver arguments included), and those their values refer to."""
    for key in re.findall(r"\$\{([A-Za-z_][\w.]*)\}", text):
        if key in read:
            continue
        read.add(key)
        node = _node(root, key)
        if node is not None and not isinstance(node, (DictConfig, ListConfig)) and node._is_interpolation():
            _add_refs(root, str(node._value()), read)


def _node(root, dotted: str):
    node = root
    for part in dotted.split("."):
        if not isinstance(node, DictConfig):
            return None
        node = node._get_node(part, validate_access=False, validate_key=False, throw_on_missing_key=False)
        if node is None:
            return None
    return node


@contextmanager
def recording():
    """``with recording() as read:`` -> ``read``, the set of full keys read inside the block."""
    read: set[str] = set()
    get_impl, to_container, select, to_yaml = (DictConfig._get_impl, OmegaConf.to_container, OmegaConf.select,
                                               OmegaConf.to_yaml)
    paused = []  # inside to_yaml: writing the whole config down (config.yaml) reads no key for what it does

    def _get_impl(self, key, default_value, validate_key=True):
        if paused:
            return get_impl(self, key, default_value, validate_key)
        read.add(self._get_full_key(key))
        node = self._get_node(key, validate_access=False, validate_key=False, throw_on_missing_key=False)
        if node is not None and node._is_interpolation():  # the keys it is made of are read too
            _add_refs(self._get_root(), str(node._value()), read)
        return get_impl(self, key, default_value, validate_key)

    def _to_container(cfg, *args, **kwargs):
        if isinstance(cfg, DictConfig) and not paused:
            _leaf_keys(cfg, cfg._get_full_key(None) if cfg._get_parent() is not None else "", read)
        return to_container(cfg, *args, **kwargs)

    def _select(cfg, key, *args, **kwargs):
        base = cfg._get_full_key(None) if isinstance(cfg, DictConfig) and cfg._get_parent() is not None else ""
        read.add(f"{base}.{key}" if base else key)
        return select(cfg, key, *args, **kwargs)

    def _to_yaml(cfg, *args, **kwargs):
        paused.append(1)
        try:
            return to_yaml(cfg, *args, **kwargs)
        finally:
            paused.pop()

    DictConfig._get_impl = _get_impl
    OmegaConf.to_yaml = staticmethod(_to_yaml)
    OmegaConf.to_container = staticmethod(_to_container)
    OmegaConf.select = staticmethod(_select)
    try:
        yield read
    finally:
        DictConfig._get_impl = get_impl
        OmegaConf.to_container = staticmethod(to_container)
        OmegaConf.select = staticmethod(select)
        OmegaConf.to_yaml = staticmethod(to_yaml)
