from typing import get_args

import numpy as np
import pytest

from fedsilo.data import DataError, load_silo_data
from fedsilo.data.examples import Examples
from fedsilo.data.generators import domain_labels, generate
from fedsilo.data.partition import PARTITIONERS, dirichlet, iid, natural, partition, quantity
from fedsilo.data.sources import LOADERS, load_npz, load_source, load_table, source_for_file
from fedsilo.errors import UnknownKind
from fedsilo.scenario import (
    SOURCE_KINDS,
    DirichletPartition,
    GeneratedSource,
    NpzSource,
    Partition,
    TableSource,
    validate_scenario,
)
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
    assert sum(len(s.train) + len(s.test) + len(s.validation) for s in silos) == 2888
    for silo in silos:  # 20% tested; 10% of the rest held out for validation
        rows = len(silo.train) + len(silo.test) + len(silo.validation)
        assert abs(len(silo.test) / rows - 0.2) < 0.01
        assert abs(len(silo.validation) / (rows - len(silo.test)) - 0.1) < 0.01
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


def test_source_kinds_are_a_closed_registry_and_an_unknown_one_is_named():
    assert set(LOADERS) == set(SOURCE_KINDS)  # every kind a scenario may name has its loader, no more
    sql = GeneratedSource.model_construct(kind="sql")  # past the schema: no silent Hugging Face fallback
    with pytest.raises(
        UnknownKind, match="unknown data source kind 'sql'; accepted: csv, generated, huggingface"
    ):
        load_source(sql, "medical", SILOS, 0)


def test_partition_kinds_are_a_closed_registry_and_an_unknown_one_is_named():
    kinds = {
        kind
        for cls in get_args(get_args(Partition)[0])
        for kind in get_args(cls.model_fields["kind"].annotation)
    }
    assert set(PARTITIONERS) == kinds
    examples = Examples(["x"] * 6, np.array(["0"] * 6))
    with pytest.raises(UnknownKind, match="unknown partition kind 'by_age'; accepted: dirichlet, iid"):
        partition(examples, DirichletPartition.model_construct(kind="by_age"), SILOS, 0)


def test_unknown_domain_is_named():
    with pytest.raises(UnknownKind, match="unknown domain 'retail'; accepted: finance, medical, telecom"):
        generate("retail", SILOS, 10, seed=0)


def test_whether_a_source_holds_images_is_said_by_the_source():
    assert {kind for kind, cls in SOURCE_KINDS.items() if cls.holds_images} == {"npz"}
    assert NpzSource(kind="npz", path="x.npz").holds_images
    assert not TableSource(kind="csv", path="x.csv").holds_images


def test_a_silos_own_file_is_a_source_by_its_extension():
    shared = {"kind": "csv", "text_column": "note", "label_column": "dx"}
    assert source_for_file("a.parquet", shared) == {
        "kind": "parquet",
        "path": "a.parquet",
        "text_column": "note",
        "label_column": "dx",
    }
    assert source_for_file("a.npz", shared) == {"kind": "npz", "path": "a.npz"}  # images: no columns
    assert source_for_file("a.csv", {"kind": "generated"}) == {"kind": "csv", "path": "a.csv"}
    with pytest.raises(DataError, match=".csv, .parquet, .npz"):
        source_for_file("a.txt", shared)
