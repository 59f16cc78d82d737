// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
//
// moe-route: compares routing policies on a checkpoint's MoE layers (or a synthetic model from a
// preset) and prints a table per policy; writes JSON (--json) and an HTML report (--report).
// Exit status: 0 ok, 2 usage error, 1 runtime error (the moe::error message on stderr).

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include <moe/io/routes.hpp>

#include "analysis.hpp"
#include "policies.hpp"
#include "report.hpp"

namespace {

/// Layers done / total, rate and ETA on stderr, once the work has run for a second; nothing with
/// --quiet or when stderr is not a terminal.
class progress {
 public:
  explicit progress(bool enabled) : m_enabled(enabled && isatty(STDERR_FILENO) != 0) {}
  void operator()(std::size_t done, std::size_t total) {
    if (!m_enabled) return;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - m_start).count();
    if (s < 1.0 && done < total) return;
    if (s < 1.0 && !m_shown) return;
    const double rate = static_cast<double>(done) / s;
    const double eta = rate > 0 ? static_cast<double>(total - done) / rate : 0.0;
    std::fprintf(stderr, "\rmoe-route: layers %zu/%zu, %.2f layers/s, ETA %.0f s   ", done, total, rate, eta);
    if (done == total) std::fprintf(stderr, "\n");
    m_shown = true;
  }

 private:
  bool m_enabled;
  bool m_shown = false;
  std::chrono::steady_clock::time_point m_start = std::chrono::steady_clock::now();
};

const char* description =
    "moe-route: compare routing policies on the MoE layers of a checkpoint or of a synthetic model.\n"
    "\n"
    "The model's own layer (its router, experts and shared experts) runs once per selected layer on\n"
    "the layer's input x, and x + MoE(x) is the next selected layer's input (only the MoE sublayers\n"
    "run: no attention, no norms). Every policy is evaluated on that same x (teacher-forced), so\n"
    "policies are compared on identical inputs. Per policy and layer it reports: active experts per\n"
    "token (mean) and their histogram, GFLOP (router + experts + shared experts), load balance\n"
    "(max/mean load, load entropy), dropped assignments and skipped tokens, the Jaccard overlap of\n"
    "each token's expert set with the model's own, the relative error of the MoE output against the\n"
    "model's, and tokens/s (routing + experts, on the CPU device).\n"
    "\n"
    "Examples:\n"
    "  moe-route --checkpoint olmoe/ --hidden h.safetensors --layers 0-3 \\\n"
    "            --policy top_k:k=4 --policy null_experts:m=16,k=10 --json out.json --report out.html\n"
    "  moe-route --preset olmoe --dim 2048 --ffn 1024 --num-layers 16 --tokens 512 --bf16 \\\n"
    "            --policy top_k:k=4 --policy capacity:factor=1.25 --policy top_p:p=0.7\n"
    "\n"
    "Exit status: 0 ok, 2 usage error, 1 runtime error (bad file, bad checkpoint: the message says which).\n";

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{description, "moe-route"};
  app.get_formatter()->column_width(34);
  moe_route::model_options mo;
  moe_route::hidden_source hs;
  std::vector<std::string> policies;
  std::string layers = "all", json_path, report_path;
  bool quiet = false, route_only = false, list_policies = false;
  long long heat_tokens = 64;
  long long seed = 1;

  auto* source = app.add_option_group("model", "where the model comes from (one of)");
  auto* ck = source->add_option("--checkpoint", mo.checkpoint,
                                "safetensors file or directory (with config.json), sharded index (.json) or .gguf file");
  auto* pr = source->add_option("--preset", mo.preset,
                                "synthetic model from a preset: " + moe_route::detail::valid_list(moe_route::preset_names()) +
                                    " (seeded router weights per layer, one seeded expert bank shared by all layers)");
  ck->excludes(pr);
  pr->excludes(ck);
  app.add_option("--dim", mo.dim, "synthetic: hidden size d")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--ffn", mo.ffn, "synthetic: expert width f")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--num-layers", mo.layers, "synthetic: number of MoE layers")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--experts", mo.experts, "synthetic: number of experts (switch_transformer only; default 8)")->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "seed of the synthetic weights, random hidden states and seeded policy parameters")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--bf16", mo.bf16, "experts in bf16 (activations rounded to bf16, fp32 accumulation) instead of fp32");
  app.add_option("--threads", mo.threads, "threads of the CPU device (0: OpenMP's default)")->capture_default_str()->check(CLI::NonNegativeNumber);

  auto* hf = app.add_option("--hidden", hs.file,
                            "safetensors file of hidden states [T x d] (F32 or BF16; leading dims are flattened into T)")
                 ->check(CLI::ExistingFile);
  app.add_option("--hidden-name", hs.name,
                 "tensor name in --hidden: the first selected layer's input, propagated through the MoE layers; with "
                 "{layer} in the name, each layer reads its own input (e.g. captured from the full model)")
      ->capture_default_str();
  auto* tk = app.add_option("--tokens", hs.tokens, "seeded random hidden states, uniform in [-1, 1): this many rows")
                 ->capture_default_str()
                 ->check(CLI::PositiveNumber);
  hf->excludes(tk);
  tk->excludes(hf);
  app.add_option("--layers", layers, "MoE layers to run: all, N, A-B, or a comma list of those")->capture_default_str();
  app.add_option("--policy", policies, "a policy NAME[:key=value,...] (repeatable); see the list below");
  app.add_flag("--route-only", route_only, "route only: no expert compute for the policies (no output error, tokens/s of routing)");
  std::string capture_path, replay_path, replay_weights = "live";
  app.add_option("--capture", capture_path,
                 "record the model's own routing of every analysed layer (expert ids as int16 [tokens x layers x k] "
                 "and weights, safetensors; docs/routing-spec.md section 19) into this file");
  app.add_option("--replay", replay_path,
                 "replay a recording (written by --capture) as one more policy, 'replay': the recorded experts, weights "
                 "from the live logits of top_k over the layer's router with the model's k and renormalisation");
  app.add_option("--replay-weights", replay_weights,
                 "live: recompute the replayed weights from the live logits; recorded: use the recording's weights")
      ->check(CLI::IsMember({"live", "recorded"}))
      ->capture_default_str();
  app.add_option("--json", json_path, "write the results as JSON (schema: route_result.schema.json)");
  app.add_option("--report", report_path, "write a self-contained HTML report with SVG figures");
  app.add_option("--report-tokens", heat_tokens, "tokens shown in the report's token x expert heatmap")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_flag("-q,--quiet", quiet, "no progress on stderr (there is none either when stderr is not a terminal)");
  app.add_flag("--list-policies", list_policies, "print the policies and their options, then exit");
  app.footer(moe_route::policies_help());

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return 0;
  } catch (const CLI::CallForAllHelp&) {
    std::cout << app.help("", CLI::AppFormatMode::All);
    return 0;
  } catch (const CLI::ParseError& e) {
    std::cerr << "moe-route: " << e.what() << "\nRun 'moe-route --help' for the options.\n";
    return 2;
  }
  if (list_policies) {
    std::cout << moe_route::policies_help();
    return 0;
  }

  moe_route::run_options ro;
  try {
    for (const auto& p : policies) ro.policies.push_back(moe_route::parse_policy(p));
    if (mo.checkpoint.empty() && mo.preset.empty()) throw moe_route::usage_error("give --checkpoint or --preset");
    if (!mo.checkpoint.empty() && (app.count("--dim") || app.count("--ffn") || app.count("--num-layers") || app.count("--experts"))) {
      throw moe_route::usage_error("--dim, --ffn, --num-layers and --experts describe a synthetic model; a checkpoint has its own");
    }
    mo.seed = static_cast<std::uint64_t>(seed);
    hs.seed = static_cast<std::uint64_t>(seed);
    // Usage errors come before a checkpoint is opened, except --layers, which needs the model.
    const auto m = moe_route::open_model(mo);  // a preset name is checked here (usage error)
    ro.layers = moe_route::parse_layers(layers, *m);
    ro.route_only = route_only;
    ro.heatmap_tokens = heat_tokens;
    moe::route_recording captured, replayed;
    if (!replay_path.empty()) {
      replayed = moe::io::read_routes(replay_path, m->experts());
      ro.replay = &replayed;
      ro.replay_weights = replay_weights == "recorded" ? moe::replay_weights::recorded : moe::replay_weights::live;
    }
    if (!capture_path.empty()) ro.capture = &captured;
    progress bar(!quiet);
    ro.progress = [&bar](std::size_t done, std::size_t total) { bar(done, total); };
    const auto a = moe_route::analyse(*m, hs, ro);
    if (!capture_path.empty()) moe::io::write_routes(capture_path, captured);
    moe_route::print_table(std::cout, a);
    if (!json_path.empty()) {
      std::ofstream out(json_path);
      out << moe_route::to_json(a).dump(2) << "\n";
      if (!out) moe::detail::throw_error(moe::error_id::input, "moe-route: cannot write '" + json_path + "'");
    }
    if (!report_path.empty()) {
      std::ofstream out(report_path);
      out << moe_route::html_report(a);
      if (!out) moe::detail::throw_error(moe::error_id::input, "moe-route: cannot write '" + report_path + "'");
    }
  } catch (const moe_route::usage_error& e) {
    std::cerr << "moe-route: " << e.what() << "\nRun 'moe-route --help' for the options.\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "moe-route: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
