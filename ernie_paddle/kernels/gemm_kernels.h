// Prefill GEMM of the stored formats (float32 activations): y [m, n] = x [m, k] @ W^T for m > kSmallRows.
//
// Each thread packs kPanel weight rows at a time: decoded once (with their group scales, as decode_span)
// and transposed into a panel P [k][kPanel] (8 x 8 register transposes), then every kGemmRows token rows pass
// over it in a broadcast micro-kernel: per k, two panel vectors, one broadcast activation per token row and
// 2 x kGemmRows fused multiply-adds into 12 accumulators (two panel loads per 12 FMAs). Each output
// sums its k products in one lane in the same blocked order whatever rows and panel come with it, then the
// row scale: the same value for every grouping of token rows. One thread, 3072 x 1024, 32-64 rows: bf16,
// wint8, wint4 and fp8 1.2-1.45x the 4 x 2 tiles (80-100 GFLOP/s per core against 61-71).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "weight_formats.h"

namespace ernie {

constexpr int64_t kPanel = 16;  // weight rows per packed panel: two vectors per k
constexpr int64_t kGemmRows = 6;  // token rows per micro-kernel pass: 12 accumulators
constexpr int64_t kGemmBlock = 64;  // k per register pass of the micro-kernel (see panel_rows)

// P [k][kPanel] = the unit-order values of weight rows n .. n + kPanel with their group scales.
template <class V, class F>
void pack_panel(const Mat& w, int64_t n, int64_t k, float* panel) {
  using Reg = typename V::R;
  const int64_t units = k / kUnit;
  for (int64_t u = 0; u < units; ++u) {
    Reg v[kPanel][4];
    for (int j = 0; j < kPanel; ++j) {
      const F f(w, n + j);
      f.unit(u, v[j]);
      if constexpr (F::kGroup > 0) {
        const Reg s = V::set1(f.group_scale(u * kUnit / F::kGroup));
        for (int q = 0; q < 4; ++q) v[j][q] = V::mul(v[j][q], s);
      }
    }
    for (int h = 0; h < kPanel / 8; ++h)
      for (int q = 0; q < 4; ++q) {
        Reg r[8];
        for (int j = 0; j < 8; ++j) r[j] = v[8 * h + j][q];
        V::transpose8(r);
        for (int i = 0; i < 8; ++i) V::store8(panel + (u * kUnit + 8 * q + i) * kPanel + 8 * h, r[i]);
      }
  }
  for (int j = 0; j < kPanel; ++j) {
    const F f(w, n + j);
    for (int64_t i = units * kUnit; i < k; ++i) panel[i * kPanel + j] = scaled_at(f, i);
  }
}

// y[r, 0 .. kPanel) (row stride ldy) = R token rows of x (row stride ldx) times the panel over all k: per
// block of kGemmBlock k the products in order in registers, the blocks' sums added in order (a blocked sum:
// rounding error grows with kGemmBlock + k / kGemmBlock, not with k). Not inlined: inlined into the wint8/wint4
// callers GCC kept fewer accumulators in registers (0.65x).
template <class V, int R>
__attribute__((noinline)) void panel_rows(const float* x, int64_t ldx, const float* panel, int64_t k, float* y, int64_t ldy) {
  using Reg = typename V::R;
  for (int64_t k0 = 0; k0 < k; k0 += kGemmBlock) {
    const int64_t k1 = std::min(k, k0 + kGemmBlock);
    Reg c[R][2];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) c[r][0] = c[r][1] = V::zero();
    for (int64_t i = k0; i < k1; ++i) {
      const Reg b0 = V::load8(panel + i * kPanel), b1 = V::load8(panel + i * kPanel + 8);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const Reg a = V::set1(x[r * ldx + i]);
        c[r][0] = V::fmadd(a, b0, c[r][0]);
        c[r][1] = V::fmadd(a, b1, c[r][1]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      if (k0 > 0) {
        c[r][0] = V::add(V::load8(y + r * ldy), c[r][0]);
        c[r][1] = V::add(V::load8(y + r * ldy + 8), c[r][1]);
      }
      V::store8(y + r * ldy, c[r][0]);
      V::store8(y + r * ldy + 8, c[r][1]);
    }
  }
}

// y[r, n] (row stride ldy) for token rows r < m and the full panels of output rows n0 .. n1; returns the first
// row not computed (the caller's other path takes the rest).
template <class V, class F>
int64_t gemm_range(const float* xp, int64_t m, int64_t k, const Mat& w, int64_t n0, int64_t n1, float* y,
                   int64_t ldy) {
  thread_local std::vector<float> panel;
  panel.resize(k * kPanel);
  float out[kGemmRows * kPanel], scale[kPanel];
  int64_t n = n0;
  for (; n + kPanel <= n1; n += kPanel) {
    pack_panel<V, F>(w, n, k, panel.data());
    for (int c = 0; c < kPanel; ++c) scale[c] = F::kRowScale ? F(w, n + c).row_scale() : 1.0f;
    for (int64_t r = 0; r < m; r += kGemmRows) {
      const float* x = xp + r * k;
      switch (std::min(kGemmRows, m - r)) {
        case 1: panel_rows<V, 1>(x, k, panel.data(), k, out, kPanel); break;
        case 2: panel_rows<V, 2>(x, k, panel.data(), k, out, kPanel); break;
        case 3: panel_rows<V, 3>(x, k, panel.data(), k, out, kPanel); break;
        case 4: panel_rows<V, 4>(x, k, panel.data(), k, out, kPanel); break;
        case 5: panel_rows<V, 5>(x, k, panel.data(), k, out, kPanel); break;
        default: panel_rows<V, 6>(x, k, panel.data(), k, out, kPanel); break;
      }
      for (int64_t j = 0; j < std::min(kGemmRows, m - r); ++j)
        for (int c = 0; c < kPanel; ++c)
          y[(r + j) * ldy + n + c] = F::kRowScale ? out[j * kPanel + c] * scale[c] : out[j * kPanel + c];
    }
  }
  return n;
}

}  // namespace ernie
