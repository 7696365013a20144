import numpy as np
import pytest
import torch

from recforge import registry
from recforge.data.synthetic import generate
from recforge.models.layers import Linear, ReLUDropout, keep_mask
from recforge.models.ncf import NCFConfig, gmf, mlp_model, neumf
from recforge.models.popularity import ItemPopularity
from recforge.registry import build_config, build_task
from recforge.runtime import gemm
from recforge.runtime.distributed import Dist
from recforge.train.loop import train


def test_synthetic_data_is_seeded_and_shaped():
    cfg = build_config({}, {"synthetic_users": 2000, "synthetic_items": 1000, "synthetic_interactions": 60_000}).data
    first, again = generate(cfg), generate(cfg)
    assert np.array_equal(first.items, again.items) and np.array_equal(first.users, again.users)
    per_user = np.bincount(first.users)
    assert per_user.min() >= 20 and len(per_user) == 2000
    assert 0.99 * 60_000 <= len(first.users) <= 60_000
    pairs = first.users.astype(np.int64) * 1000 + first.items
    assert len(np.unique(pairs)) == len(pairs)  # no repeated (user, item)
    popularity = np.sort(np.bincount(first.items, minlength=1000))[::-1]
    assert popularity[:100].sum() > 0.3 * len(first.items)  # power-law head: 10% of items, 30% of use
    assert popularity[:10].mean() > 50 * popularity[-10:].mean()


def test_neumf_learns_the_planted_signal_and_beats_popularity(tmp_path):
    cfg = build_config(
        {},
        {
            "dataset": "synthetic",
            "synthetic_users": 300,
            "synthetic_items": 200,
            "synthetic_interactions": 15_000,
            "cache_dir": str(tmp_path / "cache"),
            "output_dir": str(tmp_path / "run"),
            "epochs": 8,
            "batch_size": 512,
            "num_factors": 16,
            "layers": "64,32,16",
            "learning_rate": 0.01,
            "threads": 1,
        },
    )
    summary = train(cfg, registry)
    task = build_task(cfg, torch.device("cpu"), Dist(), lambda *_: None)
    popularity, _ = task.evaluate(ItemPopularity(task.data.train_items, task.data.num_items))
    assert summary["metrics"]["HR@10"] > popularity["HR@10"] + 0.15
    assert summary["metrics"]["HR@10"] > 0.45  # random ranking of 100 candidates: 0.10


def test_projected_first_layer_matches_the_plain_layer():
    torch.manual_seed(0)
    model = neumf(30, 20, NCFConfig(num_factors=4, layers=[16, 8, 4]))
    small = {"user": torch.randint(0, 30, (10,)), "item": torch.randint(0, 20, (10,))}  # plain path
    large = {"user": torch.randint(0, 30, (200,)), "item": torch.randint(0, 20, (200,))}  # projected path
    for batch in (small, large):
        model.zero_grad()
        fast = model(batch)
        fast.square().sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        first = model.mlp[0]
        h = first(torch.cat([model.mlp_user(batch["user"]), model.mlp_item(batch["item"])], dim=1))
        gmf_part = model.gmf_user(batch["user"]) * model.gmf_item(batch["item"])
        slow = model.predict(torch.cat([gmf_part, model.mlp[1:](h)], dim=1)).squeeze(1)
        slow.square().sum().backward()
        assert torch.allclose(fast, slow, atol=1e-6)
        for name, param in model.named_parameters():
            assert torch.allclose(grads[name], param.grad, atol=1e-5), name


@pytest.mark.parametrize("backend", gemm.BACKENDS)
@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("fan_in,fan_out", [(37, 24), (13, 40)])  # both ways of taking the weight gradient
def test_linear_on_either_backend_equals_torch_linear(backend, input_grad, fan_in, fan_out):
    # fp32 on the CPU runs through oneDNN with a hand-written backward, or torch's matmul; results
    # and every gradient must be nn.Linear's (up to float rounding).
    torch.manual_seed(0)
    ours = Linear(fan_in, fan_out)
    ours.backend = backend
    reference = torch.nn.Linear(fan_in, fan_out)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(65, fan_in, requires_grad=input_grad)
    assert gemm.onednn_applies(x, ours.weight) or not torch.backends.mkldnn.is_available()
    upstream = torch.randn(65, fan_out)
    outputs = []
    for layer in (ours, reference):
        x.grad = None
        y = layer(x)
        y.backward(upstream)
        outputs.append((y, layer.weight.grad, layer.bias.grad, x.grad))
    for got, want in zip(*outputs):
        assert (got is None) == (want is None)
        if got is not None:
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert torch.is_tensor(outputs[0][1]) and outputs[0][1].abs().sum() > 0


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_linear_takes_empty_batches_and_no_inputs():
    # An evaluation shard can be empty, and a click log can have no numeric features.
    assert Linear(3, 2)(torch.zeros(0, 3)).shape == (0, 2)
    layer = Linear(0, 1)
    y = layer(torch.zeros(4, 0))
    y.sum().backward()
    assert torch.equal(y, layer.bias.expand(4, 1)) and layer.bias.grad.item() == 4


def test_relu_dropout_drops_at_rate_and_scales_survivors():
    torch.manual_seed(1)
    for generator in (None, np.random.Generator(np.random.PCG64(0))):
        keep = keep_mask(torch.Size([1000, 1000]), 0.1, torch.device("cpu"), generator)
        assert abs(keep.float().mean().item() - 0.9) < 0.002
    layer = ReLUDropout(0.25)
    x = torch.randn(400, 500, requires_grad=True)
    y = layer(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)  # survivors are positive inputs, scaled
    assert (x[kept] > 0).all()
    assert abs(kept.float().mean().item() - 0.5 * 0.75) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.75)
    layer.eval()
    assert torch.equal(layer(x), torch.relu(x))


def test_neumf_from_pretrained_branches_scores_their_blend():
    torch.manual_seed(0)
    cfg = NCFConfig(num_factors=4, layers=[8, 4])
    g, m, fused = gmf(5, 6, cfg), mlp_model(5, 6, cfg), neumf(5, 6, cfg)
    fused.load_pretrained(g.state_dict(), m.state_dict(), alpha=0.5)
    batch = {"user": torch.tensor([0, 1, 4]), "item": torch.tensor([5, 2, 0])}
    # the fused predict layer is the average of the two pretrained ones
    assert torch.allclose(fused(batch), 0.5 * g(batch) + 0.5 * m(batch), atol=1e-6)


def test_pretrained_shapes_must_fit():
    cfg = NCFConfig(num_factors=4, layers=[8, 4])
    other = gmf(5, 6, NCFConfig(num_factors=3, layers=[8, 4]))
    with pytest.raises(Exception, match="does not fit"):
        neumf(5, 6, cfg).load_pretrained(other.state_dict(), mlp_model(5, 6, cfg).state_dict(), 0.5)
