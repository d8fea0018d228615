"""Gradient-level methods that align or edit the task gradients.

IMTL, GradVac and Aligned-MTL work from the ``(K, K)`` Gramian ``G G^T`` of
the task gradients alone: each edit they make to a task's gradient is a
combination of the original gradients, so the shared update is ``G^T w`` for
weights ``w`` that the Gramian determines (norms are ``sqrt(diag)``, the
inner product of ``G^T a`` with ``g_j`` is ``(M a)_j``). GradDrop acts on the
gradients at the shared features coordinate by coordinate, so it always
takes them there (``rep_grad=True``).
"""

import random

import keras
import tensorflow as tf
from keras import ops

from mtk.weighting.base import GradientWeighting
from mtk.weighting.base import check_positive

# float32 machine epsilon: the rank tolerance of Aligned-MTL's official code.
_EPS32 = 1.1920929e-07


def _eigen(gramian):
    """Eigen-decomposition of a Gramian, with a mask of its numerical rank.

    Eigenvalues at or below ``max(eigenvalue) * K * eps`` (the tolerance of
    Aligned-MTL's official code) count as zero, so rank-deficient or all-zero
    Gramians never divide by zero.

    Returns:
        ``(eigenvalues, eigenvectors, keep)``: ascending eigenvalues, the
        eigenvectors as columns, and a boolean mask of the kept ones.
    """
    gramian = ops.cast(gramian, "float32")
    gramian = 0.5 * (gramian + ops.transpose(gramian))
    values, vectors = tf.linalg.eigh(gramian)
    count = gramian.shape[0]
    tol = ops.max(values) * count * _EPS32
    keep = ops.logical_and(ops.greater(values, tol), ops.greater(values, 0.0))
    return values, vectors, keep


def _pseudo_inverse(gramian):
    """Moore-Penrose inverse of a Gramian, from its kept eigenvalues."""
    values, vectors, keep = _eigen(gramian)
    inverse = ops.where(keep, 1.0 / ops.where(keep, values, 1.0), 0.0)
    return ops.matmul(vectors * inverse[None, :], ops.transpose(vectors))


def imtl_weights(gramian):
    """IMTL-G's weights (Liu et al. 2021, Sec. 3.2) from the Gramian.

    The paper's closed form, ``alpha_{2:K} = g_1 U^T (D U^T)^{-1}`` and
    ``alpha_1 = 1 - sum(alpha_{2:K})`` with ``D`` the rows ``g_1 - g_i`` and
    ``U`` the rows ``u_1 - u_i`` of unit gradients, is the solution of
    ``g . u_i = c`` for every task with ``sum(alpha) = 1``. With
    ``g = G^T alpha`` that reads ``M alpha = c n`` (``n`` the gradient norms),
    so ``alpha = M^+ n / sum(M^+ n)``: the pseudo-inverse keeps it defined
    when gradients are linearly dependent, and a task whose gradient is zero
    (all its labels missing) gets weight 0.

    When ``sum(M^+ n) < 0`` the paper's normalisation makes the common
    projection ``c`` negative, a direction that increases every task's loss;
    here the sum's absolute value is used instead, so ``c > 0`` always (the
    weights then sum to -1).

    Args:
        gramian: ``(K, K)`` inner products of the task gradients.

    Returns:
        ``(K,)`` float32 weights; ``1 / K`` each when every gradient is zero.

    Example:

    >>> g = np.array([[1.0, 0.0], [0.0, 2.0]], "float32")
    >>> w = mtk.weighting.alignment.imtl_weights(tf.constant(g @ g.T)).numpy()
    >>> np.round(w.astype("float64"), 4).tolist()
    [0.6667, 0.3333]
    >>> np.round((w @ g).astype("float64"), 4).tolist()  # equal projections
    [0.6667, 0.6667]
    """
    gramian = ops.cast(gramian, "float32")
    count = gramian.shape[0]
    norms = ops.sqrt(ops.maximum(tf.linalg.diag_part(gramian), 0.0))
    solution = ops.matmul(_pseudo_inverse(gramian), norms[:, None])[:, 0]
    total = ops.sum(solution)
    ok = ops.logical_and(
        ops.greater(ops.abs(total), 0.0), ops.all(ops.isfinite(solution))
    )
    weights = solution / ops.where(ok, ops.abs(total), 1.0)
    return ops.where(ok, weights, ops.ones((count,), "float32") / count)


def gradvac_coefficients(gramian, targets, beta, shuffle=True):
    """GradVac's edited gradients as combinations of the originals.

    For each task i, over the other tasks j (in random order, as PCGrad
    visits them): with ``phi = cos(g_i', g_j)`` and target ``t = phi_hat_ij``,
    when ``phi < t`` (Wang et al. 2021, the update of Algorithm 1)::

        g_i' += |g_i'| (t sqrt(1 - phi^2) - phi sqrt(1 - t^2))
                / (|g_j| sqrt(1 - t^2)) * g_j

    which sets ``cos(g_i', g_j)`` to ``t``; and, edit or not, the target
    moves toward the observed similarity,
    ``phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi`` (Algorithm 1; LibMTL
    moves it only for pairs it edits, so its targets can only fall).
    ``g_i' = sum_j C_ij g_j``, so its norm and inner products come from the
    Gramian. Pairs where either gradient is zero are left
    alone, targets included; targets are clipped to ``|t| <= 1 - 1e-6`` so
    the edit stays finite.

    Args:
        gramian: ``(K, K)`` inner products of the task gradients.
        targets: ``(K, K)`` current targets ``phi_hat`` (diagonal unused).
        beta: EMA rate of the targets.
        shuffle: visit the other tasks in random order.

    Returns:
        ``(C, new_targets)``: the ``(K, K)`` coefficients and targets.
    """
    gramian = ops.cast(gramian, "float32")
    targets = ops.cast(targets, "float32")
    count = gramian.shape[0]
    identity = ops.eye(count, dtype="float32")
    norms = ops.sqrt(ops.maximum(tf.linalg.diag_part(gramian), 0.0))
    new_targets = targets
    rows = []
    for i in range(count):
        row = identity[i]  # g_i' as a combination of the g_j
        order = tf.random.shuffle(tf.range(count)) if shuffle else tf.range(count)
        for k in range(count):
            j = order[k]
            dot = ops.sum(row * tf.gather(gramian, j))  # g_i' . g_j
            norm_i = ops.sqrt(ops.maximum(
                ops.sum(row * ops.matmul(gramian, row[:, None])[:, 0]), 0.0))
            norm_j = tf.gather(norms, j)
            valid = ops.logical_and(
                ops.not_equal(j, i),
                ops.logical_and(ops.greater(norm_i, 0.0), ops.greater(norm_j, 0.0)),
            )
            phi = ops.clip(
                dot / ops.where(valid, norm_i * norm_j, 1.0), -1.0, 1.0)
            target = ops.clip(tf.gather(tf.gather(targets, i), j), -1.0 + 1e-6, 1.0 - 1e-6)
            edit = ops.logical_and(valid, ops.less(phi, target))
            sine_target = ops.sqrt(1.0 - target * target)
            coefficient = norm_i * (
                target * ops.sqrt(ops.maximum(1.0 - phi * phi, 0.0)) - phi * sine_target
            ) / (ops.where(valid, norm_j, 1.0) * sine_target)
            pick = tf.one_hot(j, count, dtype="float32")
            row = row + ops.where(edit, coefficient, 0.0) * pick
            old = tf.gather(tf.gather(targets, i), j)
            moved = ops.where(valid, (1.0 - beta) * old + beta * phi, old)
            new_targets = new_targets + (moved - old) * (identity[i][:, None] * pick[None, :])
        rows.append(row)
    return ops.stack(rows), new_targets


def aligned_mtl_weights(gramian, scale_mode="min"):
    """Aligned-MTL's weights (Senushkin et al. 2023) from the Gramian.

    With ``G^T = U S V^T`` (task gradients as columns) and ``M = V S^2 V^T``,
    the aligned gradients are the columns of ``sigma G^T V S^-1 V^T``: they
    are orthogonal with equal norms ``sigma`` (on the gradients' span), and
    summing them (uniform task weights) is ``G^T w`` with ``w`` the row sums
    of ``sigma V S^-1 V^T``. ``sigma`` is the smallest singular value
    (``"min"``, the paper's), the median (``"median"``, the lower one as in
    the official code) or the root mean square (``"rmse"``) of the non-zero
    ones. Only the numerical rank is used: zero eigenvalues (dependent or
    zero gradients) drop out.

    Args:
        gramian: ``(K, K)`` inner products of the task gradients.
        scale_mode: ``"min"``, ``"median"`` or ``"rmse"``.

    Returns:
        ``(K,)`` float32 weights; ones when every gradient is zero.

    Example:

    >>> g = np.array([[3.0, 0.0], [0.0, 1.0]], "float32")
    >>> w = mtk.weighting.alignment.aligned_mtl_weights(tf.constant(g @ g.T))
    >>> np.round((w.numpy() @ g).astype("float64"), 4).tolist()  # both to norm 1
    [1.0, 1.0]
    """
    values, vectors, keep = _eigen(gramian)
    count = values.shape[0]
    rank = ops.sum(ops.cast(keep, "int32"))
    kept = ops.where(keep, values, 0.0)
    if scale_mode == "min":
        scale = ops.min(ops.where(keep, values, float("inf")))
    elif scale_mode == "median":
        # Eigenvalues ascend and the kept ones are the largest `rank`.
        index = count - rank + ops.maximum(rank - 1, 0) // 2
        scale = tf.gather(values, ops.minimum(index, count - 1))
    elif scale_mode == "rmse":
        scale = ops.sum(kept) / ops.cast(ops.maximum(rank, 1), "float32")
    else:
        raise ValueError(f"Unknown scale_mode {scale_mode!r}.")
    scale = ops.where(ops.greater(rank, 0), scale, 0.0)
    inverse_sigma = ops.where(keep, ops.rsqrt(ops.where(keep, values, 1.0)), 0.0)
    factors = ops.sqrt(ops.maximum(scale, 0.0)) * inverse_sigma
    balance = ops.matmul(vectors * factors[None, :], ops.transpose(vectors))
    weights = ops.sum(balance, axis=1)
    return ops.where(ops.greater(rank, 0), weights, ops.ones((count,), "float32"))


def sign_purity(rows, signs=None):
    """GradDrop's positive sign purity ``P`` (Chen et al. 2020, Eq. 1).

    ``P = 1/2 (1 + sum_i g_i / sum_i |g_i|)`` per coordinate of the shared
    features, with each task's gradient first summed over the batch (after
    multiplying by the sign of the activations when they are given), as the
    paper does for batch-separated activations. ``P = 1/2`` where every
    gradient is zero.

    Args:
        rows: ``(K, batch, ...)`` task gradients at the shared features.
        signs: optional ``(batch, ...)`` sign of the features.

    Returns:
        ``(P, signal)``: ``(...)`` purity and the ``(K, ...)`` batch sums.
    """
    rows = ops.cast(rows, "float32")
    if signs is not None:
        rows = rows * ops.cast(signs, "float32")[None]
    signal = ops.sum(rows, axis=1)
    return _purity(signal), signal


def _purity(signal):
    total = ops.sum(signal, axis=0)
    mass = ops.sum(ops.abs(signal), axis=0)
    return 0.5 * (1.0 + total / ops.where(ops.greater(mass, 0.0), mass, 1.0))


def sign_dropout(rows, uniform, leak=0.0, signs=None, signal=None):
    """GradDrop's gradient at the shared features (Chen et al. 2020, Alg. 1).

    Per coordinate, with ``U`` uniform in [0, 1) and ``P`` from
    `sign_purity`: where ``P > U`` only the tasks whose batch-summed gradient
    is positive keep their gradient there, elsewhere only the negative ones
    (``M_i = [P > U][g_i > 0] + [P <= U][g_i < 0]``, one mask for the whole
    batch). The result is ``sum_i (l_i + (1 - l_i) M_i) g_i``, with ``leak``
    ``l_i``: 0 is pure GradDrop, 1 passes task i's gradient unchanged.

    Args:
        rows: ``(K, batch, ...)`` task gradients at the shared features.
        uniform: ``(...)`` the uniform draw, one per feature coordinate.
        leak: a number, or one per task, in [0, 1].
        signs: optional ``(batch, ...)`` sign of the features.
        signal: optional ``(K, ...)`` batch sums to decide the signs from
            (default: this batch's, from `sign_purity`).

    Returns:
        ``(direction, masks)``: the ``(batch, ...)`` gradient and the
        ``(K, ...)`` float32 kept fractions ``l_i + (1 - l_i) M_i``.

    Example:

    >>> rows = tf.constant([[[1.0, -2.0]], [[-3.0, -1.0]]])  # K=2, batch=1
    >>> direction, _ = mtk.weighting.alignment.sign_dropout(
    ...     rows, uniform=tf.constant([0.5, 0.5]))
    >>> direction.numpy().tolist()  # P = (0.25, 0): negatives kept
    [[-3.0, -3.0]]
    """
    rows = ops.cast(rows, "float32")
    if signal is None:
        _, signal = sign_purity(rows, signs)
    purity = _purity(signal)
    positive = ops.greater(purity, uniform)[None]
    masks = ops.cast(ops.logical_or(
        ops.logical_and(positive, ops.greater(signal, 0.0)),
        ops.logical_and(ops.logical_not(positive), ops.less(signal, 0.0)),
    ), "float32")
    leak = ops.reshape(ops.convert_to_tensor(leak, "float32"), (-1,))
    leak = ops.reshape(leak, (-1,) + (1,) * (len(masks.shape) - 1))
    kept = leak + (1.0 - leak) * masks
    direction = ops.sum(kept[:, None] * rows, axis=0)
    return direction, kept


@keras.saving.register_keras_serializable(package="mtk")
class IMTL(GradientWeighting):
    """IMTL-G (Liu et al., ICLR 2021, "Towards Impartial Multi-task Learning").

    The shared update ``g = sum_i alpha_i g_i`` has the same projection onto
    every task's unit gradient ``u_i`` (Sec. 3.2, the closed form for
    ``alpha`` from ``D = [g_1 - g_i]`` and ``U = [u_1 - u_i]``), with
    ``sum(alpha) = 1``: no task is favoured, whatever its gradient's scale.
    See `imtl_weights` for the Gramian form and its guards (a negative
    ``sum`` flips the sign rather than ascending). The logged weights are
    ``alpha`` (they sum to 1, so the shared step is about one task's size,
    not the sum's). IMTL-L, the paper's learned loss scales, is not included.

    Use it when tasks' gradients differ a lot in magnitude and the larger
    ones would dominate; it costs one trunk backward pass per task (one with
    ``rep_grad=True``) plus a ``K x K`` eigen-decomposition.

    Args:
        rep_grad: see `mtk.weighting.base.GradientWeighting`.

    Example:

    >>> weighting = mtk.weighting.alignment.IMTL()
    >>> weighting.setup(["a", "b"])
    >>> g = np.array([[1.0, 0.0], [1.0, 1.0]], "float32")
    >>> w = weighting.shared_direction(tf.constant(g @ g.T), tf.ones(2))
    >>> d = w.numpy() @ g
    >>> abs(float(d @ g[0] - d @ g[1] / np.sqrt(2))) < 1e-5  # equal projections
    True
    """

    method = "imtl"

    def gramian_weights(self, gramian, losses):
        return imtl_weights(gramian)


@keras.saving.register_keras_serializable(package="mtk")
class GradVac(GradientWeighting):
    """GradVac (Wang et al., ICLR 2021, "Gradient Vaccine").

    Each task's gradient is pulled toward the others whenever their cosine
    similarity falls below an adaptive target ``phi_hat_ij``, an EMA of the
    similarities seen so far (Algorithm 1; see
    `gradvac_coefficients`): unlike PCGrad, which only acts on negative
    similarity, it also raises positive but below-usual ones. The update is
    the sum of the edited gradients, ``G^T w``. The targets live in the
    ``(K, K)`` variable ``targets`` (start at 0, saved with the model). The
    paper applies it per layer (or parameter group) with one target each;
    here it applies to the trunk's parameters as a whole (or to the shared
    features with ``rep_grad=True``).

    Use it when tasks are related and their gradients' agreement drifts
    (the paper's multilingual translation); it costs one trunk backward pass
    per task (one with ``rep_grad=True``) plus ``O(K^3)`` small operations.

    Args:
        beta: EMA rate of the targets, in (0, 1]. The paper's experiments use
            1e-2; LibMTL and other re-implementations default to 0.5.
        shuffle: visit the other tasks in random order (as PCGrad does).
        rep_grad: see `mtk.weighting.base.GradientWeighting`.

    Example:

    >>> weighting = mtk.weighting.alignment.GradVac(beta=0.5, shuffle=False)
    >>> weighting.setup(["a", "b"])
    >>> g = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    >>> w = weighting.shared_direction(tf.constant(g @ g.T), tf.ones(2))
    >>> w.numpy().tolist()  # cos = 0 is not below the first target, 0
    [1.0, 1.0]
    >>> weighting.targets.numpy().tolist()
    [[0.0, 0.0], [0.0, 0.0]]
    """

    method = "gradvac"

    def __init__(self, beta=0.01, shuffle=True, **kwargs):
        check_positive("GradVac", "beta", beta)
        if beta > 1:
            raise ValueError(f"GradVac: beta must be in (0, 1], got {beta!r}.")
        if not isinstance(shuffle, bool):
            raise ValueError(f"GradVac: shuffle must be True or False, got {shuffle!r}.")
        super().__init__(**kwargs)
        self.beta = beta
        self.shuffle = shuffle

    def build_state(self, num_heads):
        super().build_state(num_heads)
        self.targets = self.add_weight(
            shape=(num_heads, num_heads), initializer="zeros", trainable=False,
            aggregation="mean", name="targets",
        )

    def gramian_weights(self, gramian, losses):
        coefficients, targets = gradvac_coefficients(
            gramian, self.targets, self.beta, self.shuffle)
        self.targets.assign(targets)
        return ops.sum(coefficients, axis=0)

    def get_config(self):
        config = super().get_config()
        config.update({"beta": self.beta, "shuffle": self.shuffle})
        return config


@keras.saving.register_keras_serializable(package="mtk")
class AlignedMTL(GradientWeighting):
    """Aligned-MTL (Senushkin et al., CVPR 2023, "Independent Component
    Alignment for Multi-Task Learning").

    Makes the task gradients' matrix well conditioned before summing it:
    the aligned gradients ``sigma U V^T`` (from the SVD ``U S V^T`` of the
    gradients: the paper's alignment step, Sec. 4, with the balance
    transformation computed from the eigen-decomposition of the Gramian, as
    the official code does) are
    orthogonal with equal norms ``sigma``, and the update is their sum (uniform
    task weights); see `aligned_mtl_weights`. The logged weights are ``w`` of
    ``G^T w``.

    Use it when gradients conflict or differ in scale (a dominating or
    ill-conditioned set of tasks); it costs one trunk backward pass per task
    (one with ``rep_grad=True``, the paper's Aligned-MTL-UB) plus a ``K x K``
    eigen-decomposition.

    Args:
        scale_mode: the common norm ``sigma``: ``"min"`` (smallest singular
            value, the paper's and the official default), ``"median"`` or
            ``"rmse"`` (the official code's other options).
        rep_grad: see `mtk.weighting.base.GradientWeighting`.

    Example:

    >>> weighting = mtk.weighting.alignment.AlignedMTL()
    >>> weighting.setup(["a", "b"])
    >>> g = np.array([[2.0, 0.0], [2.0, 2.0]], "float32")
    >>> w = weighting.shared_direction(tf.constant(g @ g.T), tf.ones(2))
    >>> bool(np.all(np.isfinite(w.numpy())))
    True
    """

    method = "aligned_mtl"
    scale_modes = ("min", "median", "rmse")

    def __init__(self, scale_mode="min", **kwargs):
        if scale_mode not in self.scale_modes:
            raise ValueError(
                f"AlignedMTL: scale_mode must be one of {list(self.scale_modes)}, "
                f"got {scale_mode!r}."
            )
        super().__init__(**kwargs)
        self.scale_mode = scale_mode

    def gramian_weights(self, gramian, losses):
        return aligned_mtl_weights(gramian, self.scale_mode)

    def get_config(self):
        config = super().get_config()
        config["scale_mode"] = self.scale_mode
        return config


def _replica_sum(value):
    # Lazily: mtk.model imports mtk.weighting.
    from mtk.model import replica_sum

    return replica_sum(value)


@keras.saving.register_keras_serializable(package="mtk")
class GradDrop(GradientWeighting):
    """GradDrop (Chen et al., NeurIPS 2020, "Just Pick a Sign: Optimizing Deep
    Multitask Models with Gradient Sign Dropout").

    At the shared features, coordinate by coordinate, keeps only the task
    gradients of one sign, positive with probability equal to the sign purity
    ``P = 1/2 (1 + sum_i g_i / sum_i |g_i|)`` (Eq. 1-2, Algorithm 1; see
    `sign_dropout`), and backpropagates their sum into the trunk. As in the
    paper each task's gradient is summed over the batch before ``P`` and the
    signs are taken (one mask per coordinate for the whole batch); the
    activations' sign, which the paper multiplies in first, is taken as
    positive (exact for ReLU or pooled ReLU features) unless the caller hands
    ``features`` to `feature_direction`. Under tf.distribute the batch sums
    are summed over replicas and every replica draws the same ``U``, so the
    masks are those of the global batch. The paper's keep function is the
    linear one used here; the official code's optional gradient-norm
    rescaling is not applied.

    Use it when many tasks pull the shared features in conflicting
    directions and some randomness is welcome; it costs one backward pass to
    the features per task and one through the trunk, like ``rep_grad=True``
    (which it requires).

    The logged weights are each task's share of its gradient's L1 mass (over
    the global batch) that was kept: 1 with ``leak=1``, smaller the more of
    the task's gradient was dropped.

    Args:
        leak: in [0, 1], one number or one per head: how much of each task's
            gradient passes regardless of the mask (0, the paper's default,
            is pure GradDrop; 1 passes the task's gradient unchanged).
        seed: integer seed of the masks' draws (with a step counter kept in
            the variable ``step``, so runs are reproducible). Default: drawn
            once from Python's `random` at construction (so
            `keras.utils.set_random_seed` fixes it) and kept in the config.
        rep_grad: must be True (the default): GradDrop acts on the features.

    Example:

    >>> weighting = mtk.weighting.alignment.GradDrop(leak=1.0, seed=0)
    >>> weighting.setup(["a", "b"])
    >>> rows = tf.constant([[[1.0, -2.0]], [[-3.0, 1.0]]])
    >>> weighting.feature_direction(rows, None, tf.ones(2)).numpy().tolist()
    [[-2.0, -1.0]]
    """

    method = "graddrop"

    def __init__(self, leak=0.0, seed=None, rep_grad=True, **kwargs):
        if rep_grad is not True:
            raise ValueError(
                "GradDrop: rep_grad must be True; GradDrop masks the gradients "
                f"at the shared features coordinate by coordinate, got {rep_grad!r}."
            )
        leaks = list(leak) if isinstance(leak, (list, tuple)) else [leak]
        for value in leaks:
            check_positive("GradDrop", "leak", value, allow_zero=True)
            if value > 1:
                raise ValueError(f"GradDrop: leak must be in [0, 1], got {leak!r}.")
        if seed is None:
            seed = random.randint(0, 2**31 - 1)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"GradDrop: seed must be an integer, got {seed!r}.")
        super().__init__(rep_grad=True, **kwargs)
        self.leak = list(leak) if isinstance(leak, (list, tuple)) else leak
        self.seed = seed

    def check_heads(self, head_names):
        super().check_heads(head_names)
        if isinstance(self.leak, list) and len(self.leak) != len(head_names):
            raise ValueError(
                f"GradDrop: leak has {len(self.leak)} values but the model has "
                f"{len(head_names)} heads ({list(head_names)})."
            )

    def build_state(self, num_heads):
        super().build_state(num_heads)
        # Same value on every replica; integer, like an optimizer's iterations.
        self.step = self.add_weight(
            shape=(), initializer="zeros", dtype="int64", trainable=False,
            aggregation="only_first_replica", name="step",
        )

    def gramian_weights(self, gramian, losses):
        raise NotImplementedError(
            "GradDrop works on the gradients at the shared features "
            "(feature_direction), not from the Gramian."
        )

    def feature_direction(self, rows, gramian, losses, features=None):
        """The masked sum of the task gradients at the features.

        Args:
            rows: ``(K, batch, ...)`` float32 task gradients at the shared
                features (this replica's examples).
            gramian: unused.
            losses: unused.
            features: optional ``(batch, ...)`` shared features, whose sign
                multiplies the gradients before the batch sum.

        Returns:
            ``(batch, ...)`` the gradient to backpropagate into the trunk.
        """
        rows = ops.cast(rows, "float32")
        signs = None if features is None else ops.sign(ops.cast(features, "float32"))
        _, signal = sign_purity(rows, signs)
        signal = _replica_sum(signal)
        step = ops.convert_to_tensor(self.step)
        uniform = tf.random.stateless_uniform(
            tf.shape(signal)[1:],
            seed=tf.stack([tf.constant(self.seed, "int64"), tf.cast(step, "int64")]),
        )
        direction, kept = sign_dropout(rows, uniform, self.leak, signal=signal)
        self.step.assign(step + 1)
        # Each task's share of its gradient's L1 mass that was kept.
        mass = ops.abs(rows)
        axes = tuple(range(1, len(rows.shape)))
        totals = _replica_sum(ops.stack([
            ops.sum(mass * kept[:, None], axis=axes), ops.sum(mass, axis=axes)
        ]))
        share = ops.where(
            ops.greater(totals[1], 0.0),
            totals[0] / ops.where(ops.greater(totals[1], 0.0), totals[1], 1.0),
            1.0,
        )
        self.last_weights.assign(share)
        return direction

    def get_config(self):
        config = super().get_config()
        config.update({"leak": self.leak, "seed": self.seed})
        return config
