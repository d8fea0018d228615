"""Dense-prediction data: TFDS task mappings and joint image/map augmentation.

- `NYU_DEPTH_V2_TASKS`: ``tasks=`` of `mtk.data.from_tfds` for TFDS's
  ``nyu_depth_v2`` (image 480x640x3, ``depth`` in metres as float16): a
  ``"depth"`` map for a one-channel `mtk.heads.DenseRegression`, with 0
  (no reading) as NaN.
- `CITYSCAPES_TASKS`: for TFDS's ``cityscapes/semantic_segmentation``
  (``image_left`` 1024x2048x3, ``segmentation_label`` with Cityscapes'
  label ids): a ``"segmentation"`` map of the 19 evaluation classes
  (`CITYSCAPES_CLASS_NAMES`, Cityscapes' ``trainId``), every other label id
  as 255 (ignored) — the benchmark's convention.
- `MapAugmentation`: random horizontal flips and crops applied to an image
  and its label maps together (``augment=`` of `mtk.data.from_tfds`).

Inputs are ``image`` for NYUv2 and ``image_left`` for Cityscapes; give
``image_size=`` to `from_tfds` to train at a smaller size (label maps are
resized with the images, nearest neighbour).
"""

import tensorflow as tf

from mtk.data import labels as labels_lib

# Cityscapes label id -> trainId (cityscapesScripts' labels.py); others 255.
_CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
CITYSCAPES_CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle",
)
CITYSCAPES_IGNORE_LABEL = 255


def cityscapes_train_ids(example):
    """Cityscapes' ``segmentation_label`` (label ids) as trainIds (255: ignore).

    Example:

    >>> from mtk.data.dense import cityscapes_train_ids
    >>> label = tf.constant([[[7], [0]], [[26], [33]]], tf.uint8)
    >>> cityscapes_train_ids({"segmentation_label": label}).numpy().tolist()
    [[0, 255], [13, 18]]
    """
    table = [CITYSCAPES_IGNORE_LABEL] * 256
    for label_id, train_id in _CITYSCAPES_TRAIN_IDS.items():
        table[label_id] = train_id
    label_ids = tf.cast(example["segmentation_label"], tf.int32)[..., 0]
    return tf.gather(tf.constant(table, tf.int64), label_ids)


def nyu_depth(example):
    """NYUv2's ``depth`` (metres, float16) as float32, no reading (0) as NaN.

    Example:

    >>> from mtk.data.dense import nyu_depth
    >>> nyu_depth({"depth": tf.constant([[0.0, 2.5]], tf.float16)}).numpy()
    array([[nan, 2.5]], dtype=float32)
    """
    depth = tf.cast(example["depth"], tf.float32)
    return tf.where(depth > 0, depth, tf.fill(tf.shape(depth), float("nan")))


NYU_DEPTH_V2_TASKS = {"depth": nyu_depth}
CITYSCAPES_TASKS = {"segmentation": cityscapes_train_ids}


class MapAugmentation:
    """Random flips and crops of an image and its label maps, together.

    Called on one example ``(image, {head: label})`` (what `from_tfds` maps
    before batching). Label maps are the labels of dense heads
    (`mtk.heads.Segmentation`, `mtk.heads.DenseRegression`); image-level
    labels pass through.

    - ``flip``: with probability 1/2, mirror image and maps left-right. For
      direction maps (surface normals) name the channel that changes sign
      in ``negate_on_flip`` (``{"normals": 0}``: x).
    - ``crop_scale=(low, high)``: crop a random window whose sides are a
      fraction in ``[low, high]`` of the image's, and resize it back to the
      image size (bilinear for the image, nearest for the maps, so class
      ids and NaN stay what they are).

    Args:
        heads: the model (or its heads): which labels are maps.
        flip: random horizontal flips.
        crop_scale: ``(low, high)`` with ``0 < low <= high <= 1``, or None.
        negate_on_flip: ``{head name: channel}`` negated by a flip.
        seed: op-level seed of the random draws.

    Example:

    >>> from mtk.data import MapAugmentation
    >>> head = mtk.heads.Segmentation("seg", num_classes=4, output_size=(1, 4))
    >>> augment = MapAugmentation([head], seed=1)
    >>> image = tf.constant([[[0.0], [1.0], [2.0], [3.0]]])
    >>> flipped = [augment(image, {"seg": tf.constant([[0, 1, 2, 3]], tf.int64)})
    ...            for _ in range(8)]
    >>> all((x[..., 0].numpy() == y["seg"].numpy()).all() for x, y in flipped)
    True
    """

    def __init__(self, heads, flip=True, crop_scale=None, negate_on_flip=None,
                 seed=None):
        self.heads = labels_lib.heads_by_name(heads)
        self.maps = [
            name for name, head in self.heads.items()
            if getattr(head, "reads_feature_map", False)
        ]
        if crop_scale is not None:
            low, high = (float(s) for s in crop_scale)
            if not 0 < low <= high <= 1:
                raise ValueError(
                    "crop_scale must be (low, high) with 0 < low <= high <= 1, "
                    f"got {crop_scale!r}."
                )
            crop_scale = (low, high)
        negate_on_flip = dict(negate_on_flip or {})
        for name, channel in negate_on_flip.items():
            head = self.heads.get(name)
            if name not in self.maps or not 0 <= channel < getattr(
                head, "channels", 0
            ):
                raise ValueError(
                    f"negate_on_flip[{name!r}]={channel!r} must name a channel "
                    "of a DenseRegression head; dense regression heads: "
                    f"{[n for n in self.maps if hasattr(self.heads[n], 'channels')]}."
                )
        self.flip = bool(flip)
        self.crop_scale = crop_scale
        self.negate_on_flip = negate_on_flip
        self.seed = seed

    def __call__(self, image, labels):
        labels = dict(labels)
        maps = {name: labels[name] for name in self.maps if name in labels}
        if self.flip:
            do_flip = tf.random.uniform([], seed=self.seed) < 0.5
            image = tf.cond(do_flip, lambda: image[:, ::-1], lambda: image)
            for name, value in maps.items():
                flipped = value[:, ::-1]
                if name in self.negate_on_flip:
                    sign = [1.0] * int(value.shape[-1])
                    sign[self.negate_on_flip[name]] = -1.0
                    flipped = flipped * tf.constant(sign, value.dtype)
                maps[name] = tf.cond(
                    do_flip, lambda f=flipped: f, lambda v=value: v
                )
        if self.crop_scale is not None:
            image, maps = self._crop(image, maps)
        labels.update(maps)
        return image, labels

    def _crop(self, image, maps):
        size = tf.shape(image)[:2]
        low, high = self.crop_scale
        scale = tf.random.uniform([], low, high, seed=self.seed)
        crop = tf.maximum(
            tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), 1
        )
        top = tf.random.uniform([], 0, size[0] - crop[0] + 1, tf.int32, seed=self.seed)
        left = tf.random.uniform([], 0, size[1] - crop[1] + 1, tf.int32, seed=self.seed)

        def cut(value, method):
            squeeze = value.shape.rank == 2
            x = value[..., tf.newaxis] if squeeze else value
            x = x[top:top + crop[0], left:left + crop[1]]
            x = tf.image.resize(x, size, method=method)
            if x.dtype != value.dtype:  # bilinear gives float32
                x = (
                    tf.saturate_cast(tf.round(x), value.dtype)
                    if value.dtype.is_integer else tf.cast(x, value.dtype)
                )
            x.set_shape(value.shape if not squeeze else value.shape.concatenate(1))
            return x[..., 0] if squeeze else x

        image = cut(image, "bilinear")
        maps = {name: cut(value, "nearest") for name, value in maps.items()}
        return image, maps
