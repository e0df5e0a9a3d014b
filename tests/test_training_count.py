"""The training step's count filed by phase, category and layer, each figure written out from its formula (small
models: every test runs in well under a second).

Conventions (rules.py): a Linear(in, out) on a batch of B runs ``addmm``: B*in*out MACs (2 FLOPs each, conv_matmul)
and B*out bias adds; its backward computes grad-input (B*out*in MACs) only when its input needs grad, grad-weight
(out*B*in MACs) only when its weight does, and grad-bias as a sum over the batch (B*out, elementwise). Loss 'sum':
1 FLOP per output element, its backward (expand) none. SGD without momentum: 2 FLOPs per trainable element.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from gflops_track.counting.rules import FLOP_RULES, Category, OpCall, OpCost
from gflops_track.counting.training import count_training_cost
from test_training_step import _column_sums_match

aten = torch.ops.aten
ZERO = {str(category): 0 for category in Category}  # every category is a key, 0 where nothing ran


def _rows(cost) -> dict[str, tuple[int, int, int, int]]:
    """Each layer row's (forward MACs, forward FLOPs, backward MACs, backward FLOPs)."""
    return {
        layer.name: (layer.forward_macs, layer.forward_flops, layer.backward_macs, layer.backward_flops)
        for layer in cost.layers
    }


@pytest.mark.parametrize(("prefer_meta", "backend", "note"), [(True, "meta", ""), (False, "real", "meta disabled")])
def test_phase_category_and_layer_sums_of_two_linears(prefer_meta: bool, backend: str, note: str) -> None:
    """Linear(4, 3) with its weight frozen -> Linear(3, 2), batch 5, loss 'sum', SGD.

    forward:  first addmm 2*5*4*3 = 120 conv_matmul + 15 bias; second 2*5*3*2 = 60 + 10 bias; loss 5*2 = 10
    backward: second grad-input 5*2*3 and grad-weight 2*5*3 MACs (120 FLOPs), grad-bias 10; first: no grad-input (x
              needs none), no grad-weight (frozen), grad-bias 5*3 = 15
    optimizer: 2 * trainable (3 + 6 + 2 = 11) = 22; params counts the frozen weight too: 12 + 3 + 6 + 2 = 23
    """
    batch, d_in, hidden, d_out = 5, 4, 3, 2
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.Linear(hidden, d_out))
    model[0].weight.requires_grad_(False)
    cost = count_training_cost(model, (torch.randn(batch, d_in),), optimizer="sgd", prefer_meta=prefer_meta)
    assert (cost.backend, cost.backend_note) == (backend, note)
    first, second = batch * d_in * hidden, batch * hidden * d_out  # forward MACs
    trainable = hidden + hidden * d_out + d_out
    assert (cost.params, cost.trainable_params) == (d_in * hidden + trainable, trainable) == (23, 11)
    forward = {**ZERO, "conv_matmul": 2 * (first + second), "bias": batch * (hidden + d_out), "elementwise": 10}
    backward = {**ZERO, "conv_matmul": 2 * 2 * second, "elementwise": batch * (d_out + hidden)}
    optimizer = {**ZERO, "elementwise": 2 * trainable}
    assert cost.flops_by_phase_category == {"forward": forward, "backward": backward, "optimizer": optimizer}
    assert cost.flops_by_category == {**ZERO, "conv_matmul": 300, "bias": 25, "elementwise": 10 + 25 + 22}
    assert cost.flops_by_phase == {"forward": 215, "backward": 145, "optimizer": 22}
    assert cost.macs_by_phase == {"forward": first + second, "backward": 2 * second, "optimizer": 0}
    assert _rows(cost) == {
        "(root)": (0, 0, 0, 0),
        "0": (first, 2 * first + batch * hidden, 0, batch * hidden),
        "1": (second, 2 * second + batch * d_out, 2 * second, 4 * second + batch * d_out),
        "(loss)": (0, batch * d_out, 0, 0),
    }
    assert cost.layers[-1].backward_ops == "expand x1, ones_like x1"  # the loss's gradient: ones, then broadcast
    assert [(layer.name, layer.type, layer.depth, layer.params) for layer in cost.layers] == [
        ("(root)", "Sequential", 0, 0),
        ("0", "Linear", 1, hidden),  # own trainable parameters: the bias only
        ("1", "Linear", 1, hidden * d_out + d_out),
        ("(loss)", "loss:sum", 0, 0),
    ]


class TwoInputs(nn.Module):
    """``a(x)``, plus ``b(extra)`` when the keyword input is given."""

    def __init__(self, d_x: int, d_extra: int, d_out: int) -> None:
        super().__init__()
        self.a = nn.Linear(d_x, d_out, bias=False)
        self.b = nn.Linear(d_extra, d_out, bias=False)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        y = self.a(x)
        return y + self.b(extra) if extra is not None else y


def test_keyword_inputs_reach_the_forward() -> None:
    """kwargs={'extra': (B, 6)}: a: B*4*3 MACs, b: B*6*3 MACs forward; backward grad-weight only (inputs need no
    grad), the same MACs again; the add and the loss: B*3 FLOPs each."""
    batch, d_x, d_extra, d_out = 2, 4, 6, 3
    model = TwoInputs(d_x, d_extra, d_out)
    x, extra = torch.randn(batch, d_x), torch.randn(batch, d_extra)
    cost = count_training_cost(model, (x,), {"extra": extra}, optimizer="none")
    a, b = batch * d_x * d_out, batch * d_extra * d_out
    assert cost.macs_by_phase == {"forward": a + b, "backward": a + b, "optimizer": 0}
    assert cost.flops_by_phase == {"forward": 2 * (a + b) + 2 * batch * d_out, "backward": 2 * (a + b), "optimizer": 0}
    rows = _rows(cost)
    assert rows["a"] == (a, 2 * a, a, 2 * a) and rows["b"] == (b, 2 * b, b, 2 * b)


@pytest.mark.parametrize("given", ["none", "indices", "probabilities"])
def test_cross_entropy_counts_the_labels_given(given: str) -> None:
    """Linear(4, 3) on B=5, cross_entropy, logits (B, C=3). log_softmax: 6 FLOPs per logit (activation), its
    backward 4. Class indices (made as class 0 when not given): nll_loss picks and sums, 2 per label, its backward 1.
    Probabilities (B, C): target * log-probabilities (B*C), their sum (B*C), negate and divide by B (1 each); the
    backward: the divide and the negate (1 each), times the target (B*C)."""
    batch, d_in, classes = 5, 4, 3
    labels = {
        "none": None,
        "indices": torch.tensor([0, 2, 1, 1, 0]),
        "probabilities": torch.softmax(torch.randn(batch, classes), dim=1),
    }[given]
    cost = count_training_cost(
        nn.Linear(d_in, classes), (torch.randn(batch, d_in),), loss="cross_entropy", optimizer="none", labels=labels
    )
    logits = batch * classes
    if given == "probabilities":
        loss_row = (0, 6 * logits + logits + logits + 2, 0, 4 * logits + 2 + logits)
    else:
        loss_row = (0, 6 * logits + 2 * batch, 0, 4 * logits + batch)
    assert _rows(cost)["(loss)"] == loss_row
    assert cost.layers[-1].type == "loss:cross_entropy"
    assert cost.uncounted_ops == {}


def test_token_labels_of_a_language_model_take_the_last_dim_as_classes() -> None:
    """An LM's logits (N=2, L=3, V=5) against token ids (2, 3): classes on the last dim, as Hugging Face computes it
    (they were refused, the hint asking for (2, 5), the sequence axis taken for classes). log_softmax over the 6
    tokens' 5 logits: 6 per logit (30 logits), nll 2 per token; backward 4 per logit and 1 per token."""
    model = nn.Sequential(nn.Embedding(7, 4), nn.Linear(4, 5))
    ids = torch.randint(0, 7, (2, 3))
    cost = count_training_cost(model, (ids,), loss="cross_entropy", optimizer="none", labels=ids.remainder(5))
    logits, tokens = 2 * 3 * 5, 2 * 3
    assert _rows(cost)["(loss)"] == (0, 6 * logits + 2 * tokens, 0, 4 * logits + tokens)
    assert cost.uncounted_ops == {}


def test_labels_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(ValueError, match=r"labels of shape \[4\] are not allowed for a model output of shape \[5, 3\]"):
        count_training_cost(
            nn.Linear(4, 3), (torch.randn(5, 4),), loss="cross_entropy", labels=torch.zeros(4, dtype=torch.long)
        )


class Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).detach()


def test_an_output_that_needs_no_parameter_is_refused() -> None:
    with pytest.raises(
        ValueError,
        match=r"^model=Detached is not allowed in a training step: its output does not depend on any trainable "
        r"parameter$",
    ):
        count_training_cost(Detached(), (torch.randn(3, 4),))


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h) * 3.0


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x * 2.0)


def test_uncounted_ops_are_named_by_phase_and_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no rule for ``mul`` and ``add_``: the root's ``x * 2`` is named after the model's class, the inner
    module's ``* 3`` and its backward (grad * 3) after the module, SGD's ``p.add_(grad)`` (weight, bias) after the
    optimizer; each with its calls, none priced."""
    monkeypatch.delitem(FLOP_RULES, aten.mul)
    monkeypatch.delitem(FLOP_RULES, aten.add_)
    cost = count_training_cost(Scaled(), (torch.randn(5, 4),), optimizer="sgd")
    assert cost.uncounted_ops == {
        "aten.mul (forward, in Scaled)": 1,
        "aten.mul (forward, in inner)": 1,
        "aten.mul (backward, in inner)": 1,
        "aten.add_ (optimizer, in (optimizer))": 2,
    }
    assert cost.flops_by_phase["optimizer"] == 0


@torch.library.custom_op("gflops_test::step_scaled_square", mutates_args=())
def step_scaled_square(x: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * x * x: 2 FLOPs per element."""
    return scale * x * x


@step_scaled_square.register_fake
def _(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.empty_like(x)


def step_scaled_square_rule(call: OpCall) -> OpCost:
    x = call.tensor("x")
    assert x is not None
    return OpCost(flops={Category.ELEMENTWISE: 2 * x.numel()})


class Prescaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.ops.gflops_test.step_scaled_square(x, 3.0))


def test_extra_rules_price_a_custom_op_in_the_step() -> None:
    """The custom op on the (B=5, 4) input: uncounted without a rule, 2 FLOPs per element (40) with one; the rest:
    mm 2*5*4*3 = 120 FLOPs and the loss 15 forward, grad-weight 120 backward. A rule for an op that has one is
    refused, as for the inference count."""
    op = torch.ops.gflops_test.step_scaled_square
    x = torch.randn(5, 4)
    without = count_training_cost(Prescaled(), (x,), optimizer="none")
    assert without.uncounted_ops == {"gflops_test.step_scaled_square (forward, in Prescaled)": 1}
    assert without.flops_by_phase == {"forward": 120 + 15, "backward": 120, "optimizer": 0}
    priced = count_training_cost(Prescaled(), (x,), optimizer="none", extra_rules={op: step_scaled_square_rule})
    assert priced.uncounted_ops == {}
    assert priced.flops_by_phase == {"forward": 2 * 20 + 120 + 15, "backward": 120, "optimizer": 0}
    with pytest.raises(ValueError, match=r"extra_rules\[aten.mm\] is not allowed: aten.mm already has a rule"):
        count_training_cost(Prescaled(), (x,), extra_rules={aten.mm: step_scaled_square_rule})


class ReadsItsInput(nn.Module):
    """Reads a value of its input (no meta step), unless the input is fake; records the devices each forward saw."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)
        self.seen: list[tuple[str, str]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch._subclasses.fake_tensor import is_fake

        self.seen.append((x.device.type, self.linear.weight.device.type))
        if not is_fake(x) and bool(x.sum() > 1e9):  # a library skips the read on fake tensors: it is a trace
            x = x / 2
        return self.linear(x)


@pytest.mark.parametrize("device_type", [None, "meta"], ids=["default", "other"])
def test_a_weightless_model_meta_cannot_run_steps_on_fake_tensors_of_device_type(device_type: str | None) -> None:
    """Built on meta, it reads its input: the meta step fails, the fake one runs with its stand-ins (and inputs made
    on meta) on ``device_type``, "cpu" by default. (A CPU-only torch cannot make fake CUDA parameters that require
    grad, so meta stands for another device here.) Linear(8, 4) on B=3, SGD: forward 96 MACs, + 12 bias + 12 loss;
    backward grad-weight 96 MACs + grad-bias 12; optimizer 2 * 36."""
    with torch.device("meta"):
        model = ReadsItsInput()
    x = torch.randn(3, 8) if device_type is None else torch.empty(3, 8, device=device_type)
    options = {} if device_type is None else {"device_type": device_type}
    cost = count_training_cost(model, (x,), optimizer="sgd", **options)
    assert cost.backend == "fake" and "meta step failed" in cost.backend_note
    assert model.seen[-1] == (device_type or "cpu",) * 2
    assert cost.macs_by_phase == {"forward": 96, "backward": 96, "optimizer": 0}
    assert cost.flops_by_phase == {"forward": 192 + 12 + 12, "backward": 192 + 12, "optimizer": 2 * (32 + 4)}


class Stage(nn.Module):
    """pre -> its own matmul -> a ReLU module no one registered (made on the fly) -> post."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.pre = nn.Linear(d, d, bias=False)
        self.mix = nn.Parameter(torch.randn(d, d))
        self.post = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre(x) @ self.mix
        return self.post(nn.ReLU()(h))


class Net(nn.Module):
    """stage -> the root's own ``* 2`` -> head."""

    def __init__(self, d: int, d_out: int) -> None:
        super().__init__()
        self.stage = Stage(d)
        self.head = nn.Linear(d, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(x) * 2.0)


def test_backward_ops_are_filed_under_the_module_whose_forward_ran_them() -> None:
    """Net(d=4, d_out=3) on B=2, loss 'sum', no optimizer. A module's ops between its children's calls are its own,
    forward and backward, at every depth; so are those of a module it runs that is not registered (the ReLU).

    stage.pre:  forward B*d*d MACs; backward grad-weight only (x needs no grad): B*d*d
    stage:      h @ mix: B*d*d MACs, ReLU B*d; backward grad-input and grad-mix 2*B*d*d, threshold_backward B*d
    stage.post: forward B*d*d; backward 2*B*d*d
    (root):     * 2: B*d forward, its backward (grad * 2) B*d
    head:       forward B*d*o; backward 2*B*d*o; (loss): B*o
    """
    batch, d, d_out = 2, 4, 3
    cost = count_training_cost(Net(d, d_out), (torch.randn(batch, d),), optimizer="none")
    m, e, head = batch * d * d, batch * d, batch * d * d_out
    assert _rows(cost) == {
        "(root)": (0, e, 0, e),
        "stage": (m, 2 * m + e, 2 * m, 4 * m + e),
        "stage.pre": (m, 2 * m, m, 2 * m),
        "stage.post": (m, 2 * m, 2 * m, 4 * m),
        "head": (head, 2 * head, 2 * head, 4 * head),
        "(loss)": (0, batch * d_out, 0, 0),
    }
    _column_sums_match(cost)


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class Checkpointed(nn.Module):
    """first -> block, the block under reentrant activation checkpointing."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.first = nn.Linear(d, d, bias=False)
        self.block = Block(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self.block, self.first(x), use_reentrant=True)


class Outer(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.stage = Checkpointed(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage(x)


def test_reentrant_checkpointing_files_its_backward_under_the_module_that_checkpoints() -> None:
    """d=4, B=2, no optimizer: m = B*d*d MACs per matmul. The backward runs block.linear's forward again (m), then its
    grad-input and grad-weight (2m), all inside the checkpoint's own autograd node, made in stage's forward: the nodes
    made there have no label and go with that node's, stage's (not the root's, which ran none of it). stage.first's
    grad-weight is m. The per-layer columns add up to the phases."""
    batch, d = 2, 4
    cost = count_training_cost(Outer(d), (torch.randn(batch, d),), optimizer="none")
    m = batch * d * d
    assert cost.macs_by_phase == {"forward": 2 * m, "backward": 4 * m, "optimizer": 0}
    assert {layer.name: layer.backward_macs for layer in cost.layers} == {
        "(root)": 0,
        "stage": 3 * m,
        "stage.first": m,
        "stage.block": 0,
        "stage.block.linear": 0,
        "(loss)": 0,
    }
    _column_sums_match(cost)


@pytest.mark.parametrize("prefer_meta", [True, False], ids=["meta", "real"])
def test_pooling_and_upsampling_backward_are_counted(prefer_meta: bool) -> None:
    """Conv2d(2, 2, 1) -> MaxPool2d(2) -> bilinear x2 -> AvgPool2d(2) on (1, 2, 8, 8), loss 'sum': every backward op has
    a rule (a ResNet's step once listed its pools' backward as uncounted). Per grad_output element, as the forward:
    max pool 1 (each gradient added at its argmax), bilinear 9 (three lerps), avg pool 4 (its 2x2 window).
    Pooled map (1, 2, 4, 4) = 32 elements, upsampled (1, 2, 8, 8) = 128, avg-pooled 32."""
    model = nn.Sequential(nn.Conv2d(2, 2, 1), nn.MaxPool2d(2), nn.Upsample(scale_factor=2, mode="bilinear"))
    model.append(nn.AvgPool2d(2))
    cost = count_training_cost(model, (torch.randn(1, 2, 8, 8),), prefer_meta=prefer_meta)
    assert cost.uncounted_ops == {}
    assert cost.flops_by_phase_category["forward"]["pool_resample"] == 4 * 32 + 9 * 128 + 4 * 32
    assert cost.flops_by_phase_category["backward"]["pool_resample"] == 1 * 32 + 9 * 128 + 4 * 32


class Attention(nn.Module):
    """Queries of 4 heads, keys and values of ``kv_heads`` heads (grouped-query attention when fewer), head size 8,
    from two bias-free projections of a (B, L, 32) input; F.scaled_dot_product_attention, then a sum over the head
    size."""

    def __init__(self, mask: torch.Tensor | None = None, causal: bool = False, kv_heads: int = 4) -> None:
        super().__init__()
        self.q = nn.Linear(32, 32, bias=False)
        self.kv = nn.Linear(32, 2 * 8 * kv_heads, bias=False)
        self.mask, self.causal, self.kv_heads = mask, causal, kv_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q(x).view(batch, length, 4, 8).transpose(1, 2)
        k, v = self.kv(x).view(batch, length, 2, self.kv_heads, 8).permute(2, 0, 3, 1, 4)
        gqa = self.kv_heads != 4
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.causal, enable_gqa=gqa)
        return out.sum(-1)


LENGTH = 10


@pytest.mark.parametrize(
    "options",
    [{}, {"causal": True}, {"mask": torch.ones(LENGTH, LENGTH, dtype=torch.bool).tril()},
     {"mask": torch.zeros(LENGTH, LENGTH)}, {"kv_heads": 2}],
    ids=["plain", "causal", "bool-mask", "float-mask", "gqa"],
)  # fmt: skip
def test_attention_backward_on_meta_is_the_real_steps(options: dict) -> None:
    """On meta, SDPA ran its math decomposition, whose backward scales q and k (B*H*(L+S)*E = 2*4*20*8 = 1,280 FLOPs)
    where the real CPU step's fused backward scales the scores (B*H*L*S = 800): meta and real steps differed. Now
    the same, and both as the convention has it. B=2, H=4, L=S=10, E=Ev=8, scores = 800. SDPA backward: four
    products 2*scores*(E+Ev) MACs, softmax backward 4 per score (activation), the scale 1 per score (elementwise);
    the projections' grad-weight 2*10*32*(32 + 16*kv_heads) MACs (the input needs no grad-input); the sum's backward
    is free. Forward: products scores*(E+Ev) MACs, softmax 5, scale 1 and mask 1 (when given) per score."""
    torch.manual_seed(0)
    batch, kv_heads = 2, options.get("kv_heads", 4)
    scores = batch * 4 * LENGTH * LENGTH
    projections = batch * LENGTH * 32 * (32 + 2 * 8 * kv_heads)
    x = torch.randn(batch, LENGTH, 32)
    meta = count_training_cost(Attention(**options), (x,), optimizer="none")
    real = count_training_cost(Attention(**options), (x,), optimizer="none", prefer_meta=False)
    assert (meta.backend, real.backend) == ("meta", "real")
    assert meta.flops_by_phase_category == real.flops_by_phase_category
    masked = "mask" in options or "causal" in options
    assert meta.flops_by_phase_category["backward"] == {
        **ZERO, "conv_matmul": 2 * (projections + 2 * scores * 16), "activation": 4 * scores, "elementwise": scores,
    }  # fmt: skip
    assert meta.flops_by_phase_category["forward"] == {
        **ZERO, "conv_matmul": 2 * (projections + scores * 16), "activation": 5 * scores,
        "elementwise": scores * (2 if masked else 1) + batch * 4 * LENGTH * 8 + batch * 4 * LENGTH,
    }  # fmt: skip  # the scale (+ the mask) per score; the sum over E, 1 per element; the loss 'sum', 1 per output
    assert meta.macs_by_phase == real.macs_by_phase == {
        "forward": projections + scores * 16, "backward": projections + 2 * scores * 16, "optimizer": 0
    }  # fmt: skip
