"""Tuning per-head loss weights with KerasTuner.

Laid out like KerasTuner's own engine (hypermodel / tuner / oracle):

- `mtk.tuning.score`: the weight-independent score trials are ranked by,
  ``val_multitask_score`` (`MultiTaskScore`, `HeadReference`,
  `score_references`): skill over chance per head, or Δm against single-task
  baselines. The validation loss cannot rank loss weights: a tuner
  minimising ``val_loss`` just shrinks every weight.
- `mtk.tuning.hypermodel`: `MultiTaskHyperModel`, the search space (one
  log-uniform weight per head, optionally learning rates and unfreezing).
- `mtk.tuning.tuners`: KerasTuner's RandomSearch, BayesianOptimization and
  Hyperband with `best_loss_weights`, `best_model` and `trials_table` added
  (`TUNERS`), and `make_objective`.
- `mtk.tuning.tune`: `tune_loss_weights`, the one call that runs a search.
- `mtk.tuning.search`: `tune_multitask`, a search over how to multi-task
  (balancing method, sharing architecture, weights, schedule; choices and
  step-time cost in `mtk.tuning.space`), and `plot_search`, score against
  step time with the Pareto front.
- `mtk.tuning.distributed`: KerasTuner's distributed mode (one chief, many
  workers, set by ``KERASTUNER_*`` environment variables): `tuner_role`,
  and a worker's bounded wait for its chief.
"""

from mtk.tuning.distributed import CHIEF_TIMEOUT
from mtk.tuning.distributed import tuner_role
from mtk.tuning.hypermodel import DEFAULT_WEIGHT_RANGE
from mtk.tuning.hypermodel import WEIGHT_PREFIX
from mtk.tuning.hypermodel import MultiTaskHyperModel
from mtk.tuning.score import OBJECTIVE
from mtk.tuning.score import SCORE_NAME
from mtk.tuning.score import HeadReference
from mtk.tuning.score import MultiTaskScore
from mtk.tuning.score import score_references
from mtk.tuning.search import SEARCH_KEYS
from mtk.tuning.search import check_search
from mtk.tuning.search import pareto_front
from mtk.tuning.search import plot_search
from mtk.tuning.search import tune_multitask
from mtk.tuning.space import COST_OBJECTIVE
from mtk.tuning.space import STEP_TIME
from mtk.tuning.space import Tunable
from mtk.tuning.tune import tune_loss_weights
from mtk.tuning.tuners import TUNERS
from mtk.tuning.tuners import LossWeightBayesianOptimization
from mtk.tuning.tuners import LossWeightHyperband
from mtk.tuning.tuners import LossWeightRandomSearch
from mtk.tuning.tuners import LossWeightTunerMixin
from mtk.tuning.tuners import make_objective

__all__ = [
    "CHIEF_TIMEOUT",
    "COST_OBJECTIVE",
    "DEFAULT_WEIGHT_RANGE",
    "HeadReference",
    "LossWeightBayesianOptimization",
    "LossWeightHyperband",
    "LossWeightRandomSearch",
    "LossWeightTunerMixin",
    "MultiTaskHyperModel",
    "MultiTaskScore",
    "OBJECTIVE",
    "SCORE_NAME",
    "SEARCH_KEYS",
    "STEP_TIME",
    "TUNERS",
    "Tunable",
    "WEIGHT_PREFIX",
    "check_search",
    "make_objective",
    "pareto_front",
    "plot_search",
    "score_references",
    "tune_loss_weights",
    "tune_multitask",
    "tuner_role",
]
