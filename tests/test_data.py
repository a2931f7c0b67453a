import numpy as np
import pytest

from fedsilo.data import DataError, load_silo_data
from fedsilo.data.examples import Examples
from fedsilo.data.generators import domain_labels, generate
from fedsilo.data.partition import dirichlet, iid, natural, partition, quantity
from fedsilo.data.sources import load_npz, load_table
from fedsilo.scenario import DirichletPartition, NpzSource, TableSource, validate_scenario
from tests.conftest import shared_file

SILOS = ["a", "b", "c"]


@pytest.mark.parametrize("domain", ["medical", "finance", "telecom"])
def test_generator_is_seeded_with_a_style_and_label_mix_per_silo(domain):
    first = generate(domain, SILOS, 200, seed=1)
    assert first.equals(generate(domain, SILOS, 200, seed=1))
    assert not first.equals(generate(domain, SILOS, 200, seed=2))
    assert set(first["label"]) <= set(domain_labels(domain))
    assert first.groupby("silo").size().tolist() == [200, 200, 200]
    openings = first.groupby("silo")["text"].agg(lambda t: t.str.split().str[0].mode()[0])
    assert openings.nunique() == 3  # each silo writes in its own style
    mixes = first.groupby("silo")["label"].value_counts(normalize=True).unstack(fill_value=0)
    assert (mixes.max() - mixes.min()).max() > 0.1  # label skew across silos


def test_label_noise_flips_about_the_requested_share():
    clean = generate("finance", ["a"], 2000, seed=3, label_noise=0.0)
    noisy = generate("finance", ["a"], 2000, seed=3, label_noise=0.3)
    changed = (clean["label"] != noisy["label"]).mean()
    assert 0.15 < changed < 0.35  # 30% resampled, a fifth of which land on the same label


def test_partitioners_cover_every_row_once():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 100).astype(str)
    for parts in (
        iid(len(labels), SILOS, rng),
        dirichlet(labels, SILOS, 0.5, rng),
        quantity(len(labels), SILOS, 1.0, rng),
    ):
        rows = np.concatenate(list(parts.values()))
        assert sorted(rows.tolist()) == list(range(len(labels)))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = np.repeat(np.arange(4), 250).astype(str)

    def skew(alpha):
        parts = dirichlet(labels, SILOS, alpha, np.random.default_rng(1))
        shares = [np.bincount(labels[p].astype(int), minlength=4) / len(p) for p in parts.values()]
        return float(np.mean([s.max() for s in shares]))

    assert skew(0.1) > skew(1.0) > skew(100.0)
    assert skew(100.0) < 0.35


def test_natural_partition_and_missing_column():
    groups = np.array(["a", "b", "a", "c"])
    assert natural(groups, SILOS, "site")["a"].tolist() == [0, 2]
    with pytest.raises(DataError, match="column 'site'"):
        natural(None, SILOS, "site")


def test_a_silo_left_empty_is_named_before_training():
    examples = Examples(["x"] * 6, np.array(["0"] * 6), np.array(["a"] * 3 + ["b"] * 3))
    spec = validate_scenario(
        {
            "name": "t",
            "domain": "medical",
            "model": {"kind": "bert"},
            "silos": [{"name": "a"}, {"name": "zz"}],
        }
    ).data.partition
    with pytest.raises(DataError, match="zz"):
        partition(examples, spec, ["a", "zz"], 0)
    with pytest.raises(DataError, match="silo.*c.*fewer than 2"):
        partition(
            Examples(["x"] * 3, np.array(["0"] * 3)), DirichletPartition(kind="dirichlet", alpha=1), SILOS, 0
        )


def test_missing_label_column_names_file_and_columns(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text("note,specialty\nhello,cardio\n")
    with pytest.raises(DataError) as error:
        load_table(TableSource(kind="csv", path=str(path), text_column="note"))
    assert (
        "'label'" in str(error.value)
        and "notes.csv" in str(error.value)
        and "'specialty'" in str(error.value)
    )


def test_real_csv_with_a_dirichlet_partition_and_stratified_split():
    path = shared_file("medical_abstracts", "data.csv")
    scenario = validate_scenario(
        {
            "name": "t",
            "domain": "medical",
            "model": {"kind": "bert"},
            "data": {
                "source": {"kind": "csv", "path": str(path)},
                "partition": {"kind": "dirichlet", "alpha": 0.5},
            },
            "silos": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
        }
    )
    silos = [load_silo_data(scenario, s) for s in scenario.silo_names()]
    assert sum(len(s.train) + len(s.test) for s in silos) == 2888
    for silo in silos:
        assert abs(len(silo.test) / (len(silo.train) + len(silo.test)) - 0.2) < 0.01
        train, test = silo.train.label_counts(), silo.test.label_counts()
        big = max(train, key=train.get)
        assert test[big] / len(silo.test) == pytest.approx(train[big] / len(silo.train), abs=0.02)


def test_medmnist_npz_loads_every_split_as_nchw():
    examples = load_npz(NpzSource(kind="npz", path=str(shared_file("pneumoniamnist", "pneumoniamnist.npz"))))
    assert examples.inputs.shape == (3166, 1, 28, 28) and examples.inputs.dtype == np.uint8
    assert examples.label_counts() == {"0": 1583, "1": 1583}


def test_missing_npz_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match="shared/data/pneumoniamnist"):
        load_npz(NpzSource(kind="npz", path=str(tmp_path / "none.npz")))
