import io
import math

import pytest
import torch
from torch import nn

from recforge.optim.proximal import Ftrl, ProximalAdagrad

W0 = [0.5, -0.3, 0.1, 0.8, -0.6]
G1 = [0.4, -0.2, 0.05, -1.0, 0.3]
G2 = [0.5, 0.1, -0.02, -0.5, 0.6]


def ftrl_by_hand(w, g, accumulator, linear, lr, l1, l2):
    """One FTRL-Proximal step (lr_power -1/2) in plain floats: new (w, accumulator, linear)."""
    new_w, new_accumulator, new_linear = [], [], []
    for wi, gi, ni, zi in zip(w, g, accumulator, linear):
        n_new = ni + gi * gi
        sigma = (math.sqrt(n_new) - math.sqrt(ni)) / lr
        zi = zi + gi - sigma * wi
        quadratic = math.sqrt(n_new) / lr + 2 * l2
        new_w.append((min(max(zi, -l1), l1) - zi) / quadratic)
        new_accumulator.append(n_new)
        new_linear.append(zi)
    return new_w, new_accumulator, new_linear


def proximal_adagrad_by_hand(w, g, accumulator, lr, l1, l2):
    """One proximal Adagrad step in plain floats: new (w, accumulator)."""
    new_w, new_accumulator = [], []
    for wi, gi, ni in zip(w, g, accumulator):
        ni = ni + gi * gi
        lr_t = lr / math.sqrt(ni)
        v = wi - lr_t * gi
        new_w.append(math.copysign(max(abs(v) - lr_t * l1, 0.0), v) / (1 + lr_t * l2))
        new_accumulator.append(ni)
    return new_w, new_accumulator


def assert_matches(actual: torch.Tensor, expected: list[float]):
    assert actual.dtype == torch.float32
    assert actual.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_ftrl_two_steps_by_hand():
    weight = nn.Parameter(torch.tensor(W0))
    optimizer = Ftrl([weight], lr=0.2, initial_accumulator=0.1, l1=0.3, l2=0.05)
    w, accumulator, linear = W0, [0.1] * 5, [0.0] * 5
    for step, (grad, lr) in enumerate([(G1, 0.2), (G2, 0.1)]):  # the second step with a scheduled lr
        optimizer.param_groups[0]["lr"] = lr
        weight.grad = torch.tensor(grad)
        optimizer.step()
        w, accumulator, linear = ftrl_by_hand(w, grad, accumulator, linear, lr, l1=0.3, l2=0.05)
        assert_matches(weight.detach(), w)
        assert_matches(optimizer.state[weight]["accumulator"], accumulator)
        assert_matches(optimizer.state[weight]["linear"], linear)
        # |linear| <= l1 gives exactly 0; coordinate 0 leaves zero in the second step
        zeros = [[0, 1, 2], [1, 2]][step]
        assert [i for i, x in enumerate(weight.tolist()) if x == 0.0] == zeros
        assert [i for i, x in enumerate(w) if x == 0.0] == zeros


def test_proximal_adagrad_two_steps_by_hand():
    weight = nn.Parameter(torch.tensor(W0))
    optimizer = ProximalAdagrad([weight], lr=0.05, initial_accumulator=0.1, l1=1.0, l2=0.5)
    w, accumulator = W0, [0.1] * 5
    for step, (grad, lr) in enumerate([(G1, 0.05), (G2, 0.1)]):
        optimizer.param_groups[0]["lr"] = lr
        weight.grad = torch.tensor(grad)
        optimizer.step()
        w, accumulator = proximal_adagrad_by_hand(w, grad, accumulator, lr, l1=1.0, l2=0.5)
        assert_matches(weight.detach(), w)
        assert_matches(optimizer.state[weight]["accumulator"], accumulator)
        zeros = [[2], [1, 2]][step]  # the step lands within lr_t * l1 of 0
        assert [i for i, x in enumerate(weight.tolist()) if x == 0.0] == zeros
        assert [i for i, x in enumerate(w) if x == 0.0] == zeros


OPTIMIZERS = {
    "ftrl": lambda params: Ftrl(params, lr=0.2, l1=0.01, l2=0.01),
    "proximal-adagrad": lambda params: ProximalAdagrad(params, lr=0.1, l1=0.01, l2=0.01),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_sparse_gradients_match_dense_on_touched_rows(name):
    torch.manual_seed(0)
    sparse = nn.EmbeddingBag(10, 3, mode="sum", sparse=True)
    dense = nn.EmbeddingBag(10, 3, mode="sum", sparse=False)
    dense.load_state_dict(sparse.state_dict())
    initial = sparse.weight.detach().clone()
    optimizers = [OPTIMIZERS[name](sparse.parameters()), OPTIMIZERS[name](dense.parameters())]
    for _ in range(4):
        # rows 0-5 in every step, most of them several times (their gradients add up); 6-9 never
        ids = torch.cat([torch.arange(6), torch.randint(0, 6, (18,))])[torch.randperm(24)].view(8, 3)
        target = torch.randn(8, 3)
        for table, optimizer in zip((sparse, dense), optimizers):
            optimizer.zero_grad()
            ((table(ids) - target) ** 2).sum().backward()
            optimizer.step()
    assert sparse.weight.grad.is_sparse and not dense.weight.grad.is_sparse
    assert not torch.allclose(sparse.weight[:6], initial[:6], atol=1e-3)
    assert torch.allclose(sparse.weight[:6], dense.weight[:6], atol=1e-6)
    for key, value in optimizers[0].state[sparse.weight].items():
        assert value.dtype == torch.float32 and value.shape == sparse.weight.shape
        assert torch.allclose(value[:6], optimizers[1].state[dense.weight][key][:6], atol=1e-5), key
    assert torch.equal(sparse.weight[6:], initial[6:])
    assert not torch.equal(dense.weight[6:], initial[6:])  # a zero dense gradient still regularizes


@pytest.mark.parametrize(
    "make",
    [lambda params: Ftrl(params, lr=1.0, l1=0.01), lambda params: ProximalAdagrad(params, lr=0.5, l1=0.01)],
    ids=list(OPTIMIZERS),
)
def test_logistic_regression_learns_planted_weights(make):
    torch.manual_seed(0)
    planted = torch.tensor([2.0, -3.0, 0.0, 1.5, 0.0, -2.0])
    x = torch.randn(512, 6)
    y = (x @ planted + 0.5 > 0).float()
    model = nn.Linear(6, 1)
    optimizer = make(model.parameters())

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
        loss.backward()
        return loss

    first = optimizer.step(closure).item()
    for _ in range(300):
        loss = optimizer.step(closure).item()
    assert first > 0.5 and loss < 0.15
    assert ((model(x).squeeze(1) > 0).float() == y).float().mean() > 0.97
    signs = torch.sign(model.weight[0, planted != 0])
    assert torch.equal(signs, torch.sign(planted[planted != 0]))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_round_trip_continues_identically(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.EmbeddingBag(10, 3, mode="sum", sparse=True), nn.Linear(3, 1))
    batches = [(torch.randint(0, 10, (8, 2)), torch.randn(8, 1)) for _ in range(6)]

    def train(model, optimizer, batches):
        for ids, target in batches:
            optimizer.zero_grad()
            ((model(ids) - target) ** 2).sum().backward()
            optimizer.step()

    optimizer = OPTIMIZERS[name](model.parameters())
    optimizer.param_groups[0]["lr"] *= 0.5  # as a schedule does; the checkpoint keeps it
    train(model, optimizer, batches[:3])
    saved = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, saved)
    saved.seek(0)
    checkpoint = torch.load(saved)
    resumed = nn.Sequential(nn.EmbeddingBag(10, 3, mode="sum", sparse=True), nn.Linear(3, 1))
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer = type(optimizer)(resumed.parameters())  # default hyperparameters until loaded
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    assert resumed_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    train(model, optimizer, batches[3:])
    train(resumed, resumed_optimizer, batches[3:])
    for ours, theirs in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(ours, theirs)
    for p in resumed.parameters():
        assert all(value.dtype == torch.float32 for value in resumed_optimizer.state[p].values())
