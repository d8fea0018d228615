"""Input pipelines for multi-task models.

- `from_tfds`: a TensorFlow Datasets dataset → ``(inputs, {head: label})``.
- `from_dataframe` / `from_csv`: a table (pandas, or CSV files streamed)
  → ``({feature: column}, {head: label})``, with per-head sample weights.
- `mix`: interleave pipelines whose examples label different heads; the
  labels a source lacks get the missing-label sentinel. `with_domain` adds
  the domain label of domain adaptation (`mtk.adaptation`).
- `load_fashion_mnist`: Fashion-MNIST from local files, offline.
- `MultiFashion`: the MultiFashion benchmark as a TFDS builder, registered as
  ``"multi_fashion"`` on import; `load_multi_fashion` returns a variant of
  any size as numpy arrays, `multi_fashion_heads` its heads.
- `load_fashion_shift` / `fashion_mnist_m` / `dann_cnn`: an offline domain
  shift (Fashion-MNIST -> a re-rendered "Fashion-MNIST-M") for domain
  adaptation, and the DANN paper's small CNN.
- `pretrain_fashion_trunk` / `fashion_cnn`: an offline "pretrained trunk"
  (a small CNN that learned Fashion-MNIST), for transfer without downloads.
- `MapAugmentation`: flips and crops of images and their label maps
  together; `NYU_DEPTH_V2_TASKS` / `CITYSCAPES_TASKS`: ``tasks=`` of
  `from_tfds` for those TFDS datasets (dense heads).
- `clicks.click_table`: a synthetic click / conversion table of known
  structure (ESMM's setting), with its FeatureSpace and heads.
- `mmoe_synthetic` / `MMoESynthetic`: the MMoE paper's synthetic regression
  pair (Ma et al. 2018, Sec. 3), whose task correlation you set.
"""

from mtk.data.dense import CITYSCAPES_CLASS_NAMES
from mtk.data.dense import CITYSCAPES_TASKS
from mtk.data.dense import NYU_DEPTH_V2_TASKS
from mtk.data.dense import MapAugmentation
from mtk.data import clicks
from mtk.data.fashion_mnist import CLASS_NAMES as FASHION_MNIST_CLASS_NAMES
from mtk.data.fashion_mnist import load_fashion_mnist
from mtk.data.fashion_shift import dann_cnn
from mtk.data.fashion_shift import fashion_mnist_m
from mtk.data.fashion_shift import load_fashion_shift
from mtk.data.fashion_trunk import fashion_cnn
from mtk.data.fashion_trunk import pretrain_fashion_trunk
from mtk.data.fashion_trunk import quickstart_cnn
from mtk.data.labels import label_spec
from mtk.data.labels import missing_label
from mtk.data.mixing import mix
from mtk.data.mixing import with_domain
from mtk.data.multi_fashion import MultiFashion
from mtk.data.multi_fashion import MultiFashionConfig
from mtk.data.multi_fashion import lenet
from mtk.data.multi_fashion import load_multi_fashion
from mtk.data.multi_fashion import multi_fashion_dense_heads
from mtk.data.multi_fashion import multi_fashion_heads
from mtk.data.synthetic import MMoESynthetic
from mtk.data.synthetic import mmoe_synthetic
from mtk.data.tables import from_csv
from mtk.data.tables import from_dataframe
from mtk.data.tfds_pipeline import from_tfds

__all__ = [
    "CITYSCAPES_CLASS_NAMES",
    "CITYSCAPES_TASKS",
    "MapAugmentation",
    "NYU_DEPTH_V2_TASKS",
    "FASHION_MNIST_CLASS_NAMES",
    "MMoESynthetic",
    "MultiFashion",
    "MultiFashionConfig",
    "dann_cnn",
    "fashion_cnn",
    "fashion_mnist_m",
    "from_csv",
    "from_dataframe",
    "from_tfds",
    "label_spec",
    "load_fashion_mnist",
    "load_fashion_shift",
    "lenet",
    "load_multi_fashion",
    "missing_label",
    "mmoe_synthetic",
    "mix",
    "multi_fashion_dense_heads",
    "multi_fashion_heads",
    "pretrain_fashion_trunk",
    "with_domain",
]
