"""ROME's position categories and their dataset average, against hand-computed cases."""
import numpy as np
import pytest

from jaxattr.interventions.categories import CATEGORIES, category_average, position_categories
from jaxattr.zoo import facts


def test_categories_hand_computed():
    # <s> the home of Ada van Moreno is in  -> subject tokens 4..6, L = 10
    cat = position_categories(10, (4, 7))
    names = [CATEGORIES[c] if c >= 0 else None for c in cat]
    assert names == [None, None, None, None, "first_subject", "middle_subject",
                     "last_subject", "first_subsequent", "further", "last"]


def test_two_token_subject_followed_by_last_token():
    # <s> Ada Moreno plays: no middle token; the first subsequent token is the last token
    cat = position_categories(4, (1, 3))
    assert [CATEGORIES[c] for c in cat[1:]] == ["first_subject", "last_subject", "last"]


def test_one_token_subject_is_last_subject():
    assert CATEGORIES[position_categories(5, (2, 3))[2]] == "last_subject"


def test_bad_range():
    with pytest.raises(ValueError, match="subject_range"):
        position_categories(4, (3, 6))


def test_average_counts_each_prompt_once_per_category():
    a = np.arange(10 * 2, dtype=float).reshape(10, 2)       # prompt 1: middle row = 5
    b = np.zeros((4, 2))                                      # prompt 2: no middle tokens
    mean, sem, count = category_average([a, b], [(4, 7), (1, 3)])
    assert count.tolist() == [2, 1, 2, 1, 1, 2]
    np.testing.assert_allclose(mean[1], a[5])                 # only prompt 1 has middle tokens
    np.testing.assert_allclose(mean[0], (a[4] + b[1]) / 2)
    np.testing.assert_allclose(sem[0], np.abs(a[4] - b[1]) / 2)   # std(ddof=1)/sqrt(2) of 2 pts
    assert np.isnan(sem[1]).all()


def test_facts_subject_ranges_point_at_the_subject():
    for e in facts.facts_examples("all")[:60]:
        s0, s1 = e["subject_range"]
        assert " ".join(e["tokens"][s0:s1]) == e["subject"]
        assert e["answer"] not in e["tokens"]
