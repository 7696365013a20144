import math

import pytest
import torch

from recforge.metrics.ranking import hit_and_ndcg, rank_among_all, rank_among_sampled


def test_rank_counts_negatives_scoring_at_least_the_positive():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.3],  # best -> rank 0
            [0.5, 0.6, 0.7, 0.1],  # two above -> rank 2
            [0.2, 0.9, 0.8, 0.7],  # last -> rank 3
        ]
    )
    assert rank_among_sampled(scores).tolist() == [0, 2, 3]


def test_ties_count_against_the_positive():
    constant = torch.full((5, 100), 0.5)
    rank = rank_among_sampled(constant)
    assert rank.tolist() == [99] * 5
    hit, ndcg = hit_and_ndcg(rank, 10)
    assert hit.sum().item() == 0 and ndcg.sum().item() == 0
    # one tie with a negative pushes the positive down by one
    assert rank_among_sampled(torch.tensor([[0.5, 0.5, 0.1]])).item() == 1


def test_hit_and_ndcg_values():
    rank = torch.tensor([0, 1, 2, 9, 10, 50])
    hit, ndcg = hit_and_ndcg(rank, 10)
    assert hit.tolist() == [1, 1, 1, 1, 0, 0]
    expected = [1.0, 1 / math.log2(3), 0.5, 1 / math.log2(11), 0.0, 0.0]
    assert ndcg.tolist() == pytest.approx(expected)
    # HR@10 and NDCG@10 of this set of users
    assert hit.mean().item() == pytest.approx(4 / 6)
    assert ndcg.mean().item() == pytest.approx(sum(expected) / 6)


def test_negatives_repeating_the_held_out_item_are_not_counted():
    scores = torch.tensor([[0.5, 0.5, 0.7, 0.1]])  # negative 0 is the held-out item again
    items = torch.tensor([[3, 3, 8, 9]])
    assert rank_among_sampled(scores).item() == 2
    assert rank_among_sampled(scores, items[:, 1:] != items[:, :1]).item() == 1


def test_nan_scores_are_the_lowest():
    assert rank_among_sampled(torch.tensor([[float("nan"), 0.1, 0.2]])).item() == 2
    assert rank_among_sampled(torch.tensor([[0.3, float("nan"), 0.2]])).item() == 0


def test_full_ranking_excludes_minus_infinity_and_ties_count_against():
    scores = torch.tensor(
        [
            [0.1, float("-inf"), 0.5, 0.5, 0.2],  # held-out item 2 ties item 3 -> rank 1
            [0.9, 0.8, float("-inf"), 0.1, 0.0],  # held-out item 0 is best -> rank 0
        ]
    )
    rank = rank_among_all(scores, torch.tensor([2, 0]))
    assert rank.tolist() == [1, 0]
    hit, ndcg = hit_and_ndcg(rank, 1)
    assert hit.tolist() == [0, 1]
