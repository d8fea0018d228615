"""The synthetic regression pair of the MMoE paper, with a set task correlation.

Ma et al. (KDD 2018, "Modeling Task Relationships in Multi-task Learning
with Multi-gate Mixture-of-Experts", Section 3.2) control how related two
regression tasks are by the cosine ``p`` between their weight vectors:

1. ``u1, u2``: two orthogonal unit vectors in ``R^d``.
2. ``w1 = c * u1``, ``w2 = c * (p * u1 + sqrt(1 - p**2) * u2)``, so
   ``cos(w1, w2) = p``.
3. ``x ~ N(0, I_d)``.
4. ``y_i = w_i^T x + sum_{j=1..m} sin(alpha_j * w_i^T x + beta_j) + eps_i``.
5. ``eps_i ~ N(0, 0.01)`` (standard deviation 0.1).

The paper calls ``alpha_j, beta_j`` "given parameters" that shape the
sinusoids and does not give their values; here they are drawn once per
problem from ``N(0, 1)`` and shared by both tasks (the same ``j``-th sinusoid
in ``y_1`` and ``y_2``, as the paper's formula writes them). Because of the
sinusoids the Pearson correlation of the labels is not ``p`` itself, but it
falls as ``p`` falls; that of the linear parts ``w_i^T x`` is ``p``.

`MMoESynthetic` is one problem (its ``seed`` fixes ``w1, w2, alpha, beta``);
its ``sample`` draws examples from it, so train and test splits come from
the same problem with different ``sample_seed``s. `mmoe_synthetic` does both
in one call.
"""

import numbers

import numpy as np

TASK_NAMES = ("task0", "task1")


def _check_int(argument, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{argument} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_real(argument, value, low=-np.inf, high=np.inf):
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not np.isfinite(value) or not low <= value <= high):
        bounds = (f"in [{low:g}, {high:g}]" if np.isfinite(high)
                  else f">= {low:g}" if np.isfinite(low) else "finite")
        raise ValueError(f"{argument} must be a number {bounds}, got {value!r}.")
    return float(value)


class MMoESynthetic:
    """One synthetic regression pair of Ma et al. (KDD 2018, Sec. 3.2).

    Args:
        correlation: ``p``, the cosine between the tasks' weight vectors, in
            ``[-1, 1]``.
        dim: input dimension ``d`` (>= 2; the paper uses 100).
        c: scale of the weight vectors.
        m: number of sinusoidal terms (the paper's ``m``; 0 for linear tasks).
        noise_std: standard deviation of the label noise (0.1: the paper's
            variance 0.01).
        seed: fixes ``u1, u2`` and the sinusoids' ``alpha, beta``.

    Attributes:
        weights: ``(2, dim)`` array, rows ``w1`` and ``w2``.
        alphas, betas: ``(m,)`` arrays of the sinusoids' parameters, drawn
            from ``N(0, 1)`` (the paper leaves them unspecified).

    Example:

    >>> problem = mtk.data.MMoESynthetic(correlation=0.5, dim=10, seed=0)
    >>> w1, w2 = problem.weights
    >>> round(float(w1 @ w2 / np.linalg.norm(w1) / np.linalg.norm(w2)), 6)
    0.5
    >>> x, y = problem.sample(4, sample_seed=1)
    >>> x.shape, sorted(y), y["task0"].shape
    ((4, 10), ['task0', 'task1'], (4,))
    """

    def __init__(self, correlation, *, dim=100, c=1.0, m=10, noise_std=0.1, seed=0):
        self.correlation = _check_real("correlation", correlation, -1.0, 1.0)
        self.dim = _check_int("dim", dim, 2)
        self.c = _check_real("c", c)
        self.m = _check_int("m", m, 0)
        self.noise_std = _check_real("noise_std", noise_std, 0.0)
        self.seed = _check_int("seed", seed, 0)
        rng = np.random.default_rng(np.random.SeedSequence(self.seed))
        u1, u2 = np.linalg.qr(rng.normal(size=(self.dim, 2)))[0].T
        p = self.correlation
        self.weights = self.c * np.stack([u1, p * u1 + np.sqrt(1.0 - p * p) * u2])
        self.alphas = rng.normal(size=self.m)
        self.betas = rng.normal(size=self.m)

    def linear_parts(self, x):
        """``(n, 2)``: ``w_i^T x`` of each example and task."""
        return np.asarray(x, dtype="float64") @ self.weights.T

    def sample(self, num_examples, sample_seed=0):
        """Draws examples of this problem.

        Args:
            num_examples: number of examples (>= 1).
            sample_seed: seeds ``x`` and the noise, independently of the
                problem's ``seed``: give train and test different ones.

        Returns:
            ``(x, {"task0": y1, "task1": y2})``: float32 arrays of shapes
            ``(num_examples, dim)`` and ``(num_examples,)``.
        """
        num_examples = _check_int("num_examples", num_examples, 1)
        sample_seed = _check_int("sample_seed", sample_seed, 0)
        # A spawn key gives a stream independent of the problem's own.
        rng = np.random.default_rng(
            np.random.SeedSequence(self.seed, spawn_key=(sample_seed,)))
        x = rng.normal(size=(num_examples, self.dim))
        z = self.linear_parts(x)  # (n, 2)
        sines = np.sin(self.alphas * z[:, :, None] + self.betas).sum(axis=-1)
        y = z + sines + rng.normal(scale=self.noise_std, size=z.shape)
        return x.astype("float32"), {
            name: y[:, i].astype("float32") for i, name in enumerate(TASK_NAMES)
        }

    def __repr__(self):
        return (f"MMoESynthetic(correlation={self.correlation!r}, dim={self.dim}, "
                f"c={self.c!r}, m={self.m}, noise_std={self.noise_std!r}, "
                f"seed={self.seed})")


def mmoe_synthetic(num_examples, correlation, *, dim=100, c=1.0, m=10,
                   noise_std=0.1, seed=0, sample_seed=0):
    """Examples of the MMoE paper's synthetic regression pair (Ma et al. 2018).

    Two regression tasks whose weight vectors have cosine ``correlation``,
    plus shared sinusoidal terms and Gaussian noise (Ma et al., KDD 2018,
    "Modeling Task Relationships in Multi-task Learning with Multi-gate
    Mixture-of-Experts", Section 3.2; see `MMoESynthetic` for the formula).
    The sinusoids' ``alpha_j, beta_j`` are "given parameters" in the paper,
    with no values given; here they are drawn from ``N(0, 1)``.

    ``seed`` fixes the problem (the weight vectors and sinusoids) and
    ``sample_seed`` the examples: a train and a test split of one problem
    share ``seed`` and differ in ``sample_seed``.

    Args:
        num_examples: number of examples (>= 1).
        correlation: ``p``, the cosine between the two weight vectors, in
            ``[-1, 1]``.
        dim: input dimension (>= 2; the paper uses 100).
        c: scale of the weight vectors.
        m: number of sinusoidal terms.
        noise_std: label noise standard deviation (0.1: variance 0.01).
        seed: the problem's seed.
        sample_seed: the examples' seed.

    Returns:
        ``(x, {"task0": y1, "task1": y2})``: float32 arrays of shapes
        ``(num_examples, dim)`` and ``(num_examples,)``.

    Example:

    >>> x, y = mtk.data.mmoe_synthetic(1000, correlation=0.9, seed=0)
    >>> x_test, y_test = mtk.data.mmoe_synthetic(
    ...     200, correlation=0.9, seed=0, sample_seed=1)
    >>> x.shape, x_test.shape, sorted(y)
    ((1000, 100), (200, 100), ['task0', 'task1'])
    >>> mtk.data.mmoe_synthetic(10, correlation=1.5)
    Traceback (most recent call last):
    ...
    ValueError: correlation must be a number in [-1, 1], got 1.5.
    """
    problem = MMoESynthetic(correlation, dim=dim, c=c, m=m,
                            noise_std=noise_std, seed=seed)
    return problem.sample(num_examples, sample_seed=sample_seed)
