"""Gradient-level balancing that solves a small problem over task weights.

MGDA, CAGrad, Nash-MTL and UPGrad each pick the shared update ``G^T w`` by
solving a K-dimensional optimisation problem whose data is the task Gramian
``M = G G^T`` alone: ``|g_i| = sqrt(M_ii)``, ``g_i . g_j = M_ij``, a
combination ``G^T a`` has norm ``sqrt(a^T M a)`` and inner product
``(M a)_j`` with ``g_j``. The papers hand these problems to cvxpy, quadprog or
scipy; here every solver is TensorFlow ops with a fixed iteration count, so it
runs inside the compiled train step (XLA included), on any device, under
tf.distribute (the Gramian is already summed over replicas, so every replica
solves the same problem).

- `min_norm_weights`: Frank-Wolfe for the min-norm point of the convex hull
  (MGDA; exact for two tasks).
- `cagrad_weights`: Frank-Wolfe with exact line search on CAGrad's dual.
- `nash_bargaining_weights`: damped Newton for ``M a = 1 / a`` (Nash-MTL).
- `dual_cone_weights`: a primal-dual active-set method for UPGrad's
  projections onto the dual cone.

A Gramian of zero (a frozen trunk, dead features) gives finite weights and a
zero update; no solver divides by a quantity that can vanish.
"""

import functools

import keras
import tensorflow as tf
from keras import ops

from mtk.weighting.base import GradientWeighting
from mtk.weighting.base import check_integer
from mtk.weighting.base import check_positive

# Below this a squared norm counts as zero (float32 gradients of mean losses).
_TINY = 1e-20


def _graph_when_eager(function):
    """Runs ``function`` as a tf.function when called eagerly (its loops then
    run as graph loops, not Python ones); inline when already in a graph."""
    compiled = tf.function(function, autograph=False)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if tf.executing_eagerly():
            return compiled(*args, **kwargs)
        return function(*args, **kwargs)

    return wrapper


def _safe_divide(numerator, denominator):
    """``numerator / denominator`` where ``denominator > 0``, else 0."""
    positive = ops.greater(denominator, 0.0)
    return ops.where(
        positive, numerator / ops.where(positive, denominator, 1.0), 0.0
    )


def _scaled(gramian):
    """The Gramian divided by its trace (solutions here are scale-free)."""
    gramian = ops.cast(gramian, "float32")
    gramian = 0.5 * (gramian + ops.transpose(gramian))
    trace = ops.trace(gramian)
    return gramian / ops.maximum(trace, _TINY)


def _quadratic(weights, gramian):
    """``|G^T a|^2 = a^T M a`` (clipped at 0 against rounding)."""
    return ops.maximum(ops.sum(weights * ops.matmul(gramian, weights)), 0.0)


def _pairwise_vertices(gradient, weights):
    """Frank-Wolfe's vertex (smallest gradient) and the away vertex (largest
    gradient among the tasks with weight), as one-hot rows."""
    count = weights.shape[0]
    toward = ops.one_hot(ops.argmin(gradient), count, dtype="float32")
    away = ops.one_hot(
        ops.argmax(ops.where(ops.greater(weights, 0.0), gradient, -float("inf"))),
        count, dtype="float32")
    return toward, away


@_graph_when_eager
def min_norm_weights(gramian, max_iters=100):
    """Weights of the min-norm point of the task gradients' convex hull.

    Frank-Wolfe as in Sener & Koltun (2018), Algorithm 2, from uniform
    weights, in its pairwise form (Lacoste-Julien & Jaggi 2015): each step
    moves weight from the task whose gradient agrees most with the current
    point ``G^T a`` to the one that agrees least (the paper's ``argmin_r (M
    a)_r``), by the exact minimiser of ``|G^T a|^2`` on that segment (the
    closed form of the paper's Algorithm 1). It converges linearly, where
    the plain algorithm's error falls like 1 / iterations; for two tasks the
    first step is exact. A last step solves the problem exactly on the
    tasks Frank-Wolfe kept (one K x K linear solve), used only when its
    answer passes the optimality conditions.

    Args:
        gramian: ``(K, K)`` Gramian ``G G^T``.
        max_iters: Frank-Wolfe iterations.

    Returns:
        ``(K,)`` float32 weights on the simplex.

    Example:

    >>> w = mtk.weighting.min_norm.min_norm_weights(tf.constant([[1.0, 0.0], [0.0, 4.0]]))
    >>> [round(float(v), 4) for v in w]
    [0.8, 0.2]
    """
    gramian = _scaled(gramian)
    count = gramian.shape[0]

    def step(_, weights):
        product = ops.matmul(gramian, weights)  # (M a)_r = (G^T a) . g_r
        toward, away = _pairwise_vertices(product, weights)
        direction = toward - away
        slope = ops.sum(product * direction)  # (G^T a) . (g_t - g_s)
        curvature = ops.sum(direction * ops.matmul(gramian, direction))
        size = ops.clip(_safe_divide(-slope, curvature), 0.0, ops.sum(weights * away))
        return weights + size * direction

    start = ops.full((count,), 1.0 / count, dtype="float32")
    weights = ops.fori_loop(0, max_iters, step, start)
    return _polish_min_norm(gramian, weights)


def _polish_min_norm(gramian, weights):
    """The exact min-norm point on the support Frank-Wolfe found, if optimal.

    On the support S the optimum solves ``M_SS a_S = lambda 1`` (one K x K
    solve); it replaces Frank-Wolfe's answer only when it satisfies the
    optimality conditions: ``a >= 0`` and ``(M a)_j >= a^T M a`` for all j.
    """
    count = weights.shape[0]
    eye = ops.eye(count, dtype="float32")
    support = ops.cast(ops.greater(weights, 1e-5), "float32")
    system = support[:, None] * gramian * support[None, :] + (
        ops.diag(1.0 - support) + 1e-7 * eye)
    solved = tf.linalg.cholesky_solve(tf.linalg.cholesky(system), support[:, None])[:, 0]
    total = ops.sum(solved)
    exact = _safe_divide(solved, total)
    value = _quadratic(exact, gramian)
    optimal = (
        ops.greater(total, 0.0)
        & ops.all(ops.greater_equal(exact, -1e-6))
        & ops.all(ops.greater_equal(ops.matmul(gramian, exact), value - 1e-6))
        & ops.all(ops.isfinite(exact))
        & ops.less_equal(value, _quadratic(weights, gramian) + 1e-7)
    )
    exact = ops.maximum(exact, 0.0)
    return ops.where(optimal, exact / ops.maximum(ops.sum(exact), _TINY), weights)


@_graph_when_eager
def cagrad_weights(gramian, c=0.5, max_iters=100):
    """CAGrad's dual solution ``w`` and step ``lambda`` (Liu et al. 2021).

    Minimises ``F(w) = g_w . g0 + c |g0| |g_w|`` over the simplex, with
    ``g_w = G^T w`` and ``g0`` the mean gradient, by pairwise Frank-Wolfe
    (as in `min_norm_weights`) whose line search is exact: along a segment
    ``F`` is ``beta s + rho sqrt(A + 2 B s + C s^2)``, minimised in closed
    form. For two tasks the first step is exact. A last step solves the
    optimality conditions in closed form on the tasks Frank-Wolfe kept (see
    `_polish_cagrad`), used only when its answer passes them.

    Args:
        gramian: ``(K, K)`` Gramian ``G G^T``.
        c: CAGrad's radius ``c``.
        max_iters: Frank-Wolfe iterations.

    Returns:
        ``(w, lam)``: the ``(K,)`` dual weights and ``lam = c |g0| / |g_w|``,
        so that CAGrad's direction is ``g0 + lam g_w``.
    """
    raw = ops.cast(gramian, "float32")
    gramian = _scaled(raw)
    count = gramian.shape[0]
    mean = ops.full((count,), 1.0 / count, dtype="float32")
    linear = ops.matmul(gramian, mean)  # g_r . g0
    radius = c * ops.sqrt(_quadratic(mean, gramian))  # c |g0|

    def objective(slope, offset, first, second, size):
        return slope * size + radius * ops.sqrt(
            ops.maximum(offset + 2.0 * first * size + second * size * size, 0.0))

    def step(_, weights):
        product = ops.matmul(gramian, weights)
        offset = ops.maximum(ops.sum(product * weights), 0.0)  # |g_w|^2
        gradient = linear + radius * _safe_divide(product, ops.sqrt(offset))
        toward, away = _pairwise_vertices(gradient, weights)
        direction = toward - away
        # Along w + s (e_t - e_s): |g_w|^2 = offset + 2 first s + second s^2.
        first = ops.sum(product * direction)
        second = ops.maximum(ops.sum(direction * ops.matmul(gramian, direction)), 0.0)
        slope = ops.sum(linear * direction)
        limit = ops.sum(weights * away)
        # Stationary point: (first + second s) / sqrt(.) = -slope / radius.
        ratio = _safe_divide(-slope, radius)
        spread = ops.maximum(offset * second - first * first, 0.0)
        room = second - ratio * ratio
        root = _safe_divide(
            ratio * ops.sqrt(_safe_divide(spread, room)) - first, second)
        root = ops.where(ops.greater(room, 0.0), ops.clip(root, 0.0, limit), 0.0)
        candidates = ops.stack([ops.zeros_like(root), limit, root])
        values = objective(slope, offset, first, second, candidates)
        size = ops.take(candidates, ops.argmin(values))
        return weights + size * direction

    weights = ops.fori_loop(0, max_iters, step, mean)
    weights = _polish_cagrad(gramian, linear, radius, weights)
    # lambda from the raw Gramian: c |g0| / |g_w| (0 when every gradient is 0).
    step_size = _safe_divide(
        c * ops.sqrt(_quadratic(mean, raw)), ops.sqrt(_quadratic(weights, raw)))
    return weights, step_size


def _polish_cagrad(gramian, linear, radius, weights):
    """CAGrad's exact dual solution on the support Frank-Wolfe found, if optimal.

    On the support S, stationarity ``b_S + t M_SS w_S = lambda 1`` with ``t =
    radius / |g_w|`` and ``sum w = 1`` give ``w = p + q / t``: ``p`` the
    min-norm point of the support's affine hull, ``q`` orthogonal to it in
    ``M`` (``p^T M q = 0``), so ``|g_w|^2 = p^T M p + q^T M q / t^2`` and
    ``t = sqrt((radius^2 - q^T M q) / p^T M p)``. It replaces Frank-Wolfe's
    answer only when ``w >= 0``, the optimality conditions hold off the
    support, and the dual objective is no worse.
    """
    count = weights.shape[0]
    eye = ops.eye(count, dtype="float32")
    support = ops.cast(ops.greater(weights, 1e-5), "float32")
    system = support[:, None] * gramian * support[None, :] + (
        ops.diag(1.0 - support) + 1e-7 * eye)
    solved = tf.linalg.cholesky_solve(
        tf.linalg.cholesky(system), ops.stack([support, support * linear], axis=1))
    ones, tilted = solved[:, 0], solved[:, 1]
    total = ops.sum(ones)  # 1^T M_SS^-1 1
    affine = _safe_divide(ones, total)  # p
    residual = _safe_divide(ops.sum(tilted), total) * ones - tilted  # q
    curvature = _safe_divide(
        ops.square(radius) - _quadratic(residual, gramian), _quadratic(affine, gramian))
    scale = ops.sqrt(ops.maximum(curvature, 0.0))  # t
    exact = affine + _safe_divide(residual, scale)

    def objective(w):
        return ops.sum(linear * w) + radius * ops.sqrt(_quadratic(w, gramian))

    gradient = linear + scale * ops.matmul(gramian, exact)
    level = _safe_divide(ops.sum(gradient * support), ops.sum(support))
    optimal = (
        ops.greater(curvature, 0.0)
        & ops.all(ops.isfinite(exact))
        & ops.all(ops.greater_equal(exact, -1e-6))
        & ops.all(ops.greater_equal(gradient, level - 1e-5))
        & ops.less_equal(objective(exact), objective(weights) + 1e-7)
    )
    exact = ops.maximum(exact, 0.0)
    return ops.where(optimal, exact / ops.maximum(ops.sum(exact), _TINY), weights)


@_graph_when_eager
def nash_bargaining_weights(gramian, max_iters=20, reg_eps=1e-6):
    """The Nash bargaining weights: ``a > 0`` with ``M a = 1 / a``.

    They are the minimiser of the strictly convex ``f(a) = a^T M a / 2 -
    sum_i log a_i`` (its gradient is ``M a - 1 / a``), found by damped Newton
    steps ``a -= H^-1 grad / (1 + delta)`` with ``H = M + diag(1 / a^2)`` and
    ``delta`` the Newton decrement: ``f`` is self-concordant, so every step
    stays in ``a > 0`` and convergence is quadratic once ``delta < 1/4``.
    Starts from ``1 / sqrt(diag M)`` (the answer for orthogonal gradients)
    rescaled so that ``a^T M a = K``. The equation has no solution when 0 is
    a convex combination of the gradients (Pareto stationarity); ``reg_eps *
    I`` added to ``M`` keeps the answer finite then.

    Args:
        gramian: ``(K, K)`` Gramian ``G G^T``.
        max_iters: Newton steps.
        reg_eps: added to the Gramian's diagonal.

    Returns:
        ``(K,)`` float32 ``a``.

    Example:

    >>> a = mtk.weighting.min_norm.nash_bargaining_weights(tf.constant([[4.0, 0.0], [0.0, 1.0]]))
    >>> [round(float(v), 3) for v in a]
    [0.5, 1.0]
    """
    gramian = ops.cast(gramian, "float32")
    count = gramian.shape[0]
    eye = ops.eye(count, dtype="float32")
    gramian = 0.5 * (gramian + ops.transpose(gramian)) + reg_eps * eye
    start = 1.0 / ops.sqrt(ops.diagonal(gramian))
    start = start * ops.sqrt(count / _quadratic(start, gramian))

    def step(_, weights):
        gradient = ops.matmul(gramian, weights) - 1.0 / weights
        hessian = gramian + eye / ops.square(weights)[:, None]
        newton = tf.linalg.cholesky_solve(
            tf.linalg.cholesky(hessian), gradient[:, None])[:, 0]
        decrement = ops.sqrt(ops.maximum(ops.sum(gradient * newton), 0.0))
        return weights - newton / (1.0 + decrement)

    return ops.fori_loop(0, max_iters, step, start)


@_graph_when_eager
def dual_cone_weights(gramian, pref_vector=None, max_iters=20, norm_eps=1e-4,
                      reg_eps=1e-4):
    """UPGrad's weights: each ``u_i g_i`` projected onto the dual cone, summed.

    The projection of ``G^T u`` onto the dual cone ``{d : G d >= 0}`` of the
    task gradients is ``G^T v`` with ``v = argmin v^T M v`` subject to ``v >=
    u`` (Quinton & Rey 2024, Prop. 1). With ``u = u_i e_i`` for each task i
    (``u = pref_vector``), the K bound-constrained quadratic programs are
    solved together by a primal-dual active-set method (Hintermueller, Ito &
    Kunisch 2002): guess which bounds hold with equality, solve the linear
    system on the rest, repeat; on small problems it settles in a few steps.
    As in TorchJD, the Gramian is divided by its trace (zero when the trace
    is below ``norm_eps``) and ``reg_eps * I`` is added.

    Args:
        gramian: ``(K, K)`` Gramian ``G G^T``.
        pref_vector: ``(K,)`` weights ``u`` (default ``1 / K`` each).
        max_iters: active-set iterations.
        norm_eps: trace below which the Gramian counts as zero.
        reg_eps: added to the (normalised) Gramian's diagonal.

    Returns:
        ``(K,)`` float32 weights ``sum_i v_i``.

    Example:

    >>> w = mtk.weighting.min_norm.dual_cone_weights(tf.constant([[1.0, -1.0], [-1.0, 4.0]]))
    >>> [round(float(v), 2) for v in w]
    [1.0, 0.62]
    """
    gramian = ops.cast(gramian, "float32")
    count = gramian.shape[0]
    eye = ops.eye(count, dtype="float32")
    gramian = 0.5 * (gramian + ops.transpose(gramian))
    trace = ops.trace(gramian)
    gramian = ops.where(
        ops.greater_equal(trace, norm_eps) & ops.greater(trace, 0.0),
        gramian / ops.maximum(trace, _TINY), 0.0) + reg_eps * eye
    if pref_vector is None:
        pref_vector = ops.full((count,), 1.0 / count, dtype="float32")
    bounds = eye * ops.cast(pref_vector, "float32")[None, :]  # row i: u_i e_i

    def step(_, rows):
        multipliers = ops.matmul(rows, gramian)  # row i: M v_i
        active = ops.cast(ops.greater(multipliers - (rows - bounds), 0.0), "float32")
        free = 1.0 - active
        # v = u on the active set; (M v)_j = 0 on the free set.
        system = free[:, :, None] * gramian[None] * free[:, None, :] + (
            active[:, :, None] * eye[None])
        rhs = -free * ops.matmul(active * bounds, gramian)
        solved = tf.linalg.cholesky_solve(tf.linalg.cholesky(system), rhs[:, :, None])
        return active * bounds + free * solved[:, :, 0]

    rows = ops.fori_loop(0, max_iters, step, bounds)
    return ops.sum(ops.maximum(rows, bounds), axis=0)


@keras.saving.register_keras_serializable(package="mtk")
class MGDA(GradientWeighting):
    """MGDA (Sener & Koltun, NeurIPS 2018): the min-norm convex combination.

    The update is ``G^T w`` with ``w`` on the simplex minimising
    ``|sum_i w_i g_i|^2`` (the paper's Eq. 3), found by the Frank-Wolfe
    solver of its Algorithm 2 (`min_norm_weights`). The result has a
    non-negative inner product with every task's gradient (it is zero when
    no direction improves all tasks: a Pareto-stationary point). MGDA-UB,
    the paper's cheaper upper bound on the shared representation, is
    ``MGDA(rep_grad=True)``. Use it when no task may get worse; the solve
    is tiny, the cost is one trunk backward pass per task (one in all with
    ``rep_grad=True``). A task with a zero gradient (say, no labels in the
    batch) halts the trunk for that step: zero is then in the hull.

    Gradients can be normalised before the solve as in the official code
    (``gradient_normalizers``); as there, the weights found apply to the
    raw gradients.

    Args:
        normalization: ``"none"`` (the paper's algorithm; LibMTL's default),
            ``"l2"`` (``g_i / |g_i|``), ``"loss"`` (``g_i / L_i``) or
            ``"loss+"`` (``g_i / (L_i |g_i|)``, the official sample
            configuration's choice).
        max_iters: Frank-Wolfe iterations (the official code stops at 250
            or on convergence; the pairwise steps and the final exact solve
            of `min_norm_weights` need fewer).
        rep_grad: see `mtk.weighting.base.GradientWeighting`.

    Example:

    >>> from mtk.weighting.min_norm import MGDA
    >>> weighting = MGDA()
    >>> weighting.setup(["a", "b"])
    >>> w = weighting.gramian_weights(tf.constant([[1.0, 0.0], [0.0, 4.0]]),
    ...                               tf.constant([1.0, 1.0]))
    >>> [round(float(v), 4) for v in w]
    [0.8, 0.2]
    """

    method = "mgda"
    NORMALIZATIONS = ("none", "l2", "loss", "loss+")

    def __init__(self, normalization="none", max_iters=100, **kwargs):
        if normalization not in self.NORMALIZATIONS:
            raise ValueError(
                f"MGDA: normalization must be one of {list(self.NORMALIZATIONS)}, "
                f"got {normalization!r}."
            )
        check_integer("MGDA", "max_iters", max_iters, minimum=1)
        super().__init__(**kwargs)
        self.normalization = normalization
        self.max_iters = max_iters

    def gramian_weights(self, gramian, losses):
        gramian = ops.cast(gramian, "float32")
        norms = ops.sqrt(ops.maximum(ops.diagonal(gramian), 0.0))
        losses = ops.cast(losses, "float32")
        scale = {
            "none": ops.ones_like(norms),
            "l2": norms,
            "loss": losses,
            "loss+": losses * norms,
        }[self.normalization]
        inverse = _safe_divide(1.0, scale)
        return min_norm_weights(
            gramian * inverse[:, None] * inverse[None, :], self.max_iters)

    def get_config(self):
        config = super().get_config()
        config.update({"normalization": self.normalization, "max_iters": self.max_iters})
        return config


@keras.saving.register_keras_serializable(package="mtk")
class CAGrad(GradientWeighting):
    """CAGrad (Liu et al., NeurIPS 2021): conflict-averse gradient descent.

    The update ``d = g0 + (c |g0| / |g_w|) g_w`` (Eq. 3 and Algorithm 1) moves
    within a ball of radius ``c |g0|`` around the mean gradient ``g0`` toward
    the direction that most improves the worst task; ``w`` minimises the
    dual ``g_w . g0 + c |g0| |g_w|`` over the simplex (`cagrad_weights`).
    ``c = 0`` is plain gradient descent on the summed losses; larger ``c``
    approaches MGDA. As in the official code, ``d`` is divided by ``1 +
    c^2`` (``rescale=1``) and multiplied by K "to match the sum loss", so
    the weights are ``K (1 / K + lam w) / (1 + c^2)``. Use it when task
    gradients conflict but the average loss still matters; the solve is
    tiny, the cost one trunk backward pass per task (one with
    ``rep_grad=True``).

    Args:
        c: the radius (the official default 0.5; the paper tunes 0.1-0.9).
        rescale: ``0`` (none), ``1`` (divide by ``1 + c^2``) or ``2`` (by
            ``1 + c``), as in the official code.
        max_iters: iterations of the dual solver.
        rep_grad: see `mtk.weighting.base.GradientWeighting`.

    Example:

    >>> from mtk.weighting.min_norm import CAGrad
    >>> weighting = CAGrad(c=0.0)
    >>> weighting.setup(["a", "b"])
    >>> w = weighting.gramian_weights(tf.constant([[1.0, -1.0], [-1.0, 4.0]]),
    ...                               tf.constant([1.0, 1.0]))
    >>> [round(float(v), 4) for v in w]  # c = 0: the summed gradient
    [1.0, 1.0]
    """

    method = "cagrad"

    def __init__(self, c=0.5, rescale=1, max_iters=100, **kwargs):
        check_positive("CAGrad", "c", c, allow_zero=True)
        if rescale not in (0, 1, 2) or isinstance(rescale, bool):
            raise ValueError(f"CAGrad: rescale must be 0, 1 or 2, got {rescale!r}.")
        check_integer("CAGrad", "max_iters", max_iters, minimum=1)
        super().__init__(**kwargs)
        self.c = c
        self.rescale = rescale
        self.max_iters = max_iters

    def gramian_weights(self, gramian, losses):
        count = gramian.shape[0]
        divisor = {0: 1.0, 1: 1.0 + self.c ** 2, 2: 1.0 + self.c}[self.rescale]
        if self.c == 0:
            return ops.ones((count,), "float32") / divisor
        weights, step_size = cagrad_weights(gramian, self.c, self.max_iters)
        return (1.0 + count * step_size * weights) / divisor

    def get_config(self):
        config = super().get_config()
        config.update(
            {"c": self.c, "rescale": self.rescale, "max_iters": self.max_iters})
        return config


@keras.saving.register_keras_serializable(package="mtk")
class NashMTL(GradientWeighting):
    """Nash-MTL (Navon et al., ICML 2022): the tasks' bargaining solution.

    The update ``G^T a`` with ``a > 0`` solving ``(G G^T) a = 1 / a`` (the
    paper's Theorem 5.1; every task gains ``g_i . d = 1 / a_i``), the
    weights being invariant to each task's loss scale. The paper solves it
    by a sequence of convex problems in cvxpy; here damped Newton on a
    convex objective with the same optimum does (`nash_bargaining_weights`).
    As in the official code, the Gramian is first divided by its Frobenius
    norm (so ``a`` grows like the square root of the gradients' scale), the
    weights are recomputed every ``update_weights_every`` steps (reused in
    between), and the update is scaled down to norm ``max_norm`` when
    longer (the official code clips the shared parameters' gradient norm;
    with ``rep_grad=True`` the norm is the shared features' gradient's).
    Use it for a balanced, scale-invariant compromise between tasks; the
    solve is tiny, the cost one trunk backward pass per task (one with
    ``rep_grad=True``).

    Args:
        max_norm: the update's largest norm (0: no clipping).
        update_weights_every: steps between solves.
        optim_niter: Newton steps per solve (the official code's count of
            convex problems, 20, is also ample here).
        rep_grad: see `mtk.weighting.base.GradientWeighting`.

    Example:

    >>> from mtk.weighting.min_norm import NashMTL
    >>> weighting = NashMTL(max_norm=0.0)
    >>> weighting.setup(["a", "b"])
    >>> w = weighting.gramian_weights(tf.constant([[4.0, 0.0], [0.0, 1.0]]),
    ...                               tf.constant([1.0, 1.0]))
    >>> [round(float(v), 3) for v in w]  # 1 / |g_i|, times sqrt(|M|_F)
    [1.015, 2.031]
    """

    method = "nash_mtl"

    def __init__(self, max_norm=1.0, update_weights_every=1, optim_niter=20, **kwargs):
        check_positive("NashMTL", "max_norm", max_norm, allow_zero=True)
        check_integer("NashMTL", "update_weights_every", update_weights_every, minimum=1)
        check_integer("NashMTL", "optim_niter", optim_niter, minimum=1)
        super().__init__(**kwargs)
        self.max_norm = max_norm
        self.update_weights_every = update_weights_every
        self.optim_niter = optim_niter

    def build_state(self, num_heads):
        super().build_state(num_heads)
        # The last solve (before clipping), reused between solves, and the step.
        self.nash_weights = self.add_weight(
            shape=(num_heads,), initializer="ones", trainable=False,
            aggregation="mean", name="nash_weights",
        )
        self.steps = self.add_weight(
            shape=(), initializer="zeros", trainable=False, aggregation="mean",
            name="steps",
        )

    def gramian_weights(self, gramian, losses):
        gramian = ops.cast(gramian, "float32")
        scale = ops.sqrt(ops.sum(ops.square(gramian)))  # Frobenius norm
        weights = nash_bargaining_weights(
            gramian / ops.maximum(scale, _TINY), self.optim_niter)
        if self.update_weights_every > 1:
            fresh = ops.equal(ops.mod(self.steps, float(self.update_weights_every)), 0.0)
            weights = ops.where(fresh, weights, self.nash_weights)
            self.steps.assign_add(1.0)
        self.nash_weights.assign(weights)
        if self.max_norm > 0:
            norm = ops.sqrt(_quadratic(weights, gramian))
            weights = weights * ops.where(
                ops.greater(norm, self.max_norm), self.max_norm / ops.maximum(norm, _TINY), 1.0)
        return weights

    def get_config(self):
        config = super().get_config()
        config.update({
            "max_norm": self.max_norm,
            "update_weights_every": self.update_weights_every,
            "optim_niter": self.optim_niter,
        })
        return config


@keras.saving.register_keras_serializable(package="mtk")
class UPGrad(GradientWeighting):
    """UPGrad (Quinton & Rey 2024): unconflicting projection of gradients.

    Each task's gradient, weighted by ``pref_vector``, is projected onto the
    dual cone of all task gradients (the directions that conflict with none:
    Eq. 3 and Prop. 1 of "Jacobian Descent for Multi-Objective
    Optimization"), and the projections are added (`dual_cone_weights`). The
    update has a non-negative inner product with every task gradient and
    equals the (weighted) mean when no two gradients conflict. Defaults
    follow TorchJD, the paper's library: mean weights, ``norm_eps =
    reg_eps = 1e-4`` (a Gramian whose trace is below ``norm_eps`` counts as
    zero and the update is then the plain weighted mean; lower it for
    models whose gradients are that small). Use it to remove conflicts
    without MGDA's bias toward the smallest gradient; the solve is K small
    quadratic programs, the cost one trunk backward pass per task (one
    with ``rep_grad=True``).

    Args:
        pref_vector: K non-negative weights of the projected gradients
            (default ``1 / K`` each).
        norm_eps: trace below which the Gramian counts as zero.
        reg_eps: added to the normalised Gramian's diagonal.
        max_iters: active-set iterations per solve.
        rep_grad: see `mtk.weighting.base.GradientWeighting`.

    Example:

    >>> from mtk.weighting.min_norm import UPGrad
    >>> weighting = UPGrad()
    >>> weighting.setup(["a", "b"])
    >>> w = weighting.gramian_weights(tf.constant([[1.0, 0.0], [0.0, 4.0]]),
    ...                               tf.constant([1.0, 1.0]))
    >>> [round(float(v), 4) for v in w]  # no conflict: the mean
    [0.5, 0.5]
    """

    method = "upgrad"

    def __init__(self, pref_vector=None, norm_eps=1e-4, reg_eps=1e-4, max_iters=20,
                 **kwargs):
        if pref_vector is not None:
            pref_vector = list(pref_vector)
            for value in pref_vector:
                check_positive("UPGrad", "pref_vector", value, allow_zero=True)
            if not any(pref_vector):
                raise ValueError(
                    f"UPGrad: pref_vector must have a positive entry, got {pref_vector!r}.")
            pref_vector = [float(value) for value in pref_vector]
        check_positive("UPGrad", "norm_eps", norm_eps, allow_zero=True)
        check_positive("UPGrad", "reg_eps", reg_eps)
        check_integer("UPGrad", "max_iters", max_iters, minimum=1)
        super().__init__(**kwargs)
        self.pref_vector = pref_vector
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps
        self.max_iters = max_iters

    def check_heads(self, head_names):
        super().check_heads(head_names)
        if self.pref_vector is not None and len(self.pref_vector) != len(head_names):
            raise ValueError(
                f"UPGrad: pref_vector has {len(self.pref_vector)} entries; the "
                f"model has {len(head_names)} heads ({list(head_names)})."
            )

    def gramian_weights(self, gramian, losses):
        return dual_cone_weights(
            gramian, self.pref_vector, self.max_iters, self.norm_eps, self.reg_eps)

    def get_config(self):
        config = super().get_config()
        config.update({
            "pref_vector": self.pref_vector,
            "norm_eps": self.norm_eps,
            "reg_eps": self.reg_eps,
            "max_iters": self.max_iters,
        })
        return config
