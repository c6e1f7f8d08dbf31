"""Sparse constant tensors (TFLite ``SparsityParameters``) decoded to dense arrays.

The format (``schema.fbs``): the dense tensor of rank ``n`` is first split into blocks
(``block_map[j]`` names the original dimension cut by block dimension ``n + j``, whose size is
the ``dense_size`` of its metadata), giving ``n + k`` dimensions. ``traversal_order`` lists them
in storage order, and ``dim_metadata[l]`` describes storage level ``l``: DENSE (all
``dense_size`` positions) or SPARSE_CSR (``array_segments`` / ``array_indices``, indexed by the
position reached at the previous level). The stored values are the leaves in storage order.
"""

from __future__ import annotations

import numpy as np

DENSE, SPARSE_CSR = 0, 1  # schema DimensionType


class SparsityError(ValueError):
    pass


def _vector(value) -> np.ndarray | None:
    """An Int32Vector / Uint16Vector / Uint8Vector (object or flat API) as an int64 array."""
    if value is None:
        return None
    values = getattr(value, "values", value)
    if callable(values):  # flat API: ValuesAsNumpy
        values = value.ValuesAsNumpy()
    if values is None or (isinstance(values, int) and values == 0):
        return np.zeros(0, np.int64)
    return np.asarray(values, dtype=np.int64).reshape(-1)


def densify(raw: np.ndarray, sparsity, shape: tuple) -> np.ndarray:
    """The dense array of ``shape`` encoded by ``raw`` (the stored values, flat) and
    ``sparsity`` (a ``schema.SparsityParametersT``)."""
    shape = tuple(int(d) for d in shape)
    rank = len(shape)
    order = [int(i) for i in (sparsity.traversalOrder if sparsity.traversalOrder is not None
                              else range(rank))]
    block_map = [int(i) for i in (sparsity.blockMap if sparsity.blockMap is not None else [])]
    metadata = list(sparsity.dimMetadata or [])
    levels = rank + len(block_map)
    if sorted(order) != list(range(levels)) or len(metadata) != levels:
        raise SparsityError(f"Sparse tensor of rank {rank} with {len(block_map)} block "
                            f"dimension(s) has traversal_order {order} and {len(metadata)} "
                            "dimension metadata entries.")

    # Block sizes: the dense_size of each block dimension's level.
    level_of = {dim: level for level, dim in enumerate(order)}
    block_sizes = [int(metadata[level_of[rank + j]].denseSize) for j in range(len(block_map))]

    raw = np.asarray(raw).reshape(-1)
    prev = np.zeros(1, np.int64)  # position reached at the previous level, per path
    coords: list[np.ndarray] = []  # index at each level so far, per path
    for level, meta in enumerate(metadata):
        if meta.format == DENSE:
            size = int(meta.denseSize)
            step = np.arange(size, dtype=np.int64)
            coords = [np.repeat(c, size) for c in coords]
            coords.append(np.tile(step, len(prev)))
            prev = (prev[:, None] * size + step[None, :]).reshape(-1)
        elif meta.format == SPARSE_CSR:
            segments = _vector(meta.arraySegments)
            indices = _vector(meta.arrayIndices)
            if segments is None or indices is None:
                raise SparsityError(f"Sparse level {level} has no array_segments/indices.")
            if len(prev) and prev.max() + 1 >= len(segments):
                raise SparsityError(f"Sparse level {level}: array_segments has {len(segments)} "
                                    f"entries, position {prev.max()} needs more.")
            start, stop = segments[prev], segments[prev + 1]
            counts = stop - start
            if np.any(counts < 0) or (len(stop) and stop.max() > len(indices)):
                raise SparsityError(f"Sparse level {level}: array_segments out of range.")
            # The ranges start[p]..stop[p], concatenated, without a Python loop.
            first = np.cumsum(counts) - counts
            positions = np.repeat(start - first, counts) + np.arange(counts.sum())
            coords = [np.repeat(c, counts) for c in coords]
            coords.append(indices[positions].astype(np.int64))
            prev = positions.astype(np.int64)
        else:
            raise SparsityError(f"Unknown dimension format {meta.format} at level {level}.")

    if len(prev) != raw.size:
        raise SparsityError(f"Sparse tensor stores {raw.size} values, its metadata "
                            f"describes {len(prev)}.")
    expanded = [None] * levels
    for level, dim in enumerate(order):
        expanded[dim] = coords[level]
    original = [expanded[d] for d in range(rank)]
    for j, dim in enumerate(block_map):
        original[dim] = original[dim] * block_sizes[j] + expanded[rank + j]
    dense = np.zeros(shape, dtype=raw.dtype)
    if raw.size:
        for d, idx in enumerate(original):
            if idx.size and (idx.min() < 0 or idx.max() >= shape[d]):
                raise SparsityError(f"Sparse index out of range for dimension {d} "
                                    f"(size {shape[d]}).")
        dense[tuple(original)] = raw
    return dense
