"""Every metric, tag and artifact name a run carries, in one place.

The results (``results/``) write metrics under these keys, the tracking layer writes the tags and artifacts, and the
compare layer reads them back; nobody types a key as a literal elsewhere. Units are part of the names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

MIB = 2**20  # bytes per MiB: the unit of every *_mib metric
ROOT_LABEL = "(root)"  # the layers table's name for the model itself

CACHE_FOLDER = "gflops-track"  # under $XDG_CACHE_HOME (default ~/.cache): the peaks, the empty store's template


def user_cache_dir() -> Path:
    """Where the tool keeps what it measures or builds once per machine (the peaks, an empty store's schema)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / CACHE_FOLDER


# MLflow run statuses, as runs carry them, the sweep's ledger records them and the gate names a failed candidate.
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"

# Metric keys are "section/name": MLflow's chart view draws one section per prefix, sections sorted by name (keys
# without one go last, under "Model metrics"). The sections are named so they sort in reading order: cost, latency,
# memory, peak, speed, step, sweep, timing, xcheck. Old runs used flat names: LEGACY_NAMES below.

# Cost (whole batch, one forward pass).
PARAMS = "cost/params"
MACS = "cost/macs"
GMACS = "cost/gmacs"
FLOPS = "cost/flops"
GFLOPS = "cost/gflops"
UNCOUNTED_OP_CALLS = "cost/uncounted_op_calls"
FLOPS_CATEGORY_PREFIX = "cost/flops_"  # + category, e.g. cost/flops_conv_matmul
BYTES_MOVED_MIB = "cost/bytes_moved_mib"
MIN_BYTES_MIB = "cost/min_bytes_mib"
INTENSITY = "cost/arithmetic_intensity_flop_per_byte"
INTENSITY_MAX = "cost/arithmetic_intensity_max_flop_per_byte"

# Cross-checks.
THOP_MACS = "xcheck/thop_macs"
THOP_PARAMS = "xcheck/thop_params"
THOP_RAW_MACS = "xcheck/thop_raw_macs"
THOP_RAW_PARAMS = "xcheck/thop_raw_params"
TORCH_FLOPS = "xcheck/torch_flop_counter_flops"

# Speed.
LATENCY_PREFIX = "latency/"  # + one of LATENCY_STATS, e.g. latency/median_ms
GRAPH_LATENCY_PREFIX = "latency/graph_"  # CUDA-graph replay: latency/graph_median_ms, ...
LATENCY_STATS = (
    "mean_ms", "median_ms", "std_ms", "min_ms", "max_ms", "p90_ms", "p95_ms", "cv", "ci95_low_ms", "ci95_high_ms",
    "precision", "p10_ms", "p10_ci95_low_ms", "p10_ci95_high_ms",
)  # fmt: skip
LATENCY_MEDIAN_MS = "latency/median_ms"
LATENCY_CI_LOW_MS = "latency/ci95_low_ms"
LATENCY_CI_HIGH_MS = "latency/ci95_high_ms"
COLD_START_MS = "latency/cold_start_ms"
THROUGHPUT = "speed/throughput_samples_per_s"
ACHIEVED = "speed/achieved_gflop_per_s"
GRAPH_ACHIEVED = "speed/graph_achieved_gflop_per_s"
ENERGY_PER_FORWARD_J = "speed/energy_per_forward_j"
GFLOP_PER_JOULE = "speed/gflop_per_joule"
MEMORY_BASELINE_MIB = "memory/baseline_mib"  # CUDA: allocated before timing; CPU: resident set size before timing
MEMORY_GROWTH_MIB = "memory/growth_mib"  # peak over that baseline while timing

# How the timing went (diagnostics).
PRECISION_TARGET = "timing/precision_target"
PRECISION_TARGET_MET = "timing/precision_target_met"
TIMING_TOTAL_S = "timing/total_s"
TIME_BOUND_HIT = "timing/time_bound_hit"
TIMING_SUSPECT = "timing/suspect"
L2_FLUSHED = "timing/l2_flushed"
L2_FLUSH_MIB = "timing/l2_flush_mib"
WARMUP_ITERATIONS = "timing/warmup_iterations"
WARMUP_S = "timing/warmup_s"
WARMUP_SETTLED = "timing/warmup_settled"
TIMED_ITERATIONS = "timing/timed_iterations"
CONDITION_PREFIX = "timing/cond_"  # + condition, e.g. timing/cond_load_avg_1m_before

# Peaks and utilization.
SPEC_PEAK = "peak/spec_gflop_per_s"
SPEC_BANDWIDTH = "peak/spec_bandwidth_gb_per_s"
CPU_ESTIMATED_PEAK = "peak/cpu_estimated_gflop_per_s"
MEASURED_PEAK = "peak/measured_gflop_per_s"  # the measured roof: best of the GEMM and convolution probes
MEASURED_GEMM = "peak/measured_gemm_gflop_per_s"
MEASURED_BANDWIDTH = "peak/measured_bandwidth_gb_per_s"
UTILIZATION_SPEC = "speed/utilization_vs_spec_peak"
UTILIZATION_ESTIMATE = "speed/utilization_vs_estimated_peak"
UTILIZATION_MEASURED = "speed/utilization_vs_measured_peak"

# Training step (mode=train): one whole step (forward, loss, backward, optimizer step, zero_grad), whole batch.
STEP_MACS = "step/macs"
STEP_FLOPS = "step/flops"
STEP_GFLOPS = "step/gflops"
STEP_FLOPS_PHASE_PREFIX = "step/flops_"  # + forward, backward, optimizer
STEP_TORCH_FLOPS = "xcheck/step_torch_flop_counter_flops"  # FlopCounterMode over forward + backward (dense ops)
STEP_LATENCY_PREFIX = "step/latency_"  # + LATENCY_STATS: the whole step
STEP_LATENCY_MEDIAN_MS = "step/latency_median_ms"
STEP_FORWARD_MS = "step/forward_ms"  # median forward + loss alone (recording autograd)
STEP_BACKWARD_OPTIMIZER_MS = "step/backward_optimizer_ms"  # median step - median forward
STEP_THROUGHPUT = "step/samples_per_s"
STEP_ACHIEVED = "step/achieved_gflop_per_s"
STEP_MEMORY_GROWTH_MIB = "step/memory_growth_mib"  # the step's peak over the baseline: activations and gradients
STEP_TIMED_ITERATIONS = "step/timed_iterations"
STEP_PRECISION_TARGET_MET = "step/precision_target_met"
MFU = "step/mfu"  # model FLOPs utilization: step FLOPs / step time / the peak named by the mfu_peak tag
MFU_SPEC = "step/mfu_vs_spec_peak"  # against the datasheet peak (GPU)
MFU_MEASURED = "step/mfu_vs_measured_peak"  # against the measured roof (best of the GEMM and convolution probes)

# Sweep parent only.
JOBS = "sweep/jobs"
FAILED_JOBS = "sweep/failed_jobs"

# The flat names runs were logged under before the metrics had sections: what compare and the gate read from an old
# run (a stored baseline keeps working). Only the metrics they read are listed.
LEGACY_NAMES: dict[str, str] = {
    PARAMS: "params", MACS: "macs", GMACS: "gmacs", FLOPS: "flops", GFLOPS: "gflops",
    INTENSITY: "arithmetic_intensity_flop_per_byte", LATENCY_MEDIAN_MS: "latency_median_ms",
    LATENCY_CI_LOW_MS: "latency_ci95_low_ms", LATENCY_CI_HIGH_MS: "latency_ci95_high_ms",
    THROUGHPUT: "throughput_samples_per_s", ACHIEVED: "achieved_gflop_per_s", TIMED_ITERATIONS: "timed_iterations",
    SPEC_PEAK: "spec_peak_gflop_per_s", SPEC_BANDWIDTH: "spec_bandwidth_gb_per_s",
    MEASURED_PEAK: "measured_peak_gflop_per_s", MEASURED_BANDWIDTH: "measured_bandwidth_gb_per_s",
    UTILIZATION_SPEC: "utilization_vs_spec_peak", UTILIZATION_MEASURED: "utilization_vs_measured_peak",
    JOBS: "jobs", FAILED_JOBS: "failed_jobs",
}  # fmt: skip


def metric_value(metrics: Mapping[str, float], name: str) -> float | None:
    """A run's metric ``name``, or the same figure under its old flat name (runs logged before the sections)."""
    if name in metrics:
        return metrics[name]
    legacy = LEGACY_NAMES.get(name)
    return metrics.get(legacy) if legacy is not None else None


# Tags.
HARDWARE_TAG = "hardware"
ERROR_TAG = "error"
PARENT_TAG = "mlflow.parentRunId"
MODEL_TAG = "model"
MODEL_TARGET_TAG = "model_target"
DEVICE_TAG = "device"
COUNT_BACKEND_TAG = "count_backend"
TORCH_AGREES_TAG = "torch_flop_counter_agrees"
STEP_TORCH_AGREES_TAG = "step_torch_flop_counter_agrees"  # the training step's cross-check (forward + backward)
THOP_AGREES_TAG = "thop_agrees"
TIMING_SUSPECT_TAG = "timing_suspect"
THROTTLE_TAG = "gpu_throttle_reasons"
SWEEP_OVERRIDES_TAG = "sweep_overrides"
OVERRIDES_TAG = "overrides"  # the job's own Hydra overrides, space-separated: what the regression gate pairs runs by
VARIANT_TAG = "variant"  # the overrides that differ inside the sweep, e.g. "norm_fn=group": what a person groups by
DTYPE_TAG = "dtype"
BATCH_SIZE_TAG = "batch_size"
MODE_TAG = "mode"  # inference or train
TRAIN_LOSS_TAG = "train_loss"
TRAIN_OPTIMIZER_TAG = "train_optimizer"
MFU_PEAK_TAG = "mfu_peak"  # which peak the mfu metric divides by, in words
SOURCE_NAME_TAG = "mlflow.source.name"  # MLflow's own source tags (the UI's "Source" column)
SOURCE_COMMIT_TAG = "mlflow.source.git.commit"
USER_TAG = "mlflow.user"

# Artifacts.
CONFIG_ARTIFACT = "config.yaml"
OVERRIDES_ARTIFACT = "overrides.yaml"
LAYERS_CSV_ARTIFACT = "layers.csv"
LAYERS_JSON_ARTIFACT = "layers.json"
STEP_LAYERS_CSV_ARTIFACT = "step_layers.csv"  # per-layer forward and backward columns of the training step
STEP_LAYERS_JSON_ARTIFACT = "step_layers.json"  # the same, timed, as the UI's table (after the step's layer pass)
SUMMARY_ARTIFACT = "summary.txt"
THOP_ARTIFACT = "thop.txt"  # why thop's figure differs from ours, each reason naming every module (notes name a few)
SAMPLES_ARTIFACT = "latency_samples.json"
ROOFLINE_ARTIFACT = "roofline.png"
REPORT_ARTIFACT = "report.html"
REPORT_CHARTS_FOLDER = "report"
COMPARISON_ARTIFACT = "comparison.csv"

# Per-layer time and roofline bounds (issue 25): the layer pass runs after the headline timing.
LAYER_TRAFFIC_ARTIFACT = "layer_traffic.json"  # layer -> per-op [distinct input bytes, output bytes]
LAYER_SHARES_ARTIFACT = "layers_time_vs_flops.png"  # per layer: time share beside FLOP share
LAYER_ROOFLINE_ARTIFACT = "layers_roofline.png"  # per layer: intensity and achieved GFLOP/s under the bound's roof
LAYERS_PREFIX = "layers/"  # the forward's layer pass; its truth checks: results/layers.LayerTiming.check_metrics
STEP_LAYERS_PREFIX = "step_layers/"  # the training step's layer pass
LAYERS_FORWARD_MS = "layers/forward_ms"  # median forward under the layer pass's hooks
LAYERS_SELF_SUM_MS = "layers/self_sum_ms"  # sum of every module's median self time
LAYERS_SELF_GAP = "layers/self_sum_gap"  # (self sum - latency/median_ms) / latency/median_ms, signed
LAYERS_SELF_GAP_SIDE = "layers/self_sum_gap_side_by_side"  # the same gap against unhooked forwards timed beside
LAYERS_FASTEST_GAP = "layers/self_min_sum_gap"  # sum of the modules' quickest self times vs the quickest forward
LAYERS_PROFILER_GAP = "layers/profiler_share_gap"  # largest |our share - torch.profiler's share| of a layer, 0..1
LAYERS_BUSY = "layers/busy"  # 1: the unhooked forwards' median was over twice their minimum (a loaded machine)
LAYERS_DISPATCH_SHARE = "layers/dispatch_share"  # CUDA: CPU time to issue an unhooked forward / its GPU time
LAYERS_ITERATIONS = "layers/iterations"
LAYERS_TOTAL_S = "layers/total_s"  # the layer pass's wall time, seconds (as timing/total_s is the timing's)
LAYERS_BOUND_MS = "layers/bound_ms"  # the forward's roofline bound: sum of the layers' bounds
LAYERS_BOUND_EFFICIENCY = "layers/bound_efficiency"  # bound_ms / latency/median_ms
LAYERS_BELOW_BOUND = "layers/layers_below_bound"  # layers measured faster than their bound (must be 0)
LAYERS_ROOF_GFLOP_PER_S = "layers/roof_gflop_per_s"  # the compute rate the bounds use
LAYERS_ROOF_BANDWIDTH = "layers/roof_bandwidth_gb_per_s"  # the bandwidth the memory bounds use
LAYERS_ON_CHIP_MIB = "layers/on_chip_mib"  # what the memory bound takes as kept on chip
STEP_LAYERS_STEP_MS = "step_layers/step_ms"  # median training step under the step's layer pass's hooks
STEP_LAYERS_SELF_SUM_MS = "step_layers/self_sum_ms"  # sum of every row's median self time (forward + backward + opt)
STEP_LAYERS_FORWARD_SELF_SUM_MS = "step_layers/forward_self_sum_ms"  # the forward's part (with the loss)
STEP_LAYERS_BACKWARD_SELF_SUM_MS = "step_layers/backward_self_sum_ms"  # the backward's part
STEP_LAYERS_OPTIMIZER_MS = "step_layers/optimizer_ms"  # optimizer.step() + zero_grad, medians
STEP_LAYERS_SELF_GAP = "step_layers/self_sum_gap"  # (self sum - step/latency_median_ms) / step/latency_median_ms
STEP_LAYERS_SELF_GAP_SIDE = "step_layers/self_sum_gap_side_by_side"  # against unhooked steps timed beside
STEP_LAYERS_FASTEST_GAP = "step_layers/self_min_sum_gap"  # rows' quickest self times vs the quickest step
STEP_LAYERS_BUSY = "step_layers/busy"  # 1: the unhooked steps' median was over twice their minimum
STEP_LAYERS_DISPATCH_SHARE = "step_layers/dispatch_share"  # CUDA: CPU time to issue an unhooked step / its GPU time
STEP_LAYERS_ITERATIONS = "step_layers/iterations"
STEP_LAYERS_TOTAL_S = "step_layers/total_s"  # the step's layer pass's wall time, seconds
STEP_LAYER_TIMING_TAG = "step_layer_timing"  # how the step's per-layer times were taken, in words
LAYER_TIMING_TAG = "layer_timing"  # how per-layer times were taken, in words
LAYER_BOUND_TAG = "layer_bound_rule"  # the roof and byte rule the bounds use, in words
WHATIF_PREFIX = "whatif/"  # + hardware slug + "/" + metric, e.g. whatif/h100_sxm/forward_bound_ms
