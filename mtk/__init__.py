"""mtk: multi-task and transfer learning on Keras 3 (TensorFlow backend).

One pretrained trunk, several named heads, a frozen-then-unfrozen training
schedule. See README.md for the quick start.
"""

from mtk import adaptation
from mtk import data
from mtk import distribute
from mtk import evaluation
from mtk import export
from mtk import heads
from mtk import layers
from mtk import losses
from mtk import model
from mtk import monitoring
from mtk import preprocessing
from mtk import sharing
from mtk import trunks
from mtk import tuning
from mtk import weighting
from mtk.builder import build_multitask_model
from mtk.builder import compile_multitask
from mtk.export import export_saved_model
from mtk.export import export_tflite
from mtk.model import MultiTaskModel
from mtk.training import check_training_data
from mtk.training import fit_transfer
from mtk.training import freeze_trunk
from mtk.training import recompile
from mtk.training import unfreeze_trunk
from mtk.tuning import MultiTaskHyperModel
from mtk.tuning import MultiTaskScore
from mtk.tuning import tune_loss_weights
from mtk.tuning import tune_multitask

__version__ = "0.1.0"
