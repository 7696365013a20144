import math

import pytest
import torch

from recforge.metrics.classification import accuracy, auc, logloss


def test_auc_hand_computed():
    # positives 0.9, 0.4; negatives 0.8, 0.1: pairs (0.9>0.8, 0.9>0.1, 0.4<0.8, 0.4>0.1) -> 3/4
    assert auc(torch.tensor([0.9, 0.8, 0.4, 0.1]), torch.tensor([1, 0, 1, 0])) == pytest.approx(0.75)
    assert auc(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 0, 1])) == 1.0
    assert auc(torch.tensor([0.3, 0.2, 0.1]), torch.tensor([0, 0, 1])) == 0.0


def test_auc_ties_count_one_half():
    assert auc(torch.full((6,), 0.5), torch.tensor([1, 0, 1, 0, 0, 1])) == pytest.approx(0.5)
    # positive 0.5 ties one negative 0.5 and beats one negative 0.2 -> (0.5 + 1) / 2
    assert auc(torch.tensor([0.5, 0.5, 0.2]), torch.tensor([1, 0, 0])) == pytest.approx(0.75)


def test_auc_matches_the_pairwise_definition_on_random_data():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (400,), generator=generator).float() / 20  # many ties
    labels = torch.rand(400, generator=generator) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()).mean().item()
    assert auc(scores, labels) == pytest.approx(pairwise, abs=1e-12)


def test_auc_of_one_class_is_nan():
    assert math.isnan(auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))


def test_logloss_and_accuracy():
    p = torch.tensor([0.9, 0.2, 0.6, 0.4])
    y = torch.tensor([1, 0, 0, 1])
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.4)) / 4
    assert logloss(p, y) == pytest.approx(expected)
    assert accuracy(p, y) == 0.5
    assert logloss(torch.tensor([0.0, 1.0]), torch.tensor([1, 0])) == pytest.approx(-math.log(1e-7))
