"""Task balancing: how per-head losses, or their gradients, combine.

``build_multitask_model(..., loss_weighting=...)`` takes a method name or
object; every method trains with ``model.fit`` and `mtk.fit_transfer`, under
tf.distribute and mixed precision too:

- ``"static"`` (default, `StaticWeighting`): the compile-time
  ``loss_weights`` dict. The honest baseline; tune it with `mtk.tuning`.
- ``"uncertainty"`` (`UncertaintyWeighting`, Kendall et al. 2018): learned
  per-task log-variances. Tasks with different noise levels or units.
- ``"dwa"`` (`DynamicWeightAverage`, Liu et al. 2019): weights from how fast
  each loss fell over the last two epochs. Keeps slow tasks from being left
  behind.
- ``"gradnorm"`` (`GradNorm`, Chen et al. 2018): weights that push the
  tasks' gradient norms at the shared features toward equal. Loss scales that
  differ by orders of magnitude.
- ``"pcgrad"`` (`PCGrad`, Yu et al. 2020): projects conflicting components
  of the task gradients on the trunk off each other. Tasks whose gradients
  conflict; about one trunk backward pass per task.
- Loss level, also: ``"rlw"``, ``"gls"``, ``"famo"``, ``"db_mtl"``,
  ``"stch"`` (`mtk.weighting.loss_balancing`).
- Gradient level, also: ``"mgda"``, ``"cagrad"``, ``"nash_mtl"``,
  ``"upgrad"`` (`mtk.weighting.min_norm`); ``"imtl"``, ``"gradvac"``,
  ``"aligned_mtl"``, ``"graddrop"`` (`mtk.weighting.alignment`). Each
  takes ``rep_grad=True`` to work on gradients at the shared features (one
  trunk backward pass instead of K; GradDrop always does).

Effective weights are logged every epoch as ``<head>_loss_weight`` (dynamic
methods). ``loss`` and ``val_loss`` mean the same for every method: the sum
of the heads' masked losses weighted by the compile-time ``loss_weights``
(1 each under a dynamic method), plus regularisation losses; the per-head
``<head>_loss`` are unweighted. A method's state (learned log-variances,
loss histories, weights) lives in variables: it is saved with the model,
restored by ``BackupAndRestore`` and carries over fit_transfer's phases. The
contract a method follows is in `mtk.weighting.base`.
"""

from mtk.weighting.alignment import IMTL
from mtk.weighting.alignment import AlignedMTL
from mtk.weighting.alignment import GradDrop
from mtk.weighting.alignment import GradVac
from mtk.weighting.base import GradientWeighting
from mtk.weighting.base import LossWeighting
from mtk.weighting.base import StaticWeighting
from mtk.weighting.gradient_level import GradNorm
from mtk.weighting.gradient_level import PCGrad
from mtk.weighting.gradient_level import project_conflicting
from mtk.weighting.loss_balancing import FAMO
from mtk.weighting.loss_balancing import DualBalancing
from mtk.weighting.loss_balancing import GeometricLossStrategy
from mtk.weighting.loss_balancing import RandomLossWeighting
from mtk.weighting.loss_balancing import SmoothTchebycheff
from mtk.weighting.loss_level import DynamicWeightAverage
from mtk.weighting.loss_level import UncertaintyWeighting
from mtk.weighting.loss_level import dwa_weights
from mtk.weighting.min_norm import MGDA
from mtk.weighting.min_norm import CAGrad
from mtk.weighting.min_norm import NashMTL
from mtk.weighting.min_norm import UPGrad

_CLASSES = (
    # Loss level: one backward pass.
    StaticWeighting,
    UncertaintyWeighting,
    DynamicWeightAverage,
    RandomLossWeighting,
    GeometricLossStrategy,
    FAMO,
    DualBalancing,
    SmoothTchebycheff,
    # Gradient norms at the shared features.
    GradNorm,
    # Gradient level: a direction from the task gradients' Gramian.
    PCGrad,
    MGDA,
    CAGrad,
    NashMTL,
    UPGrad,
    IMTL,
    GradVac,
    AlignedMTL,
    GradDrop,
)
METHODS = tuple(cls.method for cls in _CLASSES)
_CLASS_OF_METHOD = {cls.method: cls for cls in _CLASSES}


def get_loss_weighting(loss_weighting="static"):
    """Resolves a method name or `LossWeighting` object to a fresh object.

    Example:

    >>> type(mtk.weighting.get_loss_weighting("dwa")).__name__
    'DynamicWeightAverage'
    """
    if loss_weighting is None:
        loss_weighting = "static"
    if isinstance(loss_weighting, LossWeighting):
        if loss_weighting.built:
            raise ValueError(
                f"The loss_weighting object {loss_weighting.name!r} already "
                "belongs to a model; create a new one for each model."
            )
        return loss_weighting
    if isinstance(loss_weighting, str) and loss_weighting in _CLASS_OF_METHOD:
        return _CLASS_OF_METHOD[loss_weighting]()
    raise ValueError(
        f"Unknown loss_weighting {loss_weighting!r}; expected one of "
        f"{list(METHODS)} or an mtk.weighting.LossWeighting object."
    )


from mtk.weighting.comparison import compare  # noqa: E402  (needs METHODS)
