"""A synthetic click / conversion table with known structure, offline.

The shape of an ESMM-style recommender's log (Ma et al. SIGIR 2018): each
row is an impression with user and context features; ``clicked`` and
``converted`` are logged for every row (an impression that was not clicked
logs no conversion: 0), but the conversion task only counts on clicked rows
(a per-head sample weight, the ``clicked`` column), and ``spend`` is known
for converted rows only (empty otherwise: a missing label).

How the labels are made (so a model's quality can be judged against it):

- ``logit(click) = 1.5 * z(age) * [device == "web"] + country effect +
  device × country interaction + 0.8 * [city_id % 7 == 0] - 0.5``;
- ``logit(convert | click) = 1.2 * z(age) - 1.0 * [device == "android"] +
  0.6 * [city_id % 5 == 0]``;
- ``spend = 40 + 10 * z(age) + 5 * [country == "DE"] + N(0, 3)`` (converted
  rows only);

where ``z(age)`` is the standardised age. ``city_id`` has 1,000 values (a
high-cardinality column, embedded by `mtk.trunks.tabular`).
"""

import numpy as np

COUNTRIES = ("DE", "FR", "US", "GB", "IN", "BR")
DEVICES = ("ios", "android", "web")
NUM_CITIES = 1000


def click_table(num_rows=10000, seed=0, with_probabilities=False):
    """The synthetic impressions table as a pandas DataFrame.

    Args:
        num_rows: rows (impressions).
        seed: the random seed; the same seed gives the same table.
        with_probabilities: also return the true probabilities the labels
            were drawn from (columns ``click_probability`` and
            ``conversion_probability``): the best any model can do, to
            judge one against. Never use them as features.

    Returns:
        A DataFrame with features ``age`` (float), ``country``, ``device``
        (strings), ``city_id`` (int), and labels ``clicked`` (0/1),
        ``converted`` (0/1, 0 where not clicked) and ``spend`` (float,
        empty unless converted).

    Example:

    >>> df = mtk.data.clicks.click_table(1000, seed=0)
    >>> sorted(df.columns)
    ['age', 'city_id', 'clicked', 'converted', 'country', 'device', 'spend']
    >>> bool(((df["converted"] == 1) <= (df["clicked"] == 1)).all())
    True
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    age = rng.uniform(18, 80, num_rows).round(1)
    z = (age - 49.0) / 17.9
    country = rng.choice(COUNTRIES, num_rows)
    device = rng.choice(DEVICES, num_rows)
    city = rng.integers(0, NUM_CITIES, num_rows)
    country_effect = dict(zip(COUNTRIES, (0.4, -0.2, 0.1, 0.0, -0.5, 0.3)))
    interaction = rng.normal(0, 0.8, (len(COUNTRIES), len(DEVICES)))
    c_index = np.searchsorted(sorted(COUNTRIES), country)
    d_index = np.searchsorted(sorted(DEVICES), device)
    click_logit = (
        1.5 * z * (device == "web") + np.vectorize(country_effect.get)(country)
        + interaction[c_index, d_index] + 0.8 * (city % 7 == 0) - 0.5
    )
    p_click = 1 / (1 + np.exp(-click_logit))
    clicked = rng.random(num_rows) < p_click
    convert_logit = 1.2 * z - 1.0 * (device == "android") + 0.6 * (city % 5 == 0)
    p_convert = 1 / (1 + np.exp(-convert_logit))
    converted = clicked & (rng.random(num_rows) < p_convert)
    spend = 40 + 10 * z + 5 * (country == "DE") + rng.normal(0, 3, num_rows)
    df = pd.DataFrame({
        "age": age,
        "country": country,
        "device": device,
        "city_id": city,
        "clicked": clicked.astype(float),
        "converted": converted.astype(float),
        "spend": np.where(converted, spend.round(2), np.nan),
    })
    if with_probabilities:
        df["click_probability"] = p_click
        df["conversion_probability"] = p_convert
    return df


def click_feature_space(df):
    """A FeatureSpace for `click_table`'s features, adapted on ``df``.

    ``age`` normalised, ``country`` one-hot, ``device`` hashed, their cross,
    and ``city_id`` as integer indices (embedded by `mtk.trunks.tabular`).

    Example:

    >>> fs = mtk.data.clicks.click_feature_space(mtk.data.clicks.click_table(200))
    >>> sorted(fs.get_inputs())
    ['age', 'city_id', 'country', 'device']
    """
    import keras

    FS = keras.utils.FeatureSpace
    space = FS(
        {
            "age": FS.float_normalized(),
            "country": FS.string_categorical(),
            "device": FS.string_hashed(num_bins=8),
            "city_id": FS.integer_categorical(output_mode="int"),
        },
        crosses=[FS.cross(("country", "device"), crossing_dim=32)],
        output_mode="dict",
    )
    space.adapt({
        "age": df["age"].to_numpy("float32"),
        "country": df["country"].to_numpy(object),
        "device": df["device"].to_numpy(object),
        "city_id": df["city_id"].to_numpy("int32"),
    })
    return space


def click_heads():
    """The three heads of the table: click, conversion, spend.

    Example:

    >>> [h.name for h in mtk.data.clicks.click_heads()]
    ['click', 'conversion', 'spend']
    """
    import mtk

    return [
        mtk.heads.Binary("click"),
        mtk.heads.Binary("conversion"),
        mtk.heads.Regression("spend"),
    ]


# The tasks and sample weights of `mtk.data.from_dataframe` / `from_csv` for
# `click_table`: conversion only counts on clicked rows (ESMM's setting).
CLICK_TASKS = {"click": "clicked", "conversion": "converted", "spend": "spend"}
CLICK_WEIGHTS = {"conversion": "clicked"}
