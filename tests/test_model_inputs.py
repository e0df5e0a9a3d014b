"""Inputs of any dtype, models built without weights (meta), and what thop's notes say, through the Python API.

Every count is checked against its formula (``fixture_models``: TinyLM's MACs and params written out).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fixture_models import Conv1D, Conv1DStack, TinyLM, tiny_lm_macs, tiny_lm_params
from gflops_track import count, count_training_step, measure, profile
from gflops_track.counting.counting_forward import swapped_tensors
from gflops_track.counting.op_counter import count_cost
from gflops_track.counting.thop_compare import NAMES_SHOWN, named, thop_count, thop_distribution, thop_notes
from gflops_track.models.construct import construct, weight_bytes
from gflops_track.options.inputs import InputSpec, ModelInputs, input_spec
from gflops_track.options.runtime import RuntimeOptions
from gflops_track.options.timing import TimingOptions
from gflops_track.pipeline.inputs import random_input, random_inputs
from gflops_track.pipeline.runtime import convert_inputs
from gflops_track.results.counting import ORIGINAL_THOP

BATCH, SEQ, VOCAB = 2, 64, 1000


def ids(batch: int = BATCH, seq: int = SEQ) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq))


# --- inputs of any dtype ---------------------------------------------------------------------------------------


def test_integer_ids_are_drawn_in_their_range_and_masks_are_all_true() -> None:
    spec = InputSpec((4096,), "int64", 5, 9)
    values = random_input(spec, 3, torch.device("cpu"))
    assert values.dtype == torch.int64 and values.shape == (3, 4096)
    assert int(values.min()) == 5 and int(values.max()) == 8  # [low, high): every value of 5..8 drawn from 12,288
    assert random_input(InputSpec((7,), "int32", high=3), 2, torch.device("cpu")).dtype == torch.int32
    mask = random_input(InputSpec((64,), "bool"), 2, torch.device("cpu"))
    assert mask.dtype == torch.bool and bool(mask.all())  # all true unless asked otherwise
    random_mask = random_input(InputSpec((4096,), "bool", low=0), 1, torch.device("cpu"))
    assert 0 < int(random_mask.sum()) < 4096  # low=0: true and false
    floats = random_input(InputSpec((8,)), 2, torch.device("cpu"))
    assert floats.dtype == torch.float32


def test_precision_converts_floating_inputs_only() -> None:
    """bf16 convert + channels_last: the image follows the run; token ids and a 4-D integer tensor stay as made."""
    runtime = RuntimeOptions(dtype="bf16", dtype_mode="convert", memory_format="channels_last")
    plan = ModelInputs(
        (InputSpec((3, 4, 4)), InputSpec((3, 4, 4), "int64", high=10)), {"mask": InputSpec((16,), "bool")}
    )
    args, kwargs = convert_inputs(*random_inputs(plan, 2, torch.device("cpu")), runtime)
    image, integers = args
    assert image.dtype == torch.bfloat16 and image.is_contiguous(memory_format=torch.channels_last)
    assert integers.dtype == torch.int64 and integers.is_contiguous()  # never channels_last: not an image
    assert kwargs["mask"].dtype == torch.bool


def test_one_number_per_sample_is_shape_empty() -> None:
    """``shape: []`` (a diffusion timestep, a class label, a per-sample scale): a (batch,) tensor; it was refused
    from the command line though ``profile`` takes one."""
    spec, problems = input_spec({"shape": [], "dtype": "int64", "high": 1000}, "input.args[0]")
    assert problems == [] and spec == InputSpec((), "int64", None, 1000)
    timesteps = random_input(spec, 4, torch.device("cpu"))
    assert timesteps.shape == (4,) and timesteps.dtype == torch.int64 and int(timesteps.min()) >= 0
    assert random_input(InputSpec(()), 3, torch.device("cpu")).shape == (3,)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"shape": [64], "dtype": "int64"}, "input.kwargs.ids.high=None is not allowed for input.kwargs.ids.dtype"),
        ({"shape": [64], "dtype": "int8", "high": 5}, "input.kwargs.ids.dtype='int8' is not allowed: choose one of"),
        ({"shape": [64], "high": 5}, "input.kwargs.ids.high=5 is not allowed for input.kwargs.ids.dtype='float'"),
        ({"shape": [64], "dtype": "bool", "low": 0, "high": 3}, "are not allowed for a bool mask"),
        ({"shape": [64], "dtype": "int32", "low": 9, "high": 9}, "input.kwargs.ids.low=9 is not allowed"),
        ({"shape": [0]}, "input.kwargs.ids.shape=[0] is not allowed: it must be a list of integers >= 1"),
        ({"shape": [4], "size": 3}, "input.kwargs.ids.size is not allowed: an input takes shape, dtype, low, high"),
        ("abc", "input.kwargs.ids='abc' is not allowed: give a per-sample shape"),
    ],
)
def test_bad_input_specs_are_one_line_naming_the_key(value: object, problem: str) -> None:
    spec, problems = input_spec(value, "input.kwargs.ids")
    assert spec is None and len(problems) == 1 and problem in problems[0]


def test_a_token_id_model_is_counted_by_formula() -> None:
    model = TinyLM()
    result = count(model, ids(), kwargs={"mask": torch.ones(BATCH, SEQ, dtype=torch.bool)})
    assert result.macs == tiny_lm_macs(BATCH, SEQ) == 22_872_064
    assert result.params == tiny_lm_params() == 228_968
    assert result.count_backend == "meta" and result.thop is not None and not result.thop.error  # thop with kwargs


# --- models built without weights ---------------------------------------------------------------------------------


def test_profile_and_count_accept_a_model_on_meta() -> None:
    """Built under torch.device('meta'): the same counts as with weights, timing skipped with a note (this failed
    with 'Cannot copy out of meta tensor' when profile moved the model to the device)."""
    with torch.device("meta"):
        weightless = TinyLM()
    real = count(TinyLM(), ids())
    result = profile(weightless, ids())
    assert (result.params, result.macs, result.flops) == (real.params, real.macs, real.flops)
    assert result.macs == tiny_lm_macs(BATCH, SEQ) and result.timing is None and result.peaks is None
    assert result.notes[0].startswith("timing skipped: the model's weights are on the meta device")
    assert [layer.macs for layer in result.layers] == [layer.macs for layer in real.layers]
    assert all(p.is_meta for p in weightless.parameters())  # left where it was
    with pytest.raises(ValueError, match="cannot be timed"):
        measure(weightless, ids())


def test_a_training_step_of_a_model_on_meta_is_counted_like_the_real_one() -> None:
    with torch.device("meta"):
        weightless = TinyLM()
    real = count_training_step(TinyLM(), ids(), optimizer="adamw")
    step = count_training_step(weightless, ids(), optimizer="adamw")
    assert step.cost.macs_by_phase == real.cost.macs_by_phase and step.cost.flops == real.cost.flops
    # forward M; backward 2M: both operands of every product need a gradient (the embedding's weight is trained)
    assert step.cost.macs_by_phase == {"forward": tiny_lm_macs(BATCH, SEQ), "backward": 2 * tiny_lm_macs(BATCH, SEQ),
                                       "optimizer": 0}  # fmt: skip
    # the embedding's backward priced: each of the batch * seq gradient rows (width 64) is added to its id's row
    assert not any("embed" in op for op in step.cost.uncounted_ops)
    embedding = next(layer for layer in step.cost.layers if layer.name == "embed")
    assert embedding.backward_flops == BATCH * SEQ * 64 and "embedding_dense_backward x1" in embedding.backward_ops


def test_under_autocast_a_model_on_meta_is_priced_in_the_runs_dtype() -> None:
    """Its fake stand-ins live on the run's device, so autocast casts them: the same bytes as the real model."""
    runtime = RuntimeOptions(dtype="bf16")
    with torch.device("meta"):
        weightless = TinyLM()
    real, meta = count(TinyLM(), ids(), runtime=runtime), count(weightless, ids(), runtime=runtime)
    assert meta.count_backend == real.count_backend == "fake"
    assert meta.bytes_moved == real.bytes_moved and meta.macs == real.macs


class ReadsItsInput(nn.Module):
    """Reads a value of its input (as a library checking whether a mask is all ones does): no meta forward."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch._subclasses.fake_tensor import is_fake

        if not is_fake(x) and bool(x.sum() > 1e9):  # a library skips the read on fake tensors: it is a trace
            return x
        return self.linear(x)


def test_a_model_on_meta_that_reads_values_is_counted_on_fake_tensors() -> None:
    with torch.device("meta"):
        weightless = ReadsItsInput()
    result = count(weightless, torch.randn(4, 8))
    assert result.count_backend == "fake" and result.macs == 4 * 8 * 8
    assert "meta forward failed" in result.notes[0] and "counted on fake tensors" in result.notes[0]


def test_auto_builds_on_meta_when_the_weights_do_not_fit() -> None:
    """A 200,000 x 200,000 linear layer: 4e10 fp32 weights, 160 GB; built on meta for free, never for real."""
    built = construct(lambda: nn.Linear(200_000, 200_000, bias=False), "auto", torch.device("cpu"))
    assert all(p.is_meta for p in built.module.parameters())
    assert weight_bytes(built.module) == 200_000 * 200_000 * 4
    assert built.weightless_reason.startswith("weights need 160.0 GB, ") and "free (model.init=auto)" in (
        built.weightless_reason
    )
    small = construct(lambda: nn.Linear(8, 8), "auto", torch.device("cpu"))
    assert small.weightless_reason == "" and not any(p.is_meta for p in small.module.parameters())
    assert construct(lambda: nn.Linear(8, 8), "meta", torch.device("cpu")).module.weight.is_meta
    with pytest.raises(ValueError, match="init='lazy' is not allowed: choose one of auto, meta, real"):
        construct(lambda: nn.Linear(8, 8), "lazy", torch.device("cpu"))


class WidthsFromArange(nn.Module):
    """Derives its layer widths with tensor arithmetic in its constructor, as torchvision's RegNet does
    (``torch.arange(depth) * w_a + w_0``, then ``.tolist()``): under ``torch.device("meta")`` that raised "Cannot
    copy out of meta tensor"."""

    def __init__(self) -> None:
        super().__init__()
        widths = (torch.arange(3) * 4 + 8).tolist()  # 8, 12, 16
        self.layers = nn.Sequential(nn.Linear(widths[0], widths[1]), nn.Linear(widths[1], widths[2]))
        self.register_buffer("scale", torch.ones(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x) * self.scale


def test_a_constructor_that_computes_with_tensors_is_built_on_meta() -> None:
    """model.init=meta and auto: the weights (parameters and buffers) on meta, the constructor's own arithmetic
    real; the registration hooks are gone afterwards. MACs = rows * (8*12 + 12*16)."""
    rows = 5
    with pytest.raises(NotImplementedError, match="meta"), torch.device("meta"):
        WidthsFromArange()
    built = construct(WidthsFromArange, "meta", torch.device("cpu"))
    assert built.weightless_reason == "model.init=meta built it without weights"
    tensors = [*built.module.parameters(), *built.module.buffers()]
    assert len(tensors) == 5 and all(t.is_meta for t in tensors)
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in built.module.parameters())
    assert count(built.module, torch.randn(rows, 8)).macs == rows * (8 * 12 + 12 * 16)
    assert not construct(WidthsFromArange, "auto", torch.device("cpu")).weightless_reason  # fits: built for real
    assert not nn.Linear(2, 2).weight.is_meta and not any(t.is_meta for t in WidthsFromArange().buffers())


class TiedAndItem(nn.Module):
    """Reads a tensor's value in its constructor (``int(t)``: "Tensor.item() cannot be called on meta tensors", as
    ``[x.item() for x in torch.linspace(...)]`` in ConvNeXt's and Swin's reference code) and ties one weight to two
    layers; with ``lazy``, a lazy layer besides."""

    def __init__(self, lazy: bool = False) -> None:
        super().__init__()
        width = int(torch.arange(5).sum()) + 6  # 16
        shared = nn.Parameter(torch.randn(width, width))
        self.first, self.second = nn.Linear(width, width, bias=False), nn.Linear(width, width, bias=False)
        self.first.weight = self.second.weight = shared
        self.head = nn.LazyLinear(4) if lazy else nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.second(self.first(x)))


def test_the_weightless_fallback_keeps_ties_and_laziness() -> None:
    """The fallback gives a tied weight one meta tensor (params and weight bytes once: 16*16 + 16*4 + 4 = 324
    parameters, 1,296 bytes; it was 580) and keeps requires_grad. MACs = rows * (16*16 + 16*16 + 16*4). A lazy layer
    stays lazy, on meta, as under ``torch.device("meta")``."""
    rows = 3
    built = construct(TiedAndItem, "meta", torch.device("cpu")).module
    assert built.first.weight is built.second.weight and built.first.weight.is_meta
    assert all(p.requires_grad for p in built.parameters())
    assert sum(p.numel() for p in built.parameters()) == 324 and weight_bytes(built) == 324 * 4
    assert count(built, torch.randn(rows, 16)).macs == rows * (16 * 16 + 16 * 16 + 16 * 4)
    lazy = construct(lambda: TiedAndItem(lazy=True), "meta", torch.device("cpu")).module.head.weight
    assert isinstance(lazy, nn.parameter.UninitializedParameter) and lazy.is_meta


def lazy_stack() -> nn.Sequential:
    return nn.Sequential(nn.LazyConv2d(8, 3), nn.LazyBatchNorm2d(), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))


# LazyConv2d(8, 3) on (2, 3, 16, 16) gives (2, 8, 14, 14); LazyLinear(10) then takes 8*14*14 = 1,568 features
LAZY_PARAMS = (8 * 3 * 3 * 3 + 8) + 2 * 8 + (10 * 1568 + 10)  # conv, batch norm's affine, linear: 15,930
LAZY_MACS = 2 * (8 * 14 * 14) * (3 * 3 * 3) + 2 * 1568 * 10  # conv 84,672 + linear 31,360 = 116,032


def test_lazy_modules_get_their_first_forward_then_are_counted_timed_and_trained() -> None:
    """Lazy modules know their weights' shapes only after a first forward, and every step failed before it
    ('Attempted to use an uninitialized parameter'). Placing the call gives them that forward once, in eval mode and
    without grad: batch norm's running statistics stay as built, the train flags as they were."""
    model, x = lazy_stack(), torch.randn(2, 3, 16, 16)
    # unknown before the first forward, so counted as none (model.init=auto builds it); batch norm's int64 step count
    assert weight_bytes(model) == 8
    cost = count(model, x)
    assert (cost.params, cost.macs) == (LAZY_PARAMS, LAZY_MACS)
    # thop ran on the initialised model: ours plus its batch norm rule, 4 per output element (2*8*14*14 of them)
    assert cost.thop is not None and cost.thop.raw_macs == LAZY_MACS + 4 * (2 * 8 * 14 * 14)
    assert not any(nn.parameter.is_lazy(p) for p in model.parameters()) and model.training
    norm = model[1]
    assert int(norm.num_batches_tracked) == 0 and bool((norm.running_mean == 0).all())
    assert weight_bytes(model) == 4 * LAZY_PARAMS + 4 * (2 * 8) + 8  # fp32 params, running mean and var; the count
    timed = measure(lazy_stack(), x, options=TimingOptions(warmup=1, min_repeats=3, max_time_s=0.5, layers=False))
    assert timed.latency.median_ms > 0
    step = count_training_step(lazy_stack(), x, optimizer="sgd")
    assert step.cost.macs_by_phase["forward"] == LAZY_MACS


class HalfFrontLazyHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.front, self.head = nn.Linear(5, 6, dtype=torch.bfloat16), nn.LazyLinear(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.front(x).float())


class AuxHead(nn.Module):
    """A lazy auxiliary head that only a train-mode forward reaches (unless ``always``), and a call counter the
    forward bumps."""

    def __init__(self, always: bool = False) -> None:
        super().__init__()
        self.body, self.aux, self.always = nn.LazyLinear(8), nn.LazyLinear(3), always
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        hidden = self.body(x)
        return self.aux(hidden) if self.training or self.always else hidden


def test_lazy_modules_in_another_dtype_and_out_of_reach() -> None:
    """The first forward takes the lazy weights' dtype (a bf16 run converts the model afterwards; bf16 inputs into
    fp32 lazy weights failed: 'Input type (BFloat16) and bias type (float)'); it puts back the buffers it changed; a
    lazy module it does not reach is refused by name, and no weight is left on meta."""
    bf16 = RuntimeOptions(dtype="bf16", dtype_mode="convert")
    images = torch.randn(2, 3, 16, 16, dtype=torch.bfloat16)
    assert count(nn.LazyConv2d(8, 3), images, runtime=bf16).macs == 2 * 8 * 14 * 14 * 3 * 3 * 3
    assert count(nn.LazyLinear(4, dtype=torch.bfloat16), torch.randn(2, 3)).macs == 2 * 3 * 4
    # the inputs go as they are first: a bf16 front casting to the fp32 lazy head itself (a cast input broke it)
    assert count(HalfFrontLazyHead(), torch.randn(2, 5, dtype=torch.bfloat16)).macs == 2 * (5 * 6 + 6 * 3)
    model = AuxHead().eval()
    with pytest.raises(ValueError, match=r"^aux\.weight, aux\.bias belong to lazy modules .* did not reach"):
        count_training_step(model.train(), torch.randn(2, 5), optimizer="sgd")
    assert not any(p.is_meta for p in model.body.parameters()) and int(model.calls) == 0
    reached = AuxHead(always=True)
    assert count(reached, torch.randn(2, 5)).macs == 2 * (5 * 8 + 8 * 3) and int(reached.calls) == 0


def test_a_swap_that_fails_part_way_puts_back_what_it_swapped() -> None:
    """A stand-in that cannot be made for one tensor (here: the second) leaves every original in place."""
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    originals = [*model.parameters()]

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        if tensor is originals[1]:
            raise RuntimeError("no stand-in")
        return torch.empty_like(tensor, device="meta")

    with pytest.raises(RuntimeError, match="no stand-in"), swapped_tensors(model, convert):
        pass
    assert [*model.parameters()] == originals and not any(p.is_meta for p in model.parameters())


def test_a_lazy_model_built_on_meta_is_materialised_on_meta_and_counted() -> None:
    """model.init=meta keeps a lazy layer lazy (on meta); its first forward runs on meta twins of the inputs and
    makes meta weights. MACs = rows * (16*16 + 16*16 + 16*4); params 16*16 + 16*4 + 4 (the tie once)."""
    rows = 3
    built = construct(lambda: TiedAndItem(lazy=True), "meta", torch.device("cpu")).module
    cost = count(built, torch.randn(rows, 16))
    assert (cost.macs, cost.params) == (rows * (16 * 16 + 16 * 16 + 16 * 4), 16 * 16 + 16 * 4 + 4)
    assert built.head.weight.is_meta and tuple(built.head.weight.shape) == (4, 16)
    with torch.device("meta"):
        weightless = lazy_stack()
    assert profile(weightless, torch.randn(2, 3, 16, 16)).macs == LAZY_MACS


def test_rotary_sin_and_cos_are_priced_one_flop_per_element() -> None:
    class Rotary(nn.Module):
        def forward(self, angles: torch.Tensor) -> torch.Tensor:
            return angles.sin() + angles.cos()

    report = count_cost(Rotary(), (torch.randn(3, 5),))
    assert report.uncounted_ops == {} and report.flops_by_category["elementwise"] == 3 * 15  # sin, cos, add


# --- thop's notes -------------------------------------------------------------------------------------------------


def test_thop_note_says_it_has_no_rule_for_a_module_type_and_counts_zero() -> None:
    """Hugging Face's GPT-2 builds its linears as Conv1D; thop has no rule for it and counts 0 (the note used to say
    'thop counts each bias add as one MAC'). Six of them: three named, then '(+3 more)'; the artifact names all."""
    rows, width, layers = 4, 16, 6
    model, x = Conv1DStack(width, layers), torch.randn(rows, width)
    ours = count_cost(model, (x,))
    assert ours.macs == layers * rows * width * width
    thop = thop_count(model, (x,), ours)
    assert thop.raw_macs == thop.macs == 0
    conv1d = next(reason for reason in thop.reasons if reason.startswith("Conv1D ("))
    assert conv1d == (
        f"Conv1D (layers.0, layers.1, layers.2 (+{layers - NAMES_SHOWN} more)): thop {-ours.macs:+,} MACs vs ours; "
        "thop has no rule for Conv1D and counts 0 for it"
    )
    full = thop_notes(thop, ours.macs, ours.params, every_module=True)
    assert any(", ".join(f"layers.{i}" for i in range(layers)) + ")" in line for line in full)
    assert "bias add" not in " ".join(thop_notes(thop, ours.macs, ours.params))
    assert isinstance(model.layers[0], Conv1D)


class TiedLM(nn.Module):
    """An embedding tied to the output head (50 x 8 = 400 parameters, once), a position vector on the model itself
    (8), a GroupNorm (thop has no rule: weight and bias, 2 x 8) and a block with a scale of its own (8) beside its
    Linear(8, 8) (72)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(50, 8), nn.Linear(8, 50, bias=False)
        self.head.weight = self.embed.weight
        self.position = nn.Parameter(torch.zeros(8))
        self.norm = nn.GroupNorm(2, 8)
        self.block = ScaledBlock(8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.norm((self.embed(ids) + self.position).transpose(1, 2)).transpose(1, 2)
        return self.head(self.block(hidden))


class ScaledBlock(nn.Module):
    """A module with a parameter of its own (``scale``, width) beside a submodule: thop has no rule for it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale


def param_notes(model: nn.Module, x: torch.Tensor) -> tuple[int, list[str]]:
    ours = count_cost(model, (x,))
    notes = thop_notes(thop_count(model, (x,), ours), ours.macs, ours.params)
    return ours.params, notes[next(i for i, note in enumerate(notes) if note.startswith("thop reports")) :]


def test_thop_params_differences_are_each_explained_by_formula() -> None:
    """thop adds up the parameters of the modules it has a rule for, below the model: the model's own, a rule-less
    module's own and (raw) a rule-less leaf's are never added; a tied tensor is added once per module holding it.
    Each line's figure, and thop's own totals, by formula (no line says something is unaccounted for)."""
    if thop_distribution()[0] != ORIGINAL_THOP:
        pytest.skip("figures are thop 0.1.1's")
    params, notes = param_notes(nn.Linear(16, 8), torch.randn(2, 16))
    assert params == 16 * 8 + 8 and notes == [
        "thop reports 0 params as the blog post runs it and 0 with our custom_ops; the true count (shared tensors "
        "once) is 136. Why:",
        "  - Linear (the model itself): -136 params; thop adds up its submodules' parameters, never the model's own",
    ]
    tied, position, norm, scale, block_linear = 50 * 8, 8, 2 * 8, 8, 8 * 8 + 8
    params, notes = param_notes(TiedLM(), torch.randint(0, 50, (2, 5)))
    assert params == tied + position + norm + scale + block_linear == 504
    raw = params - position - norm - scale  # the head adds the tied weight; the embedding (no rule) adds nothing
    patched = params - position - scale + tied  # with custom_ops the embedding adds the tied weight a second time
    assert notes == [
        f"thop reports {raw:,} params as the blog post runs it and {patched:,} with our custom_ops; the true count "
        f"(shared tensors once) is {params:,}. Why:",
        f"  - TiedLM (the model itself): {-position:+,} params; thop adds up its submodules' parameters, never the "
        "model's own",
        f"  - as the blog post runs it: GroupNorm (norm): {-norm:+,} params; thop has no rule for GroupNorm and never "
        "adds the parameters it holds itself",
        f"  - ScaledBlock (block): {-scale:+,} params; thop has no rule for ScaledBlock and never adds the parameters "
        "it holds itself",
        f"  - with our custom_ops: {tied:+,} params: thop adds a tensor again for each other module holding it, and a "
        "module again under each further parent (tied weights, shared modules)",
    ]


class SelfAttention(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(width, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x, x, x)[0]


def test_thop_params_of_a_module_never_called_and_through_a_keyword_call() -> None:
    """MultiheadAttention holds its packed in-projection itself (3w*w + 3w) and reads its out_proj's weights without
    calling it (w*w + w): thop, whose parameter count is a hook on the call, adds neither; with custom_ops out_proj
    has a rule, yet is still not called. Through a keyword call (our wrapper), a Linear model's own parameters are
    walked as the wrapper's child: thop has no rule for a Linear subclass (it looks the exact type up), so raw thop
    never adds its parameters; our custom_ops give it one."""
    if thop_distribution()[0] != ORIGINAL_THOP:
        pytest.skip("figures are thop 0.1.1's")
    width = 16
    in_projection, out_projection = 3 * width * width + 3 * width, width * width + width
    params, notes = param_notes(SelfAttention(width), torch.randn(2, 5, width))
    assert params == in_projection + out_projection == 1088 and notes == [
        f"thop reports 0 params as the blog post runs it and 0 with our custom_ops; the true count (shared tensors "
        f"once) is {params:,}. Why:",
        f"  - MultiheadAttention (attention): {-in_projection:+,} params; thop has no rule for MultiheadAttention and "
        "never adds the parameters it holds itself",
        f"  - as the blog post runs it: NonDynamicallyQuantizableLinear (attention.out_proj): {-out_projection:+,} "
        "params; thop has no rule for NonDynamicallyQuantizableLinear and never adds the parameters it holds itself",
        f"  - with our custom_ops: NonDynamicallyQuantizableLinear (attention.out_proj): {-out_projection:+,} params; "
        "thop adds a module's parameters when it is called, and this forward never calls these (a parent may read "
        "their weights itself, as MultiheadAttention does its out_proj's)",
    ]
    model, x = KeywordOnlyLinear(), torch.randn(2, 16)
    ours = count_cost(model, (), {"x": x})
    thop = thop_count(model, (), ours, kwargs={"x": x})
    assert (thop.raw_params, thop.params, ours.params) == (0, 16 * 8 + 8, 16 * 8 + 8) and thop.params_reasons == [
        "as the blog post runs it: KeywordOnlyLinear (the model itself): -136 params; thop has no rule for "
        "KeywordOnlyLinear and never adds the parameters it holds itself"
    ]


class KeywordOnlyLinear(nn.Linear):
    def __init__(self) -> None:
        super().__init__(16, 8)

    def forward(self, *, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)


def test_a_note_names_a_few_modules_then_how_many_more() -> None:
    assert named(["a", "b"]) == "a, b"
    assert named([f"bn{i}" for i in range(53)]) == "bn0, bn1, bn2 (+50 more)"
    assert named(["a", "b", "c", "d"], None) == "a, b, c, d"
