"""How tasks share the model: what each head reads.

``build_multitask_model(..., sharing=...)`` takes a name or an object:

- ``"hard"`` (default, `HardSharing`): every head reads the trunk's pooled
  features. Cheapest; the right start when tasks are related.
- `MMoE` (Ma et al. 2018): shared experts on the pooled features, one
  softmax gate per head. Loosely related tasks; recommender/ads defaults.
- `CGC` / `PLE` (Tang et al. 2020): shared experts plus each task's own,
  over one or more levels. When MMoE still shows a "seesaw" between tasks.
- `MTAN` (Liu et al. 2019): per-head attention masks over the shared
  trunk's feature maps at named layers. Image trunks, dense features.
- `CrossStitch` (Misra et al. 2016): one trunk copy per head, mixed at
  named layers by learned units. About K times the trunk's cost.

`expert_usage` and `plot_expert_usage` show how each head's gates use the
experts (MMoE, CGC, PLE). The contract a method follows is in
`mtk.sharing.base`.
"""

from mtk.sharing.attention import MTAN
from mtk.sharing.attention import TaskAttention
from mtk.sharing.base import Connection
from mtk.sharing.base import HardSharing
from mtk.sharing.base import Sharing
from mtk.sharing.cross_stitch import CrossStitch
from mtk.sharing.cross_stitch import CrossStitchUnit
from mtk.sharing.experts import CGC
from mtk.sharing.experts import MMoE
from mtk.sharing.experts import PLE
from mtk.sharing.experts import ExpertNetwork
from mtk.sharing.experts import expert_usage
from mtk.sharing.experts import load_balancing_loss
from mtk.sharing.experts import plot_expert_usage

# Names accepted by sharing=; objects give the methods' parameters.
METHODS = {"hard": HardSharing, "mmoe": MMoE, "cgc": CGC, "ple": PLE}
ARCHITECTURES = (HardSharing, MMoE, CGC, PLE, MTAN, CrossStitch)


def get_sharing(sharing):
    """A sharing object from a name (`METHODS`) or an object, or an error.

    Example:

    >>> mtk.sharing.get_sharing("mmoe")
    MMoE(num_experts=8, expert_units=[64], expert_activation='relu', load_balancing=0.0)
    >>> mtk.sharing.get_sharing("mtan")
    Traceback (most recent call last):
    ...
    ValueError: sharing='mtan' needs the trunk layers it reads: pass mtk.sharing.MTAN(at=[...layer names]). ...
    """
    if sharing is None:
        return HardSharing()
    if isinstance(sharing, Sharing):
        return sharing
    if isinstance(sharing, str):
        key = sharing.lower().replace("-", "_")
        if key in METHODS:
            return METHODS[key]()
        for cls in (MTAN, CrossStitch):
            if key == cls.name:
                raise ValueError(
                    f"sharing={sharing!r} needs the trunk layers it reads: pass "
                    f"mtk.sharing.{cls.__name__}(at=[...layer names]). Known "
                    f"names: {sorted(METHODS)}."
                )
    raise ValueError(
        f"Unknown sharing={sharing!r}. Known names: {sorted(METHODS)}; or pass "
        "an object: mtk.sharing.MMoE(...), CGC(...), PLE(...), MTAN(at=...), "
        "CrossStitch(at=...)."
    )
