import numpy as np
import pytest

from mf2.training.cross_validation import cross_validate


def test_every_row_is_tested_once_by_a_fold_that_never_trained_on_its_group():
    groups = [f"s{i % 7}" for i in range(40)]
    seen = []

    def run_fold(fold, train_rows, test_rows):
        seen.append(fold)
        assert not {groups[i] for i in train_rows} & {groups[i] for i in test_rows}
        assert sorted(np.concatenate([train_rows, test_rows]).tolist()) == list(range(40))
        return test_rows

    tested = cross_validate(groups, 3, 0, run_fold)
    assert seen == [0, 1, 2]
    assert sorted(np.concatenate(tested).tolist()) == list(range(40))


def test_same_groups_and_seed_give_the_same_folds_and_too_few_groups_is_an_error():
    groups = [f"s{i % 5}" for i in range(30)]
    first = cross_validate(groups, 5, 3, lambda fold, train, test: test.tolist())
    assert first == cross_validate(groups, 5, 3, lambda fold, train, test: test.tolist())
    with pytest.raises(ValueError, match="5 groups cannot make 6 folds"):
        cross_validate(groups, 6, 0, lambda fold, train, test: None)
