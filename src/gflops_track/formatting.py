"""Plain-text renderings of a ProfileResult (the run's summary.txt); the console renders the same rows with rich."""

from __future__ import annotations

from gflops_track.result import ProfileResult


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def summary_rows(result: ProfileResult) -> list[tuple[str, str]]:
    """(label with unit, value) pairs: what a job prints and what summary.txt holds."""
    rows = [
        ("model", result.model_name),
        ("device", f"{result.device} ({result.fingerprint.hardware})"),
        ("input shape(s)", ", ".join(str(shape) for shape in result.input_shapes)),
        ("params", f"{result.params:,}"),
        ("MACs (GMACs)", f"{result.macs:,} ({result.macs / 1e9:,.3f})"),
        ("FLOPs (GFLOPs)", f"{result.flops:,} ({result.flops / 1e9:,.3f})"),
        ("FLOPs by category", ", ".join(f"{k} {v:,}" for k, v in result.flops_by_category.items() if v) or "none"),
        ("counted on", result.count_backend),
    ]
    if result.thop is not None and not result.thop.error:
        rows.append(("thop MACs raw / with custom_ops", f"{result.thop.raw_macs:,} / {result.thop.macs:,}"))
    if result.torch_count is not None:
        verdict = "agrees" if result.torch_count.agrees else "DISAGREES"
        rows.append(("torch FlopCounterMode FLOPs", f"{result.torch_count.flops:,} ({verdict} on dense ops)"))
    if result.timing is not None:
        latency = result.timing.latency
        rows += [
            ("latency median (ms)", _number(latency.median_ms)),
            ("latency mean ± std (ms)", f"{latency.mean_ms:,.3f} ± {latency.std_ms:,.3f} (cv {latency.cv:.1%})"),
            ("latency min / p90 / p95 (ms)", f"{latency.min_ms:,.3f} / {latency.p90_ms:,.3f} / {latency.p95_ms:,.3f}"),
            ("iterations warm-up / timed", f"{result.timing.warmup_iterations} / {result.timing.timed_iterations}"),
            ("throughput (samples/s)", _number(result.throughput_samples_per_s, 1)),
            ("achieved GFLOP/s", _number(result.achieved_gflop_per_s, 1)),
            (f"peak memory (MiB, {result.timing.memory_kind})", _number(result.timing.peak_memory_bytes / 2**20, 1)),
        ]
    return rows


def summary_text(result: ProfileResult) -> str:
    """The summary as aligned plain text, followed by every note (counter disagreements included)."""
    rows = summary_rows(result)
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    if result.notes:
        lines += ["", "notes:", *result.notes]
    return "\n".join(lines) + "\n"
