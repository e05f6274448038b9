"""Host-side (tf.data) image augmentations with stateless per-example seeds.

Every op takes one float32 image [H, W, C] with values in [0, 1] and a seed
(int32/int64 [2]); the same seed always gives the same output, so pipelines
are deterministic whatever tf.data's parallelism.

The recipes follow torchvision as used by the official code
(docs/methods.md §2.3, §3.3): RandomResizedCrop (area scale, log-uniform
aspect ratio in (3/4, 4/3), bicubic resize with antialiasing like PIL),
ColorJitter(brightness, contrast, saturation, hue) applied in random order,
RandomGrayscale, Gaussian blur with sigma ~ U[0.1, 2], solarize at 0.5 (PIL
threshold 128), horizontal flip.
"""

from __future__ import annotations

import tensorflow as tf

from mi_ssl_jax.data.augmentation import LUMA as _LUMA


def split_seed(seed, num: int):
  """`num` independent seeds [num, 2] from one seed [2]."""
  return tf.random.experimental.stateless_split(seed, num)


def uniform(seed, low=0.0, high=1.0):
  return tf.random.stateless_uniform([], seed, low, high, tf.float32)


def random_resized_crop(image, seed, size: int, scale=(0.2, 1.0),
                        ratio=(3 / 4, 4 / 3), method: str = "bicubic",
                        antialias: bool = True):
  """torchvision RandomResizedCrop: random area/aspect crop resized to size².

  Args:
    image: uint8 or float [H, W, C].
    seed: [2] stateless seed.
    size: output side.
    scale: range of the crop area as a fraction of the image area.
    ratio: range of the crop aspect ratio (sampled log-uniformly by TF).
    method: tf.image.resize method ("bicubic" as MAE, "bilinear" as MoCo).
    antialias: low-pass when downsampling, like PIL.

  Returns:
    float32 [size, size, C], values in the input's range (clipped to [0, 1]
    for float input in [0, 1], to [0, 255] for uint8 input).
  """
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=ratio, area_range=scale,
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  crop = tf.slice(image, begin, crop_size)
  high = 255.0 if image.dtype == tf.uint8 else 1.0
  out = tf.image.resize(tf.cast(crop, tf.float32), [size, size],
                        method=method, antialias=antialias)
  out.set_shape([size, size, image.shape[-1]])
  return tf.clip_by_value(out, 0.0, high)


def resize_center_crop(image, size: int, resize_size: int,
                       method: str = "bicubic"):
  """Eval transform: shorter side -> resize_size, then centre crop size².

  Args:
    image: uint8 or float [H, W, C].
    size: output side.
    resize_size: shorter side after resizing (>= size).
    method: resize method.

  Returns:
    float32 [size, size, C] in the input's value range.
  """
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  factor = resize_size / tf.minimum(h, w)
  new_h = tf.maximum(size, tf.cast(tf.round(h * factor), tf.int32))
  new_w = tf.maximum(size, tf.cast(tf.round(w * factor), tf.int32))
  high = 255.0 if image.dtype == tf.uint8 else 1.0
  out = tf.image.resize(tf.cast(image, tf.float32), [new_h, new_w],
                        method=method, antialias=True)
  top = (new_h - size) // 2
  left = (new_w - size) // 2
  out = out[top:top + size, left:left + size]
  out.set_shape([size, size, image.shape[-1]])
  return tf.clip_by_value(out, 0.0, high)


def to_grayscale(image):
  """[H, W, 3] -> luma repeated on 3 channels; 1-channel input unchanged."""
  if image.shape[-1] == 1:
    return image
  # A weighted sum of slices: ~4x faster on CPU than tensordot over C = 3.
  gray = (_LUMA[0] * image[..., 0:1] + _LUMA[1] * image[..., 1:2] +
          _LUMA[2] * image[..., 2:3])
  return tf.concat([gray, gray, gray], axis=-1)


def _blend(image, other, factor):
  return tf.clip_by_value(other + factor * (image - other), 0.0, 1.0)


def adjust_brightness(image, factor):
  return tf.clip_by_value(image * factor, 0.0, 1.0)


def adjust_contrast(image, factor):
  mean = tf.reduce_mean(to_grayscale(image)[..., 0])
  return _blend(image, mean, factor)


def adjust_saturation(image, factor):
  if image.shape[-1] == 1:
    return image
  return _blend(image, to_grayscale(image), factor)


def adjust_hue(image, delta):
  if image.shape[-1] == 1:
    return image
  return tf.clip_by_value(tf.image.adjust_hue(image, delta), 0.0, 1.0)


def color_jitter(image, seed, brightness=0.4, contrast=0.4, saturation=0.2,
                 hue=0.1):
  """torchvision ColorJitter: the four adjustments in a random order.

  Factors are sampled as U[max(0, 1 - s), 1 + s] for brightness, contrast and
  saturation, and the hue shift as U[-hue, hue] (fraction of the hue circle).
  """
  seeds = split_seed(seed, 5)
  fb = uniform(seeds[0], max(0.0, 1 - brightness), 1 + brightness)
  fc = uniform(seeds[1], max(0.0, 1 - contrast), 1 + contrast)
  fs = uniform(seeds[2], max(0.0, 1 - saturation), 1 + saturation)
  dh = uniform(seeds[3], -hue, hue)
  order = tf.argsort(tf.random.stateless_uniform([4], seeds[4]))
  branches = [
      lambda x: adjust_brightness(x, fb),
      lambda x: adjust_contrast(x, fc),
      lambda x: adjust_saturation(x, fs),
      lambda x: adjust_hue(x, dh),
  ]
  shape = image.shape

  # A loop over the 4 slots (not 4 unrolled switches) traces each adjustment
  # once: building a two-view pipeline drops from ~6 s to ~2 s.
  def body(i, x):
    y = tf.switch_case(tf.gather(order, i),
                       [lambda f=f: f(x) for f in branches])
    y.set_shape(shape)
    return i + 1, y

  _, image = tf.while_loop(lambda i, _: i < 4, body,
                           (tf.constant(0, tf.int32), image))
  return image


def gaussian_kernel_size(image_size: int) -> int:
  """Odd kernel of about 10% of the image side (BYOL: 23 at 224), >= 3."""
  k = max(3, int(round(0.1 * image_size)))
  return k if k % 2 == 1 else k + 1


def gaussian_blur(image, sigma, kernel_size: int):
  """Separable Gaussian blur with reflect padding (PIL pads by extension).

  Args:
    image: float [H, W, C].
    sigma: scalar standard deviation in pixels.
    kernel_size: odd kernel side; must be < H and < W.
  """
  radius = kernel_size // 2
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  k = tf.exp(-0.5 * tf.square(x / sigma))
  k = k / tf.reduce_sum(k)
  c = image.shape[-1]
  padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius],
                                [0, 0]], mode="REFLECT")
  kh = tf.tile(tf.reshape(k, [kernel_size, 1, 1, 1]), [1, 1, c, 1])
  kw = tf.tile(tf.reshape(k, [1, kernel_size, 1, 1]), [1, 1, c, 1])
  out = tf.nn.depthwise_conv2d(padded, kh, [1, 1, 1, 1], "VALID")
  out = tf.nn.depthwise_conv2d(out, kw, [1, 1, 1, 1], "VALID")
  return out[0]


def solarize(image, threshold=0.5):
  """PIL ImageOps.solarize: invert pixels >= threshold."""
  return tf.where(image < threshold, image, 1.0 - image)


def _maybe(seed, prob, fn, image):
  if prob <= 0.0:
    return image
  if prob >= 1.0:
    return fn(image)
  out = tf.cond(uniform(seed) < prob, lambda: fn(image), lambda: image)
  out.set_shape(image.shape)
  return out


def color_augment(image, seed, *, color_jitter_strength=(0.4, 0.4, 0.2, 0.1),
                  color_jitter_prob=0.8, grayscale_prob=0.2, blur_prob=0.0,
                  blur_sigma=(0.1, 2.0), solarize_prob=0.0):
  """ColorJitter(p) -> Grayscale(p) -> GaussianBlur(p) -> Solarize(p).

  The MoCo v3 / BYOL per-view photometric chain, on float [H, W, C] in [0, 1].
  """
  seeds = split_seed(seed, 7)
  b, c, s, h = color_jitter_strength
  image = _maybe(seeds[0], color_jitter_prob,
                 lambda x: color_jitter(x, seeds[1], b, c, s, h), image)
  image = _maybe(seeds[2], grayscale_prob, to_grayscale, image)
  size = min(image.shape[0], image.shape[1])
  kernel_size = gaussian_kernel_size(size)
  sigma = uniform(seeds[4], *blur_sigma)
  image = _maybe(seeds[3], blur_prob,
                 lambda x: gaussian_blur(x, sigma, kernel_size), image)
  image = _maybe(seeds[5], solarize_prob, solarize, image)
  return image


def random_flip(image, seed):
  return tf.image.stateless_random_flip_left_right(image, seed)
