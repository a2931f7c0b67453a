"""Median and trimmed mean on hand-made updates with outliers, against NumPy."""

import numpy as np
import pytest
import torch

from fedsilo.strategies import Median, SiloUpdate, TrimmedMean, weighted_mean


def updates(values, sizes=None):
    sizes = sizes or [1] * len(values)
    return [SiloUpdate(f"s{k}", {"w": torch.tensor(v)}, n) for k, (v, n) in enumerate(zip(values, sizes))]


HONEST = [[1.0, 2.0], [1.2, 2.2], [0.8, 1.8], [1.1, 2.1]]
LIAR = [[1e6, -1e6]]  # one silo sends extreme weights and claims a huge example count


def test_median_ignores_an_outlier_and_its_claimed_count():
    result = Median().aggregate({}, updates(HONEST + LIAR, [10, 10, 10, 10, 10**9]))["w"]
    np.testing.assert_allclose(result.numpy(), np.median(np.array(HONEST + LIAR), axis=0), rtol=1e-6)
    assert result.tolist() == pytest.approx([1.1, 2.0])
    poisoned = weighted_mean(updates(HONEST + LIAR, [10, 10, 10, 10, 10**9]))["w"]
    assert poisoned[0] > 1e5  # what FedAvg would have done


def test_median_of_an_even_count_averages_the_middle_pair():
    assert Median().aggregate({}, updates(HONEST))["w"].tolist() == pytest.approx([1.05, 2.05])


def test_trimmed_mean_drops_the_extremes_at_each_end():
    values = np.array(HONEST + LIAR + [[-1e6, 1e6]])
    result = TrimmedMean(trim_fraction=0.2).aggregate({}, updates(values.tolist()))["w"]
    ordered = np.sort(values, axis=0)[1:-1]  # floor(0.2 * 6) = 1 at each end
    np.testing.assert_allclose(result.numpy(), ordered.mean(axis=0), rtol=1e-6)


def test_trimming_always_keeps_one_value():
    strategy = TrimmedMean(trim_fraction=0.45)
    assert [strategy.trimmed(k) for k in (1, 2, 3, 5, 10)] == [0, 0, 1, 2, 4]
    assert strategy.aggregate({}, updates([[3.0], [5.0]]))["w"].item() == 4.0
    with pytest.raises(ValueError, match="trim_fraction"):
        TrimmedMean(trim_fraction=0.5)


def test_dtypes_are_kept_and_integer_buffers_take_the_maximum():
    states = [{"w": torch.tensor([1.0], dtype=torch.bfloat16), "n": torch.tensor(k)} for k in (3, 9, 5)]
    ups = [SiloUpdate(str(k), s, 1) for k, s in enumerate(states)]
    for strategy in (Median(), TrimmedMean(trim_fraction=0.34)):
        result = strategy.aggregate({}, ups)
        assert result["w"].dtype == torch.bfloat16 and result["n"].item() == 9
