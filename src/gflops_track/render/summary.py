"""The run summary: (label, value) rows of a ProfileResult, as plain text for summary.txt; the console renders the
same rows with rich."""

from __future__ import annotations

from gflops_track.common.numbers import one_place, percent, three_places
from gflops_track.results.layers import milliseconds
from gflops_track.results.profile import ProfileResult
from gflops_track.results.timing import ci_text, precision_text


def _rate(value: float | None) -> str:
    """A rate (samples/s, GFLOP/s, GB/s): one decimal, three significant digits below 1 (never 0.0), or n/a."""
    return "n/a" if value is None else one_place(value)


def summary_rows(result: ProfileResult) -> list[tuple[str, str]]:
    """(label with unit, value) pairs: what a job prints and what summary.txt holds."""
    rows = [
        ("model", result.model_name),
        ("device", f"{result.device} ({result.fingerprint.hardware})"),
        ("input shape(s)", ", ".join(str(shape) for shape in result.input_shapes)),
        ("params", f"{result.params:,}"),
        ("MACs (GMACs)", f"{result.macs:,} ({three_places(result.macs / 1e9)})"),
        ("FLOPs (GFLOPs)", f"{result.flops:,} ({three_places(result.flops / 1e9)})"),
        ("FLOPs by category", ", ".join(f"{k} {v:,}" for k, v in result.flops_by_category.items() if v) or "none"),
        ("counted on", result.count_backend),
    ]
    if result.thop is not None and not result.thop.error:
        rows.append(("thop MACs raw / with custom_ops", f"{result.thop.raw_macs:,} / {result.thop.macs:,}"))
    if result.torch_count is not None:
        verdict = "agrees" if result.torch_count.agrees else "DISAGREES"
        rows.append(("torch FlopCounterMode FLOPs", f"{result.torch_count.flops:,} ({verdict} on dense ops)"))
    rows.append(("precision", _precision(result)))
    if result.timing is not None:
        timing = result.timing
        latency = timing.latency
        rows += [
            (
                "latency median (ms)",
                f"{three_places(latency.median_ms)} ({ci_text(latency)})",
            ),
            ("median precision", precision_text(timing)),
            (
                "latency mean ± std (ms)",
                f"{three_places(latency.mean_ms)} ± {three_places(latency.std_ms)} (cv {percent(latency.cv)})",
            ),
            (
                "latency min / p90 / p95 (ms)",
                " / ".join(three_places(value) for value in (latency.min_ms, latency.p90_ms, latency.p95_ms)),
            ),
            ("cold start (ms)", three_places(timing.cold_start_ms)),
            (
                "iterations warm-up / timed",
                f"{timing.warmup_iterations} ({timing.warmup_s:.1f} s, "
                f"{'settled' if timing.warmup_settled else 'NOT settled'}) / {timing.timed_iterations}",
            ),
            ("throughput (samples/s)", _rate(result.throughput_samples_per_s)),
            ("achieved GFLOP/s", _rate(result.achieved_gflop_per_s)),
            (
                f"memory baseline / growth (MiB, {timing.memory_kind})",
                f"{timing.memory_baseline_bytes / 2**20:,.1f} / {timing.memory_growth_bytes / 2**20:,.1f}",
            ),
        ]
        if timing.graph_latency is not None:
            rows.append(("CUDA-graph replay median (ms)", three_places(timing.graph_latency.median_ms)))
    if result.arithmetic_intensity is not None:
        rows.append(("arithmetic intensity (FLOP/byte)", f"{result.arithmetic_intensity:,.1f} (unfused byte model)"))
    rows += _training_rows(result)
    rows += _peak_rows(result)
    rows += _layer_rows(result)
    return rows


def _layer_rows(result: ProfileResult) -> list[tuple[str, str]]:
    """The per-layer pass: the self times' sum against the headline median, the forward's bound, and the three
    layers that take the most time with their share, bound and efficiency."""
    timing = result.layer_timing
    if timing is None:
        return []
    check = three_places(timing.self_sum_ms)
    if result.median_latency_ms:
        check += f" ({timing.gap(result.median_latency_ms):+.1%} of the latency median)"
    rows = [("layers: self times' sum (ms)", check)]
    if result.layer_roof is not None:
        bound = sum(row.bound_ms or 0.0 for row in result.layer_rows)
        below = [
            row.name
            for row in result.layer_rows
            if row.bound_ms and row.self_ms is not None and row.self_ms < row.bound_ms
        ]
        verdict = f"; BEATEN by {', '.join(below)}" if below else "; no layer beats its bound"
        rows.append(("layers: forward bound (ms)", f"{milliseconds(bound)}{verdict}"))
    for rank, row in enumerate(result.top_layers(), start=1):
        parts = [
            f"{row.name} ({row.type})",
            f"{three_places(row.self_ms or 0.0)} ms",
            f"{percent(row.time_share or 0.0)} of time",
        ]
        if row.bound_ms is not None:
            parts.append(f"bound {milliseconds(row.bound_ms)} ms ({row.bound})")
        if row.efficiency is not None:
            parts.append(f"efficiency {percent(row.efficiency)}")
        rows.append((f"layer #{rank} by time", ", ".join(parts)))
    return rows


def _training_rows(result: ProfileResult) -> list[tuple[str, str]]:
    """The training step (train mode): its cost by phase, its cross-check, its timing."""
    if result.training is None:
        return []
    count, timing = result.training.count, result.training.timing
    cost = count.cost
    rows = [
        ("train step", f"loss {cost.loss}, optimizer {cost.optimizer}, module in train(), inputs without grad"),
        ("step MACs (GMACs)", f"{cost.macs:,} ({three_places(cost.macs / 1e9)})"),
        ("step FLOPs (GFLOPs)", f"{cost.flops:,} ({three_places(cost.flops / 1e9)})"),
        ("step FLOPs by phase", ", ".join(f"{phase} {flops:,}" for phase, flops in cost.flops_by_phase.items())),
    ]
    if count.torch_count is not None:
        verdict = "agrees" if count.torch_count.agrees else "DISAGREES"
        rows.append(("step torch FlopCounterMode FLOPs", f"{count.torch_count.flops:,} ({verdict} on dense ops)"))
    if timing is not None:
        step = timing.step
        rows += [
            ("step latency median (ms)", f"{three_places(timing.step_ms)} ({ci_text(step.latency)})"),
            ("step median precision", precision_text(step)),
            (
                "forward / backward+optimizer (ms)",
                f"{three_places(timing.forward_ms)} / {three_places(timing.backward_and_optimizer_ms)}"
                " (forward timed alone)",
            ),
            ("step throughput (samples/s)", _rate(timing.samples_per_s)),
            ("step achieved GFLOP/s", _rate(result.training.achieved_gflop_per_s)),
            (f"step memory growth (MiB, {step.memory_kind})", f"{step.memory_growth_bytes / 2**20:,.1f}"),
        ]
    mfu = result.mfu
    if mfu is not None:
        rows.append(("MFU", f"{mfu[0]:.1%} of the {mfu[1]}"))
    elif timing is not None:
        rows.append(("MFU", "n/a: no datasheet peak for this device and dtype, and no measured peak (peak.measure)"))
    return rows


def _peak_rows(result: ProfileResult) -> list[tuple[str, str]]:
    """Each peak we know, then the achieved rate's share of it."""
    rows = []
    if result.spec_gflop_per_s:
        rows.append(("vendor peak (GFLOP/s)", f"{result.spec_gflop_per_s:,.1f}"))
    if result.cpu_peak is not None:
        rows.append(("estimated CPU peak (GFLOP/s)", f"{result.cpu_peak.gflop_per_s:,.1f}"))
    if result.measured_peak is not None:
        measured = result.measured_peak
        rows.append(
            ("measured roof (GFLOP/s)", f"{measured.roof_gflop_per_s:,.1f} ({measured.compute_kernel or 'gemm'})")
        )
        rows.append(("measured bandwidth (GB/s)", _rate(measured.bandwidth_gb_s)))
    for label, share in (
        ("utilization vs vendor peak", result.utilization_vs_spec),
        ("utilization vs estimated peak", result.utilization_vs_estimate),
        ("utilization vs measured peak", result.utilization_vs_measured),
    ):
        if share is not None:
            rows.append((label, percent(share)))  # 0.014%, not 0.0%
    return rows


def _precision(result: ProfileResult) -> str:
    runtime = result.runtime
    mode = f" ({runtime.dtype_mode})" if runtime.dtype in ("fp16", "bf16") else ""
    extras = [runtime.memory_format]
    if runtime.compile != "off":
        extras.append(f"torch.compile {runtime.compile}")
    return f"{runtime.dtype}{mode}, " + ", ".join(extras) + f", {result.settings.get('torch_num_threads', '?')} threads"


def summary_text(result: ProfileResult) -> str:
    """The summary as aligned plain text, followed by every note (counter disagreements included)."""
    rows = summary_rows(result)
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    if result.notes:
        lines += ["", "notes:", *result.notes]
    return "\n".join(lines) + "\n"
