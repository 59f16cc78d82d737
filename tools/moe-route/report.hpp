// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// moe-route's outputs: the table on stdout, the JSON file (schema: route_result.schema.json)
// and the self-contained HTML report with SVG figures.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <ostream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include <moe/version.hpp>

#include "analysis.hpp"

namespace moe_route {

namespace detail {

inline std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

inline std::string escape(const std::string& s) {
  std::string o;
  for (const char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

inline std::string version() {
  return std::to_string(MOE_VERSION_MAJOR) + "." + std::to_string(MOE_VERSION_MINOR) + "." + std::to_string(MOE_VERSION_PATCH);
}

inline std::string histogram_text(const std::vector<index>& h) {
  std::string s;
  for (std::size_t n = 0; n < h.size(); ++n) {
    if (h[n] == 0) continue;
    s += (s.empty() ? "" : " ") + std::to_string(n) + ":" + std::to_string(h[n]);
  }
  return s.empty() ? "-" : s;
}

}  // namespace detail

/// The table of every policy, one row per layer and a total row.
inline void print_table(std::ostream& out, const analysis& a) {
  out << "model: " << a.model_description << "\n";
  out << "tokens: " << a.tokens << ", layers:";
  for (const auto l : a.layers) out << ' ' << l;
  out << "\n";
  for (const auto& p : a.policies) {
    out << "\npolicy " << p.spec << (p.name == "model" ? " (the model's own router)" : "") << "\n";
    char line[512];
    std::snprintf(line, sizeof line, "%6s %8s %9s %8s %8s %7s %7s %7s %8s %10s %11s  %s\n", "layer", "exp/tok", "GFLOP",
                  "max/mean", "load_H", "dropped", "skipped", "jaccard", "out_err", "tokens/s", "", "experts-per-token histogram");
    out << line;
    const auto row = [&](const std::string& layer, double ept, double gf, double mm, double h, index dr, index sk, double j, double err,
                         double tps, const std::vector<index>& hist) {
      std::snprintf(line, sizeof line, "%6s %8.3f %9.4g %8.3f %8.3f %7lld %7lld %7.3f %8s %10.0f %11s  %s\n", layer.c_str(), ept, gf, mm,
                    h, static_cast<long long>(dr), static_cast<long long>(sk), j,
                    std::isnan(err) ? "n/a" : detail::fmt("%.4f", err).c_str(), tps, "", detail::histogram_text(hist).c_str());
      out << line;
    };
    for (const auto& l : p.layers) {
      row(std::to_string(l.layer), l.experts_per_token, l.gflops, l.max_over_mean_load, l.load_entropy, l.dropped, l.skipped, l.jaccard,
          l.output_rel_error, l.tokens_per_second, l.histogram);
    }
    if (p.layers.size() > 1) {
      row("all", p.experts_per_token, p.gflops, p.max_over_mean_load, p.load_entropy, p.dropped, p.skipped, p.jaccard, p.output_rel_error,
          p.tokens_per_second, p.histogram);
    }
  }
  out << "\nexp/tok: active experts per token (mean); GFLOP: router + experts; max/mean: load balance (1 is perfect); load_H: "
         "load entropy in nats (max ln E = "
      << detail::fmt("%.3f", std::log(static_cast<double>(std::max<index>(a.experts, 1))))
      << "); jaccard: overlap of expert sets with the model's routing; out_err: ||y - y_model|| / ||y_model|| of the MoE output; "
         "tokens/s: routing + experts. "
      << detail::fmt("%.2f", a.seconds) << " s in all.\n";
}

/// The JSON document (route_result.schema.json).
inline nlohmann::ordered_json to_json(const analysis& a) {
  using json = nlohmann::ordered_json;
  const auto num = [](double v) -> json { return std::isfinite(v) ? json(v) : json(nullptr); };
  json j;
  j["format"] = "moe-route/1";
  j["moe_version"] = detail::version();
  j["model"] = {{"kind", a.model_kind}, {"description", a.model_description}, {"hidden", a.hidden}, {"experts", a.experts},
                {"intermediate", a.intermediate}, {"k", a.k}};
  j["tokens"] = a.tokens;
  j["layers"] = a.layers;
  j["route_only"] = a.route_only;
  j["seconds"] = a.seconds;
  j["policies"] = json::array();
  for (const auto& p : a.policies) {
    json pj;
    pj["name"] = p.name;
    pj["spec"] = p.spec;
    pj["options"] = json::object();
    for (const auto& [k, v] : p.options) pj["options"][k] = v;
    pj["summary"] = {{"experts_per_token", p.experts_per_token},
                     {"histogram", p.histogram},
                     {"gflops", p.gflops},
                     {"max_over_mean_load", p.max_over_mean_load},
                     {"load_entropy", p.load_entropy},
                     {"dropped", p.dropped},
                     {"skipped", p.skipped},
                     {"routed_nowhere", p.routed_nowhere},
                     {"jaccard", p.jaccard},
                     {"output_rel_error", num(p.output_rel_error)},
                     {"seconds", p.seconds},
                     {"tokens_per_second", p.tokens_per_second}};
    pj["layers"] = json::array();
    for (const auto& l : p.layers) {
      pj["layers"].push_back({{"layer", l.layer},
                              {"experts_per_token", l.experts_per_token},
                              {"histogram", l.histogram},
                              {"load", l.load},
                              {"gflops", l.gflops},
                              {"max_over_mean_load", l.max_over_mean_load},
                              {"load_entropy", l.load_entropy},
                              {"dropped", l.dropped},
                              {"skipped", l.skipped},
                              {"routed_nowhere", l.routed_nowhere},
                              {"jaccard", l.jaccard},
                              {"output_rel_error", num(l.output_rel_error)},
                              {"route_seconds", l.route_seconds},
                              {"expert_seconds", l.expert_seconds},
                              {"tokens_per_second", l.tokens_per_second}});
    }
    j["policies"].push_back(std::move(pj));
  }
  return j;
}

namespace detail {

/// A colour from white (0) to dark blue (1).
inline std::string shade(double v) {
  v = std::clamp(v, 0.0, 1.0);
  const int r = static_cast<int>(255 - 222 * v), g = static_cast<int>(255 - 180 * v), b = static_cast<int>(255 - 100 * v);
  char s[16];
  std::snprintf(s, sizeof s, "#%02x%02x%02x", r, g, b);
  return s;
}

/// A matrix as an SVG heatmap: `rows × cols` cells, values scaled by their maximum.
inline std::string heatmap_svg(const std::string& id, const std::string& title, const std::vector<double>& v, index rows, index cols,
                               const std::string& row_label, const std::string& col_label, double cell, double row_cell = 0) {
  if (row_cell <= 0) row_cell = cell;
  const double left = 48, top = 24, w = static_cast<double>(cols) * cell, h = static_cast<double>(rows) * row_cell;
  const double width = std::max(left + w + 10, 7.0 * static_cast<double>(title.size()) + 60);
  double mx = 0;
  for (const double x : v) mx = std::max(mx, x);
  std::ostringstream s;
  s << "<svg id=\"" << id << "\" class=\"figure\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\""
    << top + h + 30 << "\" viewBox=\"0 0 " << width << ' ' << top + h + 30 << "\" role=\"img\"><title>" << escape(title)
    << "</title>";
  s << "<text x=\"4\" y=\"14\" class=\"t\">" << escape(title) << "</text>";
  s << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << w << "\" height=\"" << h << "\" fill=\"#fff\" stroke=\"#999\"/>";
  for (index r = 0; r < rows; ++r) {
    for (index c = 0; c < cols; ++c) {
      const double x = v[static_cast<std::size_t>(r * cols + c)];
      if (x <= 0) continue;
      s << "<rect x=\"" << left + static_cast<double>(c) * cell << "\" y=\"" << top + static_cast<double>(r) * row_cell << "\" width=\"" << cell
        << "\" height=\"" << row_cell
        << "\" fill=\"" << shade(mx > 0 ? x / mx : 0) << "\"/>";
    }
  }
  s << "<text x=\"" << left + w / 2 << "\" y=\"" << top + h + 20 << "\" class=\"a\" text-anchor=\"middle\">" << escape(col_label) << " (0-"
    << cols - 1 << ")</text>";
  s << "<text x=\"12\" y=\"" << top + h / 2 << "\" class=\"a\" text-anchor=\"middle\" transform=\"rotate(-90 12 " << top + h / 2 << ")\">"
    << escape(row_label) << " (0-" << rows - 1 << ")</text>";
  s << "</svg>";
  return s.str();
}

/// A bar chart of counts.
inline std::string bars_svg(const std::string& id, const std::string& title, const std::vector<index>& h) {
  const double left = 40, top = 24, bw = 18, ph = 120;
  const double w = std::max(static_cast<double>(h.size()) * bw, 7.0 * static_cast<double>(title.size()) + 20 - left);
  index mx = 1;
  for (const index x : h) mx = std::max(mx, x);
  std::ostringstream s;
  s << "<svg id=\"" << id << "\" class=\"figure\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" << left + w + 10 << "\" height=\""
    << top + ph + 32 << "\" viewBox=\"0 0 " << left + w + 10 << ' ' << top + ph + 32 << "\" role=\"img\"><title>" << escape(title)
    << "</title>";
  s << "<text x=\"" << 4 << "\" y=\"14\" class=\"t\">" << escape(title) << "</text>";
  s << "<line x1=\"" << left << "\" y1=\"" << top + ph << "\" x2=\"" << left + w << "\" y2=\"" << top + ph << "\" stroke=\"#333\"/>";
  s << "<text x=\"" << left - 4 << "\" y=\"" << top + 8 << "\" class=\"a\" text-anchor=\"end\">" << mx << "</text>";
  for (std::size_t n = 0; n < h.size(); ++n) {
    const double bh = ph * static_cast<double>(h[n]) / static_cast<double>(mx);
    s << "<rect x=\"" << left + static_cast<double>(n) * bw + 2 << "\" y=\"" << top + ph - bh << "\" width=\"" << bw - 4
      << "\" height=\"" << bh << "\" fill=\"#2b5fa8\"><title>" << n << " experts: " << h[n] << " tokens</title></rect>";
    s << "<text x=\"" << left + (static_cast<double>(n) + 0.5) * bw << "\" y=\"" << top + ph + 12
      << "\" class=\"a\" text-anchor=\"middle\">" << n << "</text>";
  }
  s << "<text x=\"" << left + w / 2 << "\" y=\"" << top + ph + 28 << "\" class=\"a\" text-anchor=\"middle\">experts per token</text>";
  s << "</svg>";
  return s.str();
}

}  // namespace detail

/// The self-contained HTML report: the table and, per policy, the token × expert weights of the
/// first layer, the layer × expert load, the experts-per-token histogram and the co-activation
/// matrix. No network, no external file; an inline script measures every figure and writes the
/// boxes into the document (#figure-boxes), which a headless browser's DOM dump shows.
inline std::string html_report(const analysis& a) {
  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>moe-route report</title>\n<style>\n"
       "body{font:13px/1.4 system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}h2{font-size:16px;margin-top:28px;"
       "border-bottom:1px solid #ccc}table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:2px 6px;"
       "text-align:right}th{background:#f2f2f2}td.l{text-align:left}.figs{display:flex;flex-wrap:wrap;gap:16px}"
       "svg .t{font-size:12px;font-weight:600}svg .a{font-size:10px;fill:#444}.policy{page-break-inside:avoid;break-inside:avoid}"
       "#figure-boxes{display:none}\n"
       "@media print{body{margin:8mm;font-size:10px}h2{page-break-before:auto}.policy{page-break-before:always}"
       "svg{max-width:100%;height:auto}table{font-size:9px}}\n</style></head><body>\n";
  h << "<h1>moe-route: routing policies compared</h1>\n<p>" << detail::escape(a.model_description) << "<br>" << a.tokens
    << " tokens, layers";
  for (const auto l : a.layers) h << ' ' << l;
  h << "; every policy sees the model's own layer inputs (teacher-forced). Generated by moe " << detail::version() << " in "
    << detail::fmt("%.2f", a.seconds) << " s.</p>\n";
  h << "<table id=\"summary\"><tr><th>policy</th><th>experts/token</th><th>histogram</th><th>GFLOP</th><th>max/mean load</th>"
       "<th>load entropy</th><th>dropped</th><th>skipped</th><th>Jaccard vs model</th><th>output rel. error</th><th>tokens/s</th></tr>\n";
  for (const auto& p : a.policies) {
    h << "<tr><td class=\"l\">" << detail::escape(p.spec) << "</td><td>" << detail::fmt("%.3f", p.experts_per_token) << "</td><td class=\"l\">"
      << detail::histogram_text(p.histogram) << "</td><td>" << detail::fmt("%.4g", p.gflops) << "</td><td>"
      << detail::fmt("%.3f", p.max_over_mean_load) << "</td><td>" << detail::fmt("%.3f", p.load_entropy) << "</td><td>" << p.dropped
      << "</td><td>" << p.skipped << "</td><td>" << detail::fmt("%.3f", p.jaccard) << "</td><td>"
      << (std::isnan(p.output_rel_error) ? std::string("n/a") : detail::fmt("%.4f", p.output_rel_error)) << "</td><td>"
      << detail::fmt("%.0f", p.tokens_per_second) << "</td></tr>\n";
  }
  h << "</table>\n";
  const index E = a.experts;
  const double cell = E > 96 ? 3.0 : (E > 48 ? 5.0 : 10.0);
  for (std::size_t i = 0; i < a.policies.size(); ++i) {
    const auto& p = a.policies[i];
    const std::string n = std::to_string(i);
    h << "<div class=\"policy\"><h2>" << detail::escape(p.spec) << (p.name == "model" ? " (the model's own router)" : "") << "</h2><div class=\"figs\">\n";
    std::vector<double> heat(p.heatmap.begin(), p.heatmap.end());
    h << detail::heatmap_svg("heatmap-" + n, "token × expert weight, layer " + std::to_string(a.layers.front()), heat, p.heatmap_tokens, E,
                             "token", "expert", cell)
      << "\n";
    std::vector<double> load;
    for (const auto& l : p.layers) load.insert(load.end(), l.load.begin(), l.load.end());
    h << detail::heatmap_svg("load-" + n, "layer × expert load", load, static_cast<index>(p.layers.size()), E, "layer", "expert",
                             cell, std::max(cell, 96.0 / static_cast<double>(p.layers.size())))
      << "\n";
    h << detail::bars_svg("histogram-" + n, "experts per token (tokens × layers)", p.histogram) << "\n";
    std::vector<double> co = p.coactivation;  // the diagonal (an expert's own load) would swamp the pairs
    for (index e = 0; e < E && !co.empty(); ++e) co[static_cast<std::size_t>(e * E + e)] = 0;
    h << detail::heatmap_svg("coactivation-" + n, "expert co-activation (pairs chosen by one token)", co, co.empty() ? 0 : E, E, "expert",
                             "expert", cell)
      << "\n";
    h << "</div></div>\n";
  }
  h << "<pre id=\"figure-boxes\"></pre>\n<script>\n"
       "(function(){var out=[];var f=document.querySelectorAll('svg.figure');"
       "for(var i=0;i<f.length;i++){var r=f[i].getBoundingClientRect();"
       "out.push(f[i].id+' '+Math.round(r.width)+' '+Math.round(r.height));}"
       "document.getElementById('figure-boxes').textContent='figures '+f.length+'\\n'+out.join('\\n');})();\n"
       "</script>\n</body></html>\n";
  return h.str();
}

}  // namespace moe_route
