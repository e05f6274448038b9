"""Per-example random draws that do not depend on how a batch is chunked.

The trainer's exact large-batch gradient (`config.grad_chunks = k`,
`mi_ssl_jax/train.py`) runs the network on k chunks of the global batch, one
at a time; chunk c holds the examples c, c + k, c + 2k, ... (every chunk stays
evenly split over the devices). For its gradient to be the gradient of the
unchunked step, every example must draw the same random numbers (MAE mask,
drop path) in a chunk as in the whole batch. A `ChunkKey` carries the whole
batch's key and which chunk is running; the draws below generate the whole
batch's numbers and keep the chunk's rows, so example j gets row j of
``jax.random.uniform(key, (B, ...))`` either way. With a plain key they are
exactly `jax.random.fold_in` / `split` / `uniform` / `bernoulli` (the
unchunked program is unchanged). Generating the whole batch's numbers in each
chunk costs k times a [B, ...] draw (a mask noise of B × L floats), small
next to the network.

Models take either kind of key where they take a PRNG key; every random
draw of a forward pass in `mi_ssl_jax/models` goes through this module. (No
library offers this: JAX's keys have no notion of a batch slice.)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ChunkKey:
  """The key of a global batch, as seen by one of its `num_chunks` chunks.

  Attributes:
    key: the PRNG key of the whole batch (what the unchunked step uses).
    chunk: int32 scalar (may be traced): which chunk runs (examples
      chunk, chunk + num_chunks, ...).
    num_chunks: k (static).
  """

  key: jax.Array
  chunk: jax.Array
  num_chunks: int = dataclasses.field(metadata=dict(static=True))


Key = jax.Array | ChunkKey


def fold_in(key: Key, data) -> Key:
  """`jax.random.fold_in` of the (batch) key."""
  if isinstance(key, ChunkKey):
    return dataclasses.replace(key, key=jax.random.fold_in(key.key, data))
  return jax.random.fold_in(key, data)


def split(key: Key, num: int = 2) -> tuple[Key, ...]:
  """`jax.random.split` of the (batch) key, as a tuple of `num` keys."""
  if isinstance(key, ChunkKey):
    return tuple(dataclasses.replace(key, key=k)
                 for k in jax.random.split(key.key, num))
  return tuple(jax.random.split(key, num))


def _chunk_rows(draw, key: ChunkKey, shape: tuple[int, ...]) -> jax.Array:
  """Rows of this chunk of `draw(batch_key, whole_batch_shape)`.

  shape[0] is the chunk's number of examples n; the whole batch has
  n · k rows, and chunk c holds rows c, c + k, ... ([n, k, ...][:, c]).
  """
  n, rest = shape[0], tuple(shape[1:])
  whole = draw(key.key, (n * key.num_chunks, *rest))  # [n·k, ...]
  return jnp.take(whole.reshape(n, key.num_chunks, *rest), key.chunk,
                  axis=1)  # [n, ...]


def uniform(key: Key, shape: tuple[int, ...]) -> jax.Array:
  """U[0, 1) float32 of `shape` (shape[0]: examples of this call)."""
  if isinstance(key, ChunkKey):
    return _chunk_rows(jax.random.uniform, key, shape)
  return jax.random.uniform(key, shape)


def bernoulli(key: Key, p, shape: tuple[int, ...]) -> jax.Array:
  """Bernoulli(p) booleans of `shape` (shape[0]: examples of this call)."""
  if isinstance(key, ChunkKey):
    return _chunk_rows(lambda k, s: jax.random.bernoulli(k, p, s), key,
                       shape)
  return jax.random.bernoulli(key, p, shape)
