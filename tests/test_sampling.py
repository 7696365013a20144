import json

import numpy as np
import pytest
import torch

from recforge.core.errors import RecforgeError
from recforge.data.batches import ImplicitEpochs
from recforge.data.implicit import LeaveOneOutData
from recforge.data.sampling import contains, sample_eval_negatives, sample_train_negatives


def dense_data(num_users=40, num_items=150, seed=0) -> LeaveOneOutData:
    """Users who interacted with most of the catalogue: collisions are the rule, not the exception."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(num_users):  # test fixture construction, not library code
        count = rng.integers(10, num_items - 101)
        chosen = np.sort(rng.choice(num_items, size=count, replace=False))
        users += [u] * (count - 1)
        items += list(chosen[:-1])
    users, items = np.array(users, np.int32), np.array(items, np.int32)
    test = np.array(
        [rng.choice(np.setdiff1d(np.arange(num_items), items[users == u])) for u in range(num_users)], np.int32
    )
    return LeaveOneOutData(users, items, test, np.arange(num_users), np.arange(num_items))


def known_sets(data):
    return [set(data.train_items[data.train_users == u]) | {data.test_items[u]} for u in range(data.num_users)]


def test_contains():
    keys = torch.tensor([2, 5, 9, 14])
    assert contains(keys, torch.tensor([1, 2, 9, 10, 14, 20])).tolist() == [False, True, True, False, True, False]
    assert contains(torch.tensor([], dtype=torch.int64), torch.tensor([1])).tolist() == [False]


def test_verified_training_negatives_are_never_positives():
    data = dense_data()
    keys = torch.from_numpy(data.interaction_keys())
    users = torch.from_numpy(data.train_users)
    generator = torch.Generator().manual_seed(3)
    negatives = sample_train_negatives(users, 4, data.num_items, generator, keys)
    owners = users.repeat(4).numpy()
    known = known_sets(data)
    assert not any(i in known[u] for u, i in zip(owners, negatives.numpy()))
    # without verification the same draws do collide on this dense data
    fast = sample_train_negatives(users, 4, data.num_items, torch.Generator().manual_seed(3))
    assert any(i in known[u] for u, i in zip(owners, fast.numpy()))


def test_training_negatives_are_uniform():
    generator = torch.Generator().manual_seed(0)
    draws = sample_train_negatives(torch.zeros(50_000, dtype=torch.int32), 4, 10, generator)
    counts = np.bincount(draws.numpy(), minlength=10)
    assert counts.min() > 0.95 * 20_000 and counts.max() < 1.05 * 20_000


def test_eval_negatives_are_distinct_true_negatives_and_seeded():
    data = dense_data()
    counts = np.diff(data.user_offsets) + 1
    negatives = sample_eval_negatives(data.interaction_keys(), counts, data.num_items, 99, seed=7)
    assert negatives.shape == (data.num_users, 99)
    known = known_sets(data)
    for u, row in enumerate(negatives):
        assert len(set(row)) == 99
        assert not set(row) & known[u]
    again = sample_eval_negatives(data.interaction_keys(), counts, data.num_items, 99, seed=7)
    other = sample_eval_negatives(data.interaction_keys(), counts, data.num_items, 99, seed=8)
    assert np.array_equal(negatives, again) and not np.array_equal(negatives, other)


def test_eval_negatives_fail_clearly_when_a_user_has_too_few_unknown_items():
    data = dense_data()
    counts = np.diff(data.user_offsets) + 1
    with pytest.raises(RecforgeError, match="valid-negative"):
        sample_eval_negatives(data.interaction_keys(), counts, data.num_items, 140, seed=0)


def test_epoch_holds_each_positive_once_and_the_negatives():
    users = np.array([0, 0, 1, 2, 2, 2], np.int32)
    items = np.array([1, 3, 0, 2, 4, 5], np.int32)
    epochs = ImplicitEpochs(users, items, num_items=8, negatives=4, device=torch.device("cpu"), seed=1)
    batches = [b for b, _, _ in epochs.batches(epoch=1, batch_size=5)]
    user = torch.cat([b["user"] for b in batches]).numpy()
    item = torch.cat([b["item"] for b in batches]).numpy()
    label = torch.cat([b["label"] for b in batches]).numpy()
    assert len(label) == 30 and label.sum() == 6
    assert sorted(zip(user[label == 1], item[label == 1])) == sorted(zip(users, items))
    assert np.bincount(user[label == 0]).tolist() == [8, 4, 12]  # 4 negatives per positive
    # the next epoch draws a new order and new negatives
    second = torch.cat([b["item"] for b, _, _ in epochs.batches(epoch=2, batch_size=5)]).numpy()
    assert not np.array_equal(item, second)


def test_ranks_split_each_global_batch_without_overlap():
    users = np.repeat(np.arange(7, dtype=np.int32), 3)
    items = np.tile(np.arange(3, dtype=np.int32), 7)
    cpu = torch.device("cpu")
    whole = list(ImplicitEpochs(users, items, num_items=10, negatives=2, device=cpu, seed=5).batches(1, batch_size=9))
    parts = [
        list(ImplicitEpochs(users, items, 10, 2, cpu, seed=5, rank=r, world=2).batches(1, batch_size=9))
        for r in range(2)
    ]
    for step, (batch, size, _) in enumerate(whole):
        assert parts[0][step][1] == parts[1][step][1] == size
        assert parts[0][step][2] == parts[1][step][2] == -(-size // 2)
        joined = {k: torch.cat([parts[0][step][0][k], parts[1][step][0][k]]) for k in batch}
        assert all(torch.equal(joined[k], batch[k]) for k in batch)


@pytest.mark.parametrize("users,items,verified", [(151, 300, True), (300, 20000, False)])
def test_auto_verifies_negatives_where_unchecked_draws_often_hit_known_items(tmp_path, capsys, users, items, verified):
    from conftest import tiny_synthetic_args

    from recforge.cli import main
    from recforge.config import DataConfig
    from recforge.data.cache import prepare

    args = tiny_synthetic_args(tmp_path, epochs=1, synthetic_users=users, synthetic_items=items)
    main(["train", *args])
    resolved = json.loads((tmp_path / "run" / "summary.json").read_text())["resolved"]["verify_negatives"]
    assert resolved["value"] is verified
    flags = dict(zip(args[::2], args[1::2]))
    data, _ = prepare(
        DataConfig(dataset="synthetic", cache_dir=flags["--cache-dir"], synthetic_users=users,
                   synthetic_items=items, synthetic_interactions=6000),
        log=lambda *a: None,
    )  # fmt: skip
    known = np.diff(data.user_offsets) + 1.0
    share = (known**2).sum() / (data.num_items * known.sum())  # by hand: sum d^2 / (items * sum d)
    assert resolved["why"].startswith(f"{share:.1%} of unchecked draws would be known positives")
    assert bool(share >= 0.03) is verified
    assert f"--verify-negatives auto: {str(verified).lower()} ({resolved['why']})" in capsys.readouterr().out
