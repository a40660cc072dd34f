import polars as pl
import pytest
import torch

from twotower.data.features import encode_features, feature_specs
from twotower.errors import TwoTowerError
from twotower.model.towers import FeatureTower

META = pl.DataFrame({
    "index": [0, 1, 2],
    "id": [10, 20, 30],
    "genres": [["Comedy", "Drama"], ["Drama"], None],
    "gender": ["F", "M", None],
    "age": [20.0, 40.0, None],
})


def test_kinds_are_inferred_and_values_encoded() -> None:
    specs = feature_specs(META, ["genres", "gender", "age"], "movie")
    assert [spec["kind"] for spec in specs] == ["multi_hot", "categorical", "numeric"]
    tensors = encode_features(META, specs)
    assert tensors["genres"].tolist() == [[0, 1], [1, 2], [2, 2]]  # 2 = padding / unknown
    assert tensors["gender"].tolist() == [0, 1, 2]
    age = tensors["age"].tolist()
    assert age[0] == pytest.approx(-age[1]) and age[2] == pytest.approx(0.0)  # missing -> the mean


def test_unknown_values_of_new_rows_get_the_reserved_index() -> None:
    specs = feature_specs(META, {"gender": "categorical", "genres": "multi_hot"}, "movie")
    new = pl.DataFrame({"gender": ["X"], "genres": [["Horror", "Comedy"]]})
    tensors = encode_features(new, specs)
    assert tensors["gender"].tolist() == [2]
    assert tensors["genres"].tolist() == [[0, 2]]


def test_missing_feature_columns_are_named() -> None:
    with pytest.raises(TwoTowerError, match=r"feature\(s\) \['budget'\] not in the movie metadata"):
        feature_specs(META, ["budget"], "movie")


def test_feature_tower_embeds_cold_ids_from_features_alone() -> None:
    frame = pl.DataFrame({"gender": ["F", "F", "M"]})
    specs = feature_specs(frame, ["gender"], "user")
    tower = FeatureTower(3, dim=8, features=specs, hidden=[16])
    tower.load_features(encode_features(frame, specs), known=torch.tensor([True, False, False]))
    vectors = tower.all()
    assert vectors.shape == (3, 8)
    cold_twin = tower.embed_features(encode_features(pl.DataFrame({"gender": ["F"]}), specs))
    assert torch.allclose(vectors[1], cold_twin[0])  # id 1 has no interactions: features only
    assert not torch.allclose(vectors[0], vectors[1])  # id 0 adds its learned id vector
