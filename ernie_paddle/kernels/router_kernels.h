// The MoE router of the ernie_moe operator, computing what models/moe.py:route computes: logits = x @ gate
// (float32), probs = softmax (or sigmoid) of the logits, scores = probs + bias (selection only), the k experts
// of the highest scores, weights = their probs / max(sum of them, norm_min).
//
// Logits: the gate's rows h are cut in chunks of kGateChunk; a chunk's partial logits add x[h] * gate[h, :]
// in ascending h, and a row's logits add the partials in chunk order, so the numbers do not depend on the
// thread count. A few rows (decode) share one read of each chunk and split the chunks among threads; many
// rows (prefill) split the rows. No parallel region when the work is small.
//
// Ties: the ids are those of Paddle's CPU topk, which does not put the lower id first. It orders
// (score, id) pairs, built in id order, by score alone (a NaN counts as the largest): a partial sort when
// k * 64 < E, else an nth_element at k - 1 followed by a sort of the first k - 1; both are libstdc++'s
// (not stable), so which of equal scores win depends on E and k (all scores equal, E = 64, k = 6: ids 44,
// 41, 42, 43, 46, 47). The same calls over the same pairs give the same ids.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace ernie {

constexpr int64_t kGateChunk = 64;  // gate rows per partial sum
constexpr int64_t kRouterFewRows = 16;  // up to this many rows share each chunk's read (split by chunk)
constexpr int64_t kRouterParallelMacs = 1 << 15;  // rows * H * E below this: no parallel region

// One call: x [rows, h], gate [h, experts], bias [experts] or null; ids, weights [rows, k] out.
struct RouterCall {
  const float* x;
  int64_t rows, h;
  const float* gate;
  int64_t experts;
  const float* bias;
  int64_t k;
  float norm_min;
  bool sigmoid;
  int64_t* ids;
  float* weights;
};

// part [rows, E] = sum over h in chunk c (ascending) of x[r, h] * gate[h, :].
inline void gate_chunk(const RouterCall& c, int64_t chunk, const float* x, int64_t rows, float* part) {
  const int64_t e = c.experts, h0 = chunk * kGateChunk, h1 = std::min(c.h, h0 + kGateChunk);
  std::fill(part, part + rows * e, 0.0f);
  for (int64_t hi = h0; hi < h1; ++hi) {
    const float* g = c.gate + hi * e;
    for (int64_t r = 0; r < rows; ++r) {
      const float xv = x[r * c.h + hi];
      float* p = part + r * e;
#pragma omp simd
      for (int64_t j = 0; j < e; ++j) p[j] += xv * g[j];
    }
  }
}

// ids/weights of row r from its logits (overwritten with the probabilities).
inline void select_experts(const RouterCall& c, int64_t r, float* logits) {
  const int64_t e = c.experts, k = c.k;
  if (c.sigmoid) {
    for (int64_t j = 0; j < e; ++j) logits[j] = 1.0f / (1.0f + std::exp(-logits[j]));
  } else {
    const float top = *std::max_element(logits, logits + e);
    float sum = 0.0f;
    for (int64_t j = 0; j < e; ++j) sum += (logits[j] = std::exp(logits[j] - top));
    for (int64_t j = 0; j < e; ++j) logits[j] /= sum;
  }
  std::vector<std::pair<float, int64_t>> order(e);
  for (int64_t j = 0; j < e; ++j) order[j] = {c.bias ? logits[j] + c.bias[j] : logits[j], j};
  auto before = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
    return (std::isnan(a.first) && !std::isnan(b.first)) || a.first > b.first;
  };
  if (k * 64 < e) {
    std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
  } else {
    std::nth_element(order.begin(), order.begin() + k - 1, order.end(), before);
    std::sort(order.begin(), order.begin() + k - 1, before);
  }
  int64_t* ids = c.ids + r * k;
  float* w = c.weights + r * k;
  float sum = 0.0f;
  for (int64_t j = 0; j < k; ++j) sum += (w[j] = logits[ids[j] = order[j].second]);
  const float denom = std::max(sum, c.norm_min);
  for (int64_t j = 0; j < k; ++j) w[j] /= denom;
}

// Row r's logits [E], its chunks in order.
inline void row_logits(const RouterCall& c, int64_t r, float* logits, float* part) {
  const int64_t chunks = (c.h + kGateChunk - 1) / kGateChunk;
  for (int64_t ch = 0; ch < chunks; ++ch) {
    gate_chunk(c, ch, c.x + r * c.h, 1, ch == 0 ? logits : part);
    if (ch == 0) continue;
#pragma omp simd
    for (int64_t j = 0; j < c.experts; ++j) logits[j] += part[j];
  }
}

// Every row's ids and weights.
inline void route_rows(const RouterCall& c) {
  const int64_t e = c.experts, chunks = (c.h + kGateChunk - 1) / kGateChunk;
  const bool parallel = c.rows * c.h * e >= kRouterParallelMacs && omp_get_max_threads() > 1;
  if (c.rows > kRouterFewRows) {  // prefill: threads split the rows
    auto rows = [&](int64_t r0, int64_t r1) {
      std::vector<float> logits(e), part(e);
      for (int64_t r = r0; r < r1; ++r) {
        row_logits(c, r, logits.data(), part.data());
        select_experts(c, r, logits.data());
      }
    };
    if (!parallel) {
      rows(0, c.rows);
      return;
    }
#pragma omp parallel
    {
      const int64_t team = omp_get_num_threads(), id = omp_get_thread_num();
      rows(c.rows * id / team, c.rows * (id + 1) / team);
    }
    return;
  }
  // decode: every chunk's partials for all rows (one read of the gate), then the sums in chunk order
  std::vector<float> parts(chunks * c.rows * e);
  if (parallel && chunks > 1) {
#pragma omp parallel for schedule(static)
    for (int64_t ch = 0; ch < chunks; ++ch) gate_chunk(c, ch, c.x, c.rows, parts.data() + ch * c.rows * e);
  } else {
    for (int64_t ch = 0; ch < chunks; ++ch) gate_chunk(c, ch, c.x, c.rows, parts.data() + ch * c.rows * e);
  }
  std::vector<float> logits(e);
  for (int64_t r = 0; r < c.rows; ++r) {
    std::copy(parts.begin() + r * e, parts.begin() + (r + 1) * e, logits.begin());
    for (int64_t ch = 1; ch < chunks; ++ch) {
      const float* p = parts.data() + (ch * c.rows + r) * e;
#pragma omp simd
      for (int64_t j = 0; j < e; ++j) logits[j] += p[j];
    }
    select_experts(c, r, logits.data());
  }
}

}  // namespace ernie
