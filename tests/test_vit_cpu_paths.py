"""The ViT's CPU fast paths compute what the library primitives compute.

`vit.gelu`, `vit.LayerNorm` and `vit.attention_heads_first` replace
`jax.nn.gelu(approximate=False)`, `nnx.LayerNorm` and
`jax.nn.dot_product_attention` for speed on CPU (docs/benchmarks.md, "CPU
parity"); values and gradients must agree to float32 roundoff.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mi_ssl_jax.models import vit

pytestmark = pytest.mark.usefixtures("fast_compile")


def test_gelu_matches_exact_gelu_values_and_gradients():
  x = jnp.linspace(-12.0, 12.0, 4001)
  ref = lambda x: jnp.sum(jnp.sin(x) * jax.nn.gelu(x, approximate=False))
  ours = lambda x: jnp.sum(jnp.sin(x) * vit.gelu(x))
  np.testing.assert_allclose(vit.gelu(x), jax.nn.gelu(x, approximate=False),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.grad(ours)(x), jax.grad(ref)(x),
                             rtol=1e-5, atol=1e-6)


def _norms(width=24):
  ours = vit.LayerNorm(width, epsilon=1e-6, rngs=nnx.Rngs(0))
  ref = nnx.LayerNorm(width, epsilon=1e-6, rngs=nnx.Rngs(0))
  k1, k2 = jax.random.split(jax.random.key(0))
  for m in (ours, ref):
    m.scale.set_value(1.0 + jax.random.normal(k1, (width,)))
    m.bias.set_value(jax.random.normal(k2, (width,)))
  return ours, ref


def test_layer_norm_matches_flax_values_and_gradients():
  ours, ref = _norms()
  x = 3.0 * jax.random.normal(jax.random.key(1), (4, 7, 24)) + 1.0
  g = jax.random.normal(jax.random.key(2), (4, 7, 24))
  np.testing.assert_allclose(ours(x), ref(x), rtol=1e-6, atol=1e-6)

  def loss(m, x):
    return jnp.sum(m(x) * g)

  (gm_o, gx_o) = nnx.grad(loss, argnums=(0, 1))(ours, x)
  (gm_r, gx_r) = nnx.grad(loss, argnums=(0, 1))(ref, x)
  np.testing.assert_allclose(gx_o, gx_r, rtol=1e-4, atol=1e-5)
  for name in ("scale", "bias"):
    np.testing.assert_allclose(gm_o[name][...], gm_r[name][...], rtol=1e-5,
                               atol=1e-5)


def test_layer_norm_bfloat16_uses_flax():
  ours, ref = _norms()
  x = jax.random.normal(jax.random.key(3), (2, 5, 24)).astype(jnp.bfloat16)
  np.testing.assert_array_equal(ours(x), ref(x))


@pytest.mark.parametrize("heads,t", [(3, 17), (4, 9)])
def test_attention_heads_first_matches_dot_product_attention(heads, t):
  b, h = 2, 8
  d = heads * h
  qkv = jax.random.normal(jax.random.key(4), (b, t, 3 * d))

  def ref(qkv):
    q, k, v = jnp.split(qkv.reshape(b, t, 3, heads, h), 3, axis=2)
    out = jax.nn.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0])
    return out.reshape(b, t, d)

  ours = lambda qkv: vit.attention_heads_first(qkv, heads)
  np.testing.assert_allclose(ours(qkv), ref(qkv), rtol=1e-5, atol=1e-6)
  w = jax.random.normal(jax.random.key(5), (b, t, d))
  grad = lambda f: jax.grad(lambda a: jnp.sum(w * f(a)))(qkv)
  np.testing.assert_allclose(grad(ours), grad(ref), rtol=1e-4, atol=1e-5)
