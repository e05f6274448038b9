"""On-device photometric augmentations in JAX (the DeepMind BYOL design).

Pure functions of a batch and one PRNG key: each example gets its own key
(`jax.random.split(key, B)`) and the per-example function is `vmap`ped, so the
result does not depend on how the batch is sharded over devices. Use them
inside the jitted train step on the views that the host pipeline produced with
`augment_on="device"` (crop + flip only, values in [0, 1], not normalised):

    augment = make_device_augment(mean=info_mean, std=info_std)
    batch = augment(batch, jax.random.fold_in(aug_key, step))

The ops mirror `augment_tf.py` (torchvision semantics): ColorJitter in random
order (p 0.8), grayscale (p 0.2), Gaussian blur sigma ~ U[0.1, 2] with a kernel
of ~10% of the side, solarize at 0.5, then normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from mi_ssl_jax.data.augmentation import LUMA as _LUMA


def to_grayscale(image):
  """[H, W, 3] -> luma repeated on 3 channels; 1-channel input unchanged."""
  if image.shape[-1] == 1:
    return image
  gray = image @ jnp.asarray(_LUMA, image.dtype)  # [H, W]
  return jnp.repeat(gray[..., None], 3, axis=-1)


def rgb_to_hsv(rgb):
  """[..., 3] RGB in [0, 1] -> HSV in [0, 1] (colorsys / tf.image)."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  maxc = jnp.max(rgb, axis=-1)
  minc = jnp.min(rgb, axis=-1)
  delta = maxc - minc
  s = jnp.where(maxc > 0, delta / jnp.where(maxc > 0, maxc, 1.0), 0.0)
  safe = jnp.where(delta > 0, delta, 1.0)
  rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
  h = jnp.where(r == maxc, bc - gc,
                jnp.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
  h = jnp.where(delta > 0, (h / 6.0) % 1.0, 0.0)
  return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(hsv):
  """[..., 3] HSV in [0, 1] -> RGB in [0, 1]."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  h6 = h * 6.0
  i = jnp.floor(h6)
  f = h6 - i
  i = i.astype(jnp.int32) % 6
  p = v * (1.0 - s)
  q = v * (1.0 - s * f)
  t = v * (1.0 - s * (1.0 - f))
  cases = [i == k for k in range(6)]
  r = jnp.select(cases, [v, q, p, p, t, v])
  g = jnp.select(cases, [t, v, v, q, p, p])
  b = jnp.select(cases, [p, p, t, v, v, q])
  return jnp.stack([r, g, b], axis=-1)


def _blend(image, other, factor):
  return jnp.clip(other + factor * (image - other), 0.0, 1.0)


def adjust_brightness(image, factor):
  return jnp.clip(image * factor, 0.0, 1.0)


def adjust_contrast(image, factor):
  return _blend(image, jnp.mean(to_grayscale(image)[..., 0]), factor)


def adjust_saturation(image, factor):
  if image.shape[-1] == 1:
    return image
  return _blend(image, to_grayscale(image), factor)


def adjust_hue(image, delta):
  if image.shape[-1] == 1:
    return image
  hsv = rgb_to_hsv(image)
  hsv = hsv.at[..., 0].set((hsv[..., 0] + delta) % 1.0)
  return jnp.clip(hsv_to_rgb(hsv), 0.0, 1.0)


def _lerp(u, low, high):
  return low + u * (high - low)


def color_jitter(image, u, brightness=0.4, contrast=0.4, saturation=0.2,
                 hue=0.1):
  """torchvision ColorJitter on one image [H, W, C]: 4 ops in random order.

  Args:
    image: float [H, W, C] in [0, 1].
    u: uniforms [8] in [0, 1): 4 factors, then 4 sort keys for the order.
    brightness, contrast, saturation: factors ~ U[max(0, 1 - s), 1 + s].
    hue: shift ~ U[-hue, hue] of the hue circle.
  """
  fb = _lerp(u[0], max(0.0, 1 - brightness), 1 + brightness)
  fc = _lerp(u[1], max(0.0, 1 - contrast), 1 + contrast)
  fs = _lerp(u[2], max(0.0, 1 - saturation), 1 + saturation)
  dh = _lerp(u[3], -hue, hue)
  order = jnp.argsort(u[4:8])
  branches = [
      lambda x: adjust_brightness(x, fb),
      lambda x: adjust_contrast(x, fc),
      lambda x: adjust_saturation(x, fs),
      lambda x: adjust_hue(x, dh),
  ]
  # A loop (not 4 unrolled switches) keeps the compiled graph 4x smaller.
  return jax.lax.fori_loop(
      0, 4, lambda i, x: jax.lax.switch(order[i], branches, x), image)


def gaussian_kernel_size(image_size: int) -> int:
  """Odd kernel of about 10% of the image side (BYOL: 23 at 224), >= 3."""
  k = max(3, int(round(0.1 * image_size)))
  return k if k % 2 == 1 else k + 1


def gaussian_blur(image, sigma, kernel_size: int):
  """Separable Gaussian blur of [H, W, C] with reflect padding.

  Written as a sum of shifted slices (kernel_size taps per axis) because the
  kernel differs per example and this form vmaps without grouped convolutions.
  """
  radius = kernel_size // 2
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  k = jnp.exp(-0.5 * jnp.square(x / sigma))
  k = k / jnp.sum(k)  # [K]
  h, w = image.shape[0], image.shape[1]
  padded = jnp.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="reflect")
  image = sum(k[j] * padded[j:j + h] for j in range(kernel_size))
  padded = jnp.pad(image, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
  return sum(k[j] * padded[:, j:j + w] for j in range(kernel_size))


def solarize(image, threshold=0.5):
  """PIL ImageOps.solarize: invert pixels >= threshold."""
  return jnp.where(image < threshold, image, 1.0 - image)


def _maybe(u, prob, fn, image):
  if prob <= 0.0:
    return image
  if prob >= 1.0:
    return fn(image)
  return jnp.where(u < prob, fn(image), image)


# Uniforms each example needs: jitter (1 + 8), grayscale, blur (2), solarize.
NUM_UNIFORMS = 13


def color_augment_one(image, u, *,
                      color_jitter_strength=(0.4, 0.4, 0.2, 0.1),
                      color_jitter_prob=0.8, grayscale_prob=0.2, blur_prob=0.0,
                      blur_sigma=(0.1, 2.0), solarize_prob=0.0):
  """ColorJitter(p) -> Grayscale(p) -> Blur(p) -> Solarize(p) on [H, W, C].

  Args:
    image: float [H, W, C] in [0, 1].
    u: [NUM_UNIFORMS] uniforms in [0, 1) that drive every random choice.
  """
  b, c, s, h = color_jitter_strength
  image = _maybe(u[0], color_jitter_prob,
                 lambda x: color_jitter(x, u[1:9], b, c, s, h), image)
  image = _maybe(u[9], grayscale_prob, to_grayscale, image)
  kernel_size = gaussian_kernel_size(min(image.shape[0], image.shape[1]))
  sigma = _lerp(u[11], *blur_sigma)
  image = _maybe(u[10], blur_prob,
                 lambda x: gaussian_blur(x, sigma, kernel_size), image)
  return _maybe(u[12], solarize_prob, solarize, image)


def color_augment(images, key, **kwargs):
  """`color_augment_one` on every image of [B, H, W, C].

  All randomness is one [B, NUM_UNIFORMS] uniform draw (row i drives example
  i), which compiles to a single random-bits op and does not depend on how the
  batch is sharded.
  """
  u = jax.random.uniform(key, (images.shape[0], NUM_UNIFORMS))
  return jax.vmap(lambda x, ui: color_augment_one(x, ui, **kwargs))(
      images.astype(jnp.float32), u)


def normalize(images, mean: Sequence[float], std: Sequence[float]):
  """(x - mean) / std over the last axis; mean/std in [0, 1] units."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images - mean) / std


def unit_range(pixels):
  """uint8 pixels [..., C] -> float32 in [0, 1]: x / 255.

  The host pipeline's `tf.cast(x, tf.float32) / 255` on the device. XLA
  rewrites a division by a constant into a multiplication by its reciprocal,
  so a value can differ from the host's by one float32 ulp (not bit-equal;
  tests/test_data_uint8.py measures it).
  """
  return pixels.astype(jnp.float32) / 255.0


def make_device_augment(
    *, mean: Sequence[float], std: Sequence[float],
    color_jitter_strength=(0.4, 0.4, 0.2, 0.1), color_jitter_prob=0.8,
    grayscale_prob=0.2, blur_prob=(1.0, 0.1), blur_sigma=(0.1, 2.0),
    solarize_prob=(0.0, 0.2), local_blur_prob=0.5,
) -> Callable[[dict, jax.Array], dict]:
  """Returns `augment(batch, key) -> batch` for two-view batches on device.

  `batch` has "view1", "view2" float32 [B, H, W, C] in [0, 1] (and optionally
  "local_views" [B, K, h, w, C]) as produced by the host pipeline with
  `augment_on="device"`. The result has the same keys, photometrically
  augmented (view-specific blur/solarize probabilities, the asymmetric BYOL /
  MoCo v3 recipe by default) and normalised with mean/std. Pure and jittable;
  "label" and any other keys pass through.

  Args:
    mean: per-channel mean in [0, 1] (length C).
    std: per-channel std in [0, 1] (length C).
    color_jitter_strength: (brightness, contrast, saturation, hue).
    color_jitter_prob: probability of applying color jitter.
    grayscale_prob: probability of converting to grayscale.
    blur_prob: (view1, view2) Gaussian-blur probabilities.
    blur_sigma: range of the blur sigma in pixels.
    solarize_prob: (view1, view2) solarize probabilities.
    local_blur_prob: blur probability of multi-crop local views.
  """
  common = dict(color_jitter_strength=tuple(color_jitter_strength),
                color_jitter_prob=color_jitter_prob,
                grayscale_prob=grayscale_prob, blur_sigma=tuple(blur_sigma))

  def augment(batch: dict, key: jax.Array) -> dict:
    out = dict(batch)
    for i, name in enumerate(("view1", "view2")):
      views = color_augment(batch[name], jax.random.fold_in(key, i),
                            blur_prob=blur_prob[i],
                            solarize_prob=solarize_prob[i], **common)
      out[name] = normalize(views, mean, std)
    if "local_views" in batch:
      local = batch["local_views"]  # [B, K, h, w, C]
      flat = local.reshape((-1,) + local.shape[2:])
      flat = color_augment(flat, jax.random.fold_in(key, 2),
                           blur_prob=local_blur_prob, solarize_prob=0.0,
                           **common)
      out["local_views"] = normalize(flat, mean, std).reshape(local.shape)
    return out

  return augment


def random_resized_crop_one(image, key, size: int,
                            scale: Sequence[float] = (0.2, 1.0),
                            ratio: Sequence[float] = (3 / 4, 4 / 3),
                            method: str = "linear"):
  """RandomResizedCrop of one image [H, W, C] -> [size, size, C].

  Samples an area fraction s ~ U(scale) and a log aspect ratio
  log r ~ U(log ratio) (torchvision), crop height √(s/r)·H and width √(s·r)·W
  clipped to the image (torchvision retries up to 10 times instead, then
  falls back to a centre crop), and a uniform position; then resamples the
  crop to `size` with `jax.image.scale_and_translate` (antialiased).
  """
  h, w, c = image.shape
  k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
  area = jax.random.uniform(k_area, (), minval=scale[0], maxval=scale[1])
  log_r = jax.random.uniform(k_ratio, (), minval=jnp.log(ratio[0]),
                             maxval=jnp.log(ratio[1]))
  r = jnp.exp(log_r)
  ch = jnp.clip(jnp.sqrt(area / r) * h, 1.0, h)
  cw = jnp.clip(jnp.sqrt(area * r) * w, 1.0, w)
  y0 = jax.random.uniform(k_y, ()) * (h - ch)
  x0 = jax.random.uniform(k_x, ()) * (w - cw)
  sy, sx = size / ch, size / cw
  return jax.image.scale_and_translate(
      image, (size, size, c), spatial_dims=(0, 1),
      scale=jnp.stack([sy, sx]), translation=jnp.stack([-y0 * sy, -x0 * sx]),
      method=method, antialias=True)


def crop_and_flip(images, key, size: int,
                  scale: Sequence[float] = (0.2, 1.0),
                  ratio: Sequence[float] = (3 / 4, 4 / 3),
                  hflip: bool = True, method: str = "linear"):
  """Per-example RandomResizedCrop + horizontal flip of [B, H, W, C]."""
  keys = jax.random.split(key, images.shape[0])

  def one(image, k):
    k_crop, k_flip = jax.random.split(k)
    x = random_resized_crop_one(image, k_crop, size, scale, ratio, method)
    if hflip:
      x = jnp.where(jax.random.bernoulli(k_flip), x[:, ::-1], x)
    return x

  return jax.vmap(one)(images, keys)
