"""Input pipelines for multi-task models.

- `from_tfds`: a TensorFlow Datasets dataset → ``(inputs, {head: label})``.
- `mix`: interleave pipelines whose examples label different heads; the
  labels a source lacks get the missing-label sentinel.
- `load_fashion_mnist`: Fashion-MNIST from local files, offline.
- `MultiFashion`: the MultiFashion benchmark as a TFDS builder, registered as
  ``"multi_fashion"`` on import.
"""

from mtk.data.fashion_mnist import CLASS_NAMES as FASHION_MNIST_CLASS_NAMES
from mtk.data.fashion_mnist import load_fashion_mnist
from mtk.data.labels import label_spec
from mtk.data.labels import missing_label
from mtk.data.mixing import mix
from mtk.data.multi_fashion import MultiFashion
from mtk.data.multi_fashion import MultiFashionConfig
from mtk.data.tfds_pipeline import from_tfds

__all__ = [
    "FASHION_MNIST_CLASS_NAMES",
    "MultiFashion",
    "MultiFashionConfig",
    "from_tfds",
    "label_spec",
    "load_fashion_mnist",
    "missing_label",
    "mix",
]
