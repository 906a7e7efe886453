// The routed experts of an MoE layer in one pass over their weights (the ernie_moe_experts operator):
// y[t] = sum over token t's chosen experts e of weight * down_e(silu(gate_e x_t) * up_e x_t).
//
// The token rows are grouped by expert (Routing), so each chosen expert's weights are read once per call
// whatever the number of tokens that chose it. One OpenMP parallel region per pass (not one per expert and
// matrix): work items are (expert, chunk of kChunk output rows); each thread takes a contiguous run of items
// of about equal cost, so it streams long runs of weight rows; SwiGLU is fused into the up_gate items (an
// item computes the gate rows n0 .. n1 and the matching up rows I + n0 .. I + n1); one barrier; the down
// items write each routed row's output into its own buffer row; one barrier; each token's output is the
// weighted sum of its rows in ascending expert order. No atomics; each (row, output) value is computed exactly
// as ernie_linear computes it (the same kernels and row blocks), so results do not depend on the thread
// count (except float32 experts with many rows, which go to MKL like ernie_linear's prefill).
//
// Passes hold at most kPassRows routed rows (bounded scratch in prefill). float32 experts with more than
// kSmallRows rows run through linear_into (Paddle's matmul, MKL) between the region and the sum.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "linear_kernels.h"
#include "stored_weights.h"

namespace ernie {

constexpr int64_t kPassRows = 512;  // routed rows per pass at most (unless one expert has more)
constexpr int64_t kItemCost = 2;  // a work item's cost beyond its token rows (streaming its weights), in rows

// out[j] = silu(gate[j]) * up[j], j < len.
inline void swiglu_span(const float* gate, const float* up, int64_t len, float* out) {
  for (int64_t j = 0; j < len; ++j) out[j] = gate[j] / (1.0f + std::exp(-gate[j])) * up[j];
}

// out [rows, inter] = silu(gate) * up for h [rows, 2 inter] holding [gate | up].
inline void swiglu_rows(const float* h, int64_t rows, int64_t inter, float* out) {
  for (int64_t i = 0; i < rows; ++i) swiglu_span(h + i * 2 * inter, h + i * 2 * inter + inter, inter, out + i * inter);
}

// The routed rows (token, choice) grouped by expert, in (token, choice) order within an expert.
struct Routing {
  std::vector<int64_t> experts;  // the chosen experts, ascending
  std::vector<int64_t> start;  // experts[i]'s rows are start[i] .. start[i + 1] of the grouped order
  std::vector<int64_t> token;  // [T k] the token of each grouped row
  std::vector<float> weight;  // [T k] its routing weight
  std::vector<int64_t> slot;  // [T, k] token t's grouped rows, ascending (so its sum runs in expert order)
};

inline Routing route_tokens(const int64_t* ids, const float* weights, int64_t t, int64_t top, int64_t experts) {
  std::vector<int64_t> first(experts + 1, 0);
  for (int64_t i = 0; i < t * top; ++i) {
    PD_CHECK(ids[i] >= 0 && ids[i] < experts, "ernie_moe_experts: expert id out of range: ", ids[i], " of ", experts);
    ++first[ids[i] + 1];
  }
  Routing r;
  for (int64_t e = 0; e < experts; ++e) {
    if (first[e + 1] > 0) r.experts.push_back(e), r.start.push_back(first[e]);
    first[e + 1] += first[e];
  }
  r.start.push_back(t * top);
  r.token.resize(t * top), r.weight.resize(t * top), r.slot.resize(t * top);
  for (int64_t i = 0; i < t * top; ++i) {
    const int64_t g = first[ids[i]]++;
    r.token[g] = i / top, r.weight[g] = weights[i], r.slot[i] = g;
  }
  for (int64_t i = 0; i < t; ++i) std::sort(r.slot.begin() + i * top, r.slot.begin() + (i + 1) * top);
  return r;
}

// One call's operands: x [T, H], the stacks (up_gate [E, 2I, H], down [E, H, I]) and the routing.
struct MoeCall {
  const float* x;
  int64_t t, h, inter, top;
  const StoredWeights& up_gate;
  const StoredWeights& down;
  const Routing& route;
  bool int8_act;
  float* y;  // [T, H], zeros on entry
};

// The work items of one matrix over a pass's streamed experts: (expert i, chunk of kChunk output rows of n), in
// that order, and their cumulative cost (kItemCost + the expert's token rows per item).
struct Items {
  const std::vector<int64_t>& experts;  // indices into the routing
  int64_t chunks, n;
  std::vector<int64_t> prefix{0};
  Items(const std::vector<int64_t>& experts, const Routing& rt, int64_t n)
      : experts(experts), chunks((n + kChunk - 1) / kChunk), n(n) {
    for (const int64_t i : experts)
      for (int64_t c = 0; c < chunks; ++c) prefix.push_back(prefix.back() + kItemCost + rt.start[i + 1] - rt.start[i]);
  }
  int64_t size() const { return static_cast<int64_t>(prefix.size()) - 1; }
  int64_t expert(int64_t item) const { return experts[item / chunks]; }
  int64_t n0(int64_t item) const { return (item % chunks) * kChunk; }
  int64_t n1(int64_t item) const { return std::min(n, n0(item) + kChunk); }
  // The items [lo, hi) of thread id of `team`: contiguous runs of about equal cost.
  std::pair<int64_t, int64_t> share(int id, int team) const {
    const int64_t total = std::max<int64_t>(prefix.back(), 1);
    auto owner = [&](int64_t it) { return (prefix[it] + prefix[it + 1]) * team / (2 * total); };
    int64_t lo = 0;
    while (lo < size() && owner(lo) < id) ++lo;
    int64_t hi = lo;
    while (hi < size() && owner(hi) <= id) ++hi;
    return {lo, hi};
  }
};

// The scratch of one pass: every buffer [rows of the pass, width], rows in the grouped order.
struct PassBuffers {
  Scratch<float> x, hid, act, act_in, out;  // act_in: act in the format's unit order (permuted formats)
  QBuffers xq, aq;  // int8 mode: the quantized inputs of up_gate and down
  PassBuffers(int64_t rows, int64_t h, int64_t inter, bool permuted, bool int8)
      : x(rows * h), hid(rows * 2 * inter), act(rows * inter), act_in(permuted ? rows * inter : 0), out(rows * h),
        xq(int8 ? rows : 0, h), aq(int8 ? rows : 0, inter) {}
};

// y [m, n0 .. n1) (row stride ldy) = the rows of one item, as linear_into computes them (the same row blocks).
template <class V, class F>
void item_rows(const float* x, const QRows* xq, int64_t m, int64_t k, const Mat& w, int64_t n0, int64_t n1, float* y,
               int64_t ldy) {
  for (int64_t r0 = 0; r0 < m; r0 += kPrefillRows) {
    const int64_t rows = std::min(kPrefillRows, m - r0);
    if constexpr (F::kInt8) {
      if (xq != nullptr) {
        igemv_range<V, F>(xq->row(r0), rows, w, n0, n1, y + r0 * ldy, ldy);
        continue;
      }
    }
    gemv_range<V, F>(x + r0 * k, rows, k, w, n0, n1, y + r0 * ldy, ldy);
  }
}

// One grouped row's input of width k in the format's order: permuted (wint4, wint2), quantized (int8 mode).
template <class F>
void prepare_row(const float* src, int64_t k, float* dst, QBuffers* q, int64_t row) {
  if constexpr (F::kPermuted)
    permute_rows<F>(src, 1, k, dst);
  else if (dst != src)
    std::copy(src, src + k, dst);
  if (q != nullptr) q->quantize(dst, 1, row, F::kOffset);
}

// y[t] += weight * out[g - base] for token t's grouped rows g of the pass (base .. base + rows), in ascending
// order (expert order), shared over (token, column block) items; called inside the pass's parallel region
// (an orphaned worksharing loop) or outside it (one thread).
inline void add_pass(const MoeCall& c, int64_t base, int64_t rows, const float* out) {
  constexpr int64_t kCols = 256;
  const int64_t col_blocks = (c.h + kCols - 1) / kCols;
#pragma omp for schedule(static)
  for (int64_t item = 0; item < c.t * col_blocks; ++item) {
    const int64_t t = item / col_blocks, c0 = (item % col_blocks) * kCols, c1 = std::min(c.h, c0 + kCols);
    float* dst = c.y + t * c.h;
    for (int64_t j = 0; j < c.top; ++j) {
      const int64_t g = c.route.slot[t * c.top + j];
      if (g < base || g >= base + rows) continue;
      const float* src = out + (g - base) * c.h;
      const float wt = c.route.weight[g];
      for (int64_t col = c0; col < c1; ++col) dst[col] += wt * src[col];
    }
  }
}

// The experts i0 .. i1 of the routing (one pass) on backend V and format F.
template <class V, class F>
void experts_pass(const MoeCall& c, int64_t i0, int64_t i1, PassBuffers& b) {
  const Routing& rt = c.route;
  const int64_t base = rt.start[i0], rows = rt.start[i1] - base, h = c.h, inter = c.inter, two_i = 2 * inter;
  const bool int8 = F::kInt8 && c.int8_act;
  auto offset = [&](int64_t i) { return rt.start[i] - base; };  // the expert's first row in the buffers
  auto count = [&](int64_t i) { return rt.start[i + 1] - rt.start[i]; };
  std::vector<int64_t> streamed, heavy;  // float32 experts with many rows: Paddle's matmul, after the region
  for (int64_t i = i0; i < i1; ++i) (std::is_same_v<F, F32> && count(i) > kSmallRows ? heavy : streamed).push_back(i);
  const Items ug_items(streamed, rt, inter), dn_items(streamed, rt, h);  // up_gate: chunks of gate (and up) rows
  const int threads = static_cast<int>(std::clamp<int64_t>(ug_items.size(), 1, omp_get_max_threads()));
  float *xb = b.x.get(), *hid = b.hid.get(), *act = b.act.get(), *out = b.out.get();
  float* act_in = F::kPermuted ? b.act_in.get() : act;
  QBuffers *xq = int8 ? &b.xq : nullptr, *aq = int8 ? &b.aq : nullptr;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int id = omp_get_thread_num(), team = omp_get_num_threads();
#pragma omp for schedule(static)
    for (int64_t g = 0; g < rows; ++g)
      prepare_row<F>(c.x + rt.token[base + g] * h, h, xb + g * h, xq, g);
    const auto [ua, ub] = ug_items.share(id, team);
    for (int64_t it = ua; it < ub; ++it) {  // the gate rows n0 .. n1 and up rows I + n0 .. I + n1, then SwiGLU
      const int64_t i = ug_items.expert(it), o = offset(i), m = count(i), n0 = ug_items.n0(it), n1 = ug_items.n1(it);
      const Mat w = c.up_gate.expert(rt.experts[i]);
      const QRows q = int8 ? xq->rows(o) : QRows{};
      const QRows* qp = int8 ? &q : nullptr;
      item_rows<V, F>(xb + o * h, qp, m, h, w, n0, n1, hid + o * two_i, two_i);
      item_rows<V, F>(xb + o * h, qp, m, h, w, inter + n0, inter + n1, hid + o * two_i, two_i);
      for (int64_t r = o; r < o + m; ++r)
        swiglu_span(hid + r * two_i + n0, hid + r * two_i + inter + n0, n1 - n0, act + r * inter + n0);
    }
#pragma omp barrier
    if (F::kPermuted || int8) {
#pragma omp for schedule(static)
      for (int64_t g = 0; g < rows; ++g)
        prepare_row<F>(act + g * inter, inter, act_in + g * inter, aq, g);
    }
    const auto [da, db] = dn_items.share(id, team);
    for (int64_t it = da; it < db; ++it) {
      const int64_t i = dn_items.expert(it), o = offset(i);
      const QRows q = int8 ? aq->rows(o) : QRows{};
      item_rows<V, F>(act_in + o * inter, int8 ? &q : nullptr, count(i), inter, c.down.expert(rt.experts[i]),
                      dn_items.n0(it), dn_items.n1(it), out + o * h, h);
    }
    if (heavy.empty()) {
#pragma omp barrier
      add_pass(c, base, rows, out);
    }
  }
  for (const int64_t i : heavy) {
    const int64_t o = offset(i), m = count(i);
    linear_into<F>(xb + o * h, m, h, c.up_gate.expert(rt.experts[i]), hid + o * two_i, false);
    swiglu_rows(hid + o * two_i, m, inter, act + o * inter);
    linear_into<F>(act + o * inter, m, inter, c.down.expert(rt.experts[i]), out + o * h, false);
  }
  if (!heavy.empty()) add_pass(c, base, rows, out);  // outside a parallel region: on this thread
}

template <class F>
void experts_with(const MoeCall& c) {
  const Routing& rt = c.route;
  const int64_t used = static_cast<int64_t>(rt.experts.size());
  int64_t most = 0;  // the most rows of one expert (a pass of its own when over kPassRows)
  for (int64_t i = 0; i < used; ++i) most = std::max(most, rt.start[i + 1] - rt.start[i]);
  PassBuffers buffers(std::max(most, std::min(kPassRows, c.t * c.top)), c.h, c.inter, F::kPermuted,
                      F::kInt8 && c.int8_act);
  for (int64_t i0 = 0, i1 = 0; i0 < used; i0 = i1) {
    i1 = i0 + 1;
    while (i1 < used && rt.start[i1 + 1] - rt.start[i0] <= kPassRows) ++i1;
#ifdef ERNIE_HAVE_AVX2
    if (!portable_requested()) {
      experts_pass<Avx2, F>(c, i0, i1, buffers);
      continue;
    }
#endif
    experts_pass<Portable, F>(c, i0, i1, buffers);
  }
}

}  // namespace ernie
