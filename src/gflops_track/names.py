"""Every metric, tag and artifact name a run carries, in one place.

The result (``result.py``) writes metrics under these keys, the tracking layer writes the tags and artifacts, and the
compare layer reads them back; nobody types a key as a literal elsewhere. Units are part of the names.
"""

from __future__ import annotations

# Cost (whole batch, one forward pass).
PARAMS = "params"
MACS = "macs"
GMACS = "gmacs"
FLOPS = "flops"
GFLOPS = "gflops"
UNCOUNTED_OP_CALLS = "uncounted_op_calls"
FLOPS_CATEGORY_PREFIX = "flops_"  # + category, e.g. flops_conv_matmul
BYTES_MOVED_MIB = "bytes_moved_mib"
MIN_BYTES_MIB = "min_bytes_mib"
INTENSITY = "arithmetic_intensity_flop_per_byte"
INTENSITY_MAX = "arithmetic_intensity_max_flop_per_byte"

# Cross-checks.
THOP_MACS = "thop_macs"
THOP_PARAMS = "thop_params"
THOP_RAW_MACS = "thop_raw_macs"
THOP_RAW_PARAMS = "thop_raw_params"
TORCH_FLOPS = "torch_flop_counter_flops"

# Speed.
LATENCY_PREFIX = "latency"  # + _median_ms, _ci95_low_ms, ... (see LATENCY_STATS)
GRAPH_LATENCY_PREFIX = "graph_latency"
LATENCY_STATS = (
    "mean_ms", "median_ms", "std_ms", "min_ms", "max_ms", "p90_ms", "p95_ms", "cv", "ci95_low_ms", "ci95_high_ms",
    "precision",
)  # fmt: skip
LATENCY_MEDIAN_MS = "latency_median_ms"
LATENCY_CI_LOW_MS = "latency_ci95_low_ms"
LATENCY_CI_HIGH_MS = "latency_ci95_high_ms"
COLD_START_MS = "latency_cold_start_ms"
PRECISION_TARGET = "precision_target"
PRECISION_TARGET_MET = "precision_target_met"
THROUGHPUT = "throughput_samples_per_s"
ACHIEVED = "achieved_gflop_per_s"
GRAPH_ACHIEVED = "graph_achieved_gflop_per_s"
MEMORY_BASELINE_MIB = "memory_baseline_mib"  # CUDA: allocated before timing; CPU: resident set size before timing
MEMORY_GROWTH_MIB = "memory_growth_mib"  # peak over that baseline while timing
TIMING_TOTAL_S = "timing_total_s"
TIME_BOUND_HIT = "time_bound_hit"
TIMING_SUSPECT = "timing_suspect"
L2_FLUSH_MIB = "l2_flush_mib"
ENERGY_PER_FORWARD_J = "energy_per_forward_j"
GFLOP_PER_JOULE = "gflop_per_joule"
WARMUP_ITERATIONS = "warmup_iterations"
WARMUP_S = "warmup_s"
WARMUP_SETTLED = "warmup_settled"
TIMED_ITERATIONS = "timed_iterations"
L2_FLUSHED = "l2_flushed"
CONDITION_PREFIX = "cond_"  # + condition, e.g. cond_load_avg_1m_before

# Peaks and utilization.
SPEC_PEAK = "spec_peak_gflop_per_s"
SPEC_BANDWIDTH = "spec_bandwidth_gb_per_s"
UTILIZATION_SPEC = "utilization_vs_spec_peak"
CPU_ESTIMATED_PEAK = "cpu_estimated_peak_gflop_per_s"
UTILIZATION_ESTIMATE = "utilization_vs_estimated_peak"
MEASURED_PEAK = "measured_peak_gflop_per_s"  # the measured roof: best of the GEMM and convolution probes
MEASURED_GEMM = "measured_gemm_gflop_per_s"
MEASURED_BANDWIDTH = "measured_bandwidth_gb_per_s"
UTILIZATION_MEASURED = "utilization_vs_measured_peak"

# Training step (mode=train): one whole step (zero_grad, forward, loss, backward, optimizer step), whole batch.
STEP_MACS = "step_macs"
STEP_FLOPS = "step_flops"
STEP_GFLOPS = "step_gflops"
STEP_FLOPS_PHASE_PREFIX = "step_flops_"  # + forward, backward, optimizer
STEP_TORCH_FLOPS = "step_torch_flop_counter_flops"  # FlopCounterMode over forward + backward (dense ops)
STEP_LATENCY_PREFIX = "step_latency"  # + LATENCY_STATS: the whole step
STEP_LATENCY_MEDIAN_MS = "step_latency_median_ms"
STEP_FORWARD_MS = "step_forward_ms"  # median forward + loss alone (recording autograd)
STEP_BACKWARD_OPTIMIZER_MS = "step_backward_optimizer_ms"  # median step - median forward
STEP_THROUGHPUT = "step_samples_per_s"
STEP_ACHIEVED = "step_achieved_gflop_per_s"
STEP_MEMORY_GROWTH_MIB = "step_memory_growth_mib"  # the step's peak over the baseline: activations and gradients
STEP_TIMED_ITERATIONS = "step_timed_iterations"
STEP_PRECISION_TARGET_MET = "step_precision_target_met"
MFU = "mfu"  # model FLOPs utilization: step FLOPs / step time / the peak named by the mfu_peak tag
MFU_SPEC = "mfu_vs_spec_peak"  # against the datasheet peak (GPU)
MFU_MEASURED = "mfu_vs_measured_peak"  # against the measured roof (best of the GEMM and convolution probes)

# Sweep parent.
JOBS = "jobs"
FAILED_JOBS = "failed_jobs"

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
SUMMARY_ARTIFACT = "summary.txt"
SAMPLES_ARTIFACT = "latency_samples.json"
ROOFLINE_ARTIFACT = "roofline.png"
REPORT_ARTIFACT = "report.html"
REPORT_CHARTS_FOLDER = "report"
COMPARISON_ARTIFACT = "comparison.csv"
