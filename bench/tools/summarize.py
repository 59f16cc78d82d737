#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Summarises a moe_bench JSON run (--benchmark_out, with repetitions) as markdown: the median of
every benchmark's counters, and the performance targets checked against counters measured in
the same run. Usage: bench/tools/summarize.py RUN.json > RUN.md"""
import json
import statistics
import sys
from collections import defaultdict


def medians(run):
    reps = defaultdict(list)
    aggregated = {}  # runs written with --benchmark_report_aggregates_only: their median row
    for b in run["benchmarks"]:
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                aggregated[b["run_name"]] = b
            continue
        reps[b["run_name"]].append(b)
    out = {}
    for name, b in aggregated.items():
        if name not in reps:
            out[name] = {k: v for k, v in b.items() if isinstance(v, (int, float))}
            out[name]["time_unit"] = b.get("time_unit", "ns")
            out[name]["n"] = b.get("repetitions", 1)
    for name, rs in reps.items():
        keys = [k for k, v in rs[0].items() if isinstance(v, (int, float)) and k not in
                ("family_index", "per_family_instance_index", "repetitions", "repetition_index",
                 "threads", "iterations")]
        out[name] = {k: statistics.median(r[k] for r in rs if k in r) for k in keys}
        out[name]["time_unit"] = rs[0].get("time_unit", "ns")
        out[name]["n"] = len(rs)
    return out


def ms(r, key="real_time"):
    """A benchmark time in milliseconds."""
    return r[key] / {"ns": 1e6, "us": 1e3, "ms": 1.0, "s": 1e-3}[r["time_unit"]]


def main(path):
    run = json.load(open(path))
    m = medians(run)
    ctx = run["context"]
    print(f"# moe benchmark run {ctx.get('date', '')}\n")
    print(f"Machine: {ctx.get('num_cpus')} CPUs at {ctx.get('mhz_per_cpu')} MHz, "
          f"L3 {sum(c['size'] for c in ctx.get('caches', []) if c['level'] == 3) // 1024} KiB; "
          f"moe {ctx.get('moe.version')}, SIMD {ctx.get('moe.simd_arch')}, gating ISA "
          f"{ctx.get('moe.gating_isa')}, threads {ctx.get('moe.threads')}. Medians of "
          f"{max(v['n'] for v in m.values())} repetitions.\n")
    g = lambda name, key: m.get(name, {}).get(key)

    def row(cells):
        if pending:  # a section's title and header print with its first row: empty ones don't
            title, header = pending.pop()
            print(title)
            print("| " + " | ".join(header) + " |")
            print("| " + " | ".join(["---"] * len(header)) + " |")
        print("| " + " | ".join(cells) + " |")

    pending = []

    def section(title, header):
        pending[:] = [(title, header)]

    section("## Probes (same run)\n", ["probe", "value"])
    for name, key, unit in [("probe_fma/iterations:1/manual_time", "gflops", "GFLOP/s fp32 FMA"),
                            ("probe_bf16_dot/iterations:1/manual_time", "gflops", "GFLOP/s vdpbf16ps"),
                            ("probe_amx/iterations:1/manual_time", "gflops", "GFLOP/s AMX bf16"),
                            ("probe_read_bandwidth/iterations:1/manual_time", "gbytes_per_second", "GB/s read"),
                            ("dense_gemm/T:512/iterations:1/manual_time", "gflops", "GFLOP/s Eigen dense FFN, T = 512")]:
        if g(name, key) is not None:
            row([name.split("/")[0], f"{g(name, key):.1f} {unit}"])

    section("\n## Layer forward, OLMoE shape (d 2048, f 1024, E 64, k 8), 2 threads\n",
            ["weights", "T", "time (ms)", "tokens/s", "GFLOP/s", "frac peak", "GB/s", "frac bandwidth", "vs dense"])
    for w, prefix in [("fp32", "layer_forward"), ("bf16", "layer_forward_bf16")]:
        for T in (1, 8, 32, 512):
            name = f"{prefix}/T:{T}/real_time"
            if name not in m:
                continue
            r = m[name]
            row([w, str(T), f"{ms(r):.2f}",
                 f"{r['tokens_per_second']:.0f}", f"{r['gflops']:.1f}", f"{r['frac_peak_flops']:.3f}",
                 f"{r['gbytes_per_second']:.1f}", f"{r['frac_bandwidth']:.3f}", f"{r['ratio_to_dense']:.2f}"])

    section("\n## Baselines (same run)\n", ["benchmark", "T", "tokens/s"])
    for fam in ("layer_forward", "layer_eigen_gemm", "layer_naive"):
        for T in (1, 32, 512):
            for name in (f"{fam}/T:{T}/real_time", f"{fam}/T:{T}/min_time:0.500/real_time"):
                if name in m:
                    row([fam, str(T), f"{m[name]['tokens_per_second']:.0f}"])

    section("\n## Targets\n", ["target", "measured", "met"])

    def check(label, value, ok):
        if value is not None:
            row([label, value, "yes" if ok else "**no**"])

    f512 = m.get("layer_forward/T:512/real_time", {})
    n512 = m.get("layer_naive/T:512/min_time:0.500/real_time", {})
    if f512 and n512:
        ratio = f512["tokens_per_second"] / n512["tokens_per_second"]
        check("T = 512: >= 10x the naive reference", f"{ratio:.1f}x", ratio >= 10)
    if f512:
        check("T = 512 fp32: >= 1500 tokens/s (issue 2: >= 1100)", f"{f512['tokens_per_second']:.0f}",
              f512["tokens_per_second"] >= 1500)
        check("T = 512 fp32: >= 0.9x the dense GEMM of the same FLOPs", f"{f512['ratio_to_dense']:.2f}",
              f512["ratio_to_dense"] >= 0.9)
    b512 = m.get("layer_forward_bf16/T:512/real_time", {})
    if b512:
        check("T = 512 bf16: >= 2400 tokens/s", f"{b512['tokens_per_second']:.0f}", b512["tokens_per_second"] >= 2400)
    for w, prefix in [("fp32", "layer_forward"), ("bf16", "layer_forward_bf16")]:
        for T, bound in ((1, 0.9), (8, 0.85), (32, 0.85)):
            r = m.get(f"{prefix}/T:{T}/real_time")
            if r:
                check(f"T = {T} {w}: >= {bound} of the read-bandwidth probe", f"{r['frac_bandwidth']:.3f}",
                      r["frac_bandwidth"] >= bound)
    t1, t2 = m.get("layer_threads/threads:1/real_time"), m.get("layer_threads/threads:2/real_time")
    if t1 and t2:
        s = t2["tokens_per_second"] / t1["tokens_per_second"]
        check("1 -> 2 threads at T = 512: >= 1.8x", f"{s:.2f}x", s >= 1.8)
    for E in (64, 256):
        a, b = m.get(f"gating/E:{E}/k:8"), m.get(f"gating_baseline/E:{E}/k:8")
        if a and b:
            s = a["rows_per_second"] / b["rows_per_second"]
            check(f"gating top-k + softmax E = {E}, k = 8: >= 4x partial_sort + exp", f"{s:.1f}x", s >= 4)
    for T, bound in ((1, 0.01), (512, 0.005)):
        r = m.get(f"routing_share/T:{T}/real_time")
        if r:
            check(f"routing share of the forward at T = {T}: <= {bound * 100:g} %", f"{r['route_share'] * 100:.2f} %",
                  r["route_share"] <= bound)
    for causal in (1, 0):
        r = m.get(f"routing_similarity_ab/causal:{causal}/min_time:2.000/manual_time")
        if r:
            check(f"similarity-aware ({'causal' if causal else 'non-causal'}) adds <= 5 % to the forward (A/B)",
                  f"{r['added_fraction'] * 100:+.1f} %", r["added_fraction"] <= 0.05)

    # Plain top-k at a smaller k, A/B against top-8: what the layer costs at that many experts
    # per token, the reference for null experts at the same k_eff (linear between measured k).
    topk_points = [(1.0, 1.0)]
    for kk in (2, 3, 4, 6):
        r = m.get(f"routing_topk_k_ab/k:{kk}/min_time:2.000/manual_time")
        if r:
            topk_points.append((r["k_eff_ratio"], r["time_over_topk"]))
    topk_points.sort()

    def topk_at(ratio):
        for (x0, y0), (x1, y1) in zip(topk_points, topk_points[1:]):
            if x0 <= ratio <= x1:
                return y0 + (y1 - y0) * (ratio - x0) / (x1 - x0)
        return None

    section("\n## Null experts (m = 16, T = 512): time against k_eff, A/B against plain top-8\n\n"
            "top-k at k = k_eff: plain top-k's time at that k (interpolated between measured k), over top-8's.\n"
            "bound: the machine's lower bound for the same plan (selected experts' weights read once at the\n"
            "read bandwidth, or its FLOPs at the FMA probe's rate, whichever is longer), over top-8's time.\n",
            ["null router scale", "k_eff", "k_eff / k", "time (ms)", "time / top-k", "top-k at k = k_eff",
             "bound / top-k", "bound / time"])
    for scale in (100, 150, 200, 300):
        r = m.get(f"routing_null_experts_ab/null_scale_pct:{scale}/min_time:2.000/manual_time")
        if r:
            ref = topk_at(r["k_eff_ratio"]) if len(topk_points) > 1 else None
            row([f"{scale / 100:g}", f"{r['k_eff']:.2f}", f"{r['k_eff_ratio']:.2f}", f"{ms(r):.1f}",
                 f"{r['time_over_topk']:.2f}", f"{ref:.2f}" if ref is not None else "",
                 f"{r['bound_over_topk']:.2f}" if "bound_over_topk" in r else "",
                 f"{r['bound_over_topk'] / r['time_over_topk']:.2f}" if "bound_over_topk" in r else ""])
    if len(topk_points) > 1:
        section("\nPlain top-k, A/B against top-8 (same run):\n",
                ["k", "k / 8", "time (ms)", "time / top-8", "bound / top-8", "bound / time"])
        for kk in (2, 3, 4, 6, 8):
            r = m.get(f"routing_topk_k_ab/k:{kk}/min_time:2.000/manual_time")
            if r:
                row([str(kk), f"{r['k_eff_ratio']:.3f}", f"{ms(r):.1f}", f"{r['time_over_topk']:.2f}",
                     f"{r['bound_over_topk']:.2f}", f"{r['bound_over_topk'] / r['time_over_topk']:.2f}"])

    section("\n## Gating (rows/s, same run)\n", ["E", "k", "SIMD", "partial_sort + exp", "ratio"])
    for E in (8, 64, 128, 256):
        for k in (2, 8):
            a, b = m.get(f"gating/E:{E}/k:{k}"), m.get(f"gating_baseline/E:{E}/k:{k}")
            if a and b:
                row([str(E), str(k), f"{a['rows_per_second'] / 1e6:.2f}M", f"{b['rows_per_second'] / 1e6:.2f}M",
                     f"{a['rows_per_second'] / b['rows_per_second']:.1f}x"])


if __name__ == "__main__":
    main(sys.argv[1])
