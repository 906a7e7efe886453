// y [m, n] = x [m, k] @ W^T for transposed weights wt [n, k] stored in any format of weight_formats.h
// (float32 x, float32 accumulation). Written once over a vector backend V and a stored element type T.
//
// Decode (m <= kSmallRows): a streaming GEMV, each weight row read from memory once and decoded in
// registers. Prefill (more rows): Paddle's matmul (MKL) on float32 weights; other formats the same
// register kernel over blocks of token rows (prefill_into).
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "paddle/extension.h"
#include "weight_formats.h"

namespace ernie {

constexpr int64_t kSmallRows = 8;
constexpr int64_t kBlock = 512;  // k per pass of the batched tiles: 4 weight rows + 8 token rows = 24 KB
constexpr int64_t kChunk = 64;  // output rows per work item (a multiple of 4: the 4 x 2 tiles)
constexpr int64_t kPrefillRows = 64;  // token rows per pass over the weights in prefill (non-float32)

// dot(a, b) over k values: four independent accumulators, so loads of b stream at full speed.
template <class V, class T>
inline float dot(const float* a, const T* b, int64_t k) {
  typename V::R s0 = V::zero(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    s0 = V::fmadd(V::load8(a + i), V::load8(b + i), s0);
    s1 = V::fmadd(V::load8(a + i + 8), V::load8(b + i + 8), s1);
    s2 = V::fmadd(V::load8(a + i + 16), V::load8(b + i + 16), s2);
    s3 = V::fmadd(V::load8(a + i + 24), V::load8(b + i + 24), s3);
  }
  for (; i + 8 <= k; i += 8) s0 = V::fmadd(V::load8(a + i), V::load8(b + i), s0);
  float s = V::hsum(V::add(V::add(s0, s1), V::add(s2, s3)));
  for (; i < k; ++i) s = std::fma(a[i], widen(b[i]), s);
  return s;
}

// y[r, n], y[r + 1, n] for four weight rows n .. n + 3 and two token rows r, r + 1 (r + 1 < m, or xb = xa):
// eight accumulators, six loads per eight FMAs, so batched decode is not bound by loads.
template <class V, class T>
void tile4x2(const float* xa, const float* xb, int64_t k, const T* w0, int64_t ldw, float* ya, float* yb) {
  const T *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
  typename V::R a0 = V::zero(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    const auto v0 = V::load8(w0 + i), v1 = V::load8(w1 + i), v2 = V::load8(w2 + i), v3 = V::load8(w3 + i);
    const auto xv = V::load8(xa + i), xw = V::load8(xb + i);
    a0 = V::fmadd(xv, v0, a0);
    a1 = V::fmadd(xv, v1, a1);
    a2 = V::fmadd(xv, v2, a2);
    a3 = V::fmadd(xv, v3, a3);
    b0 = V::fmadd(xw, v0, b0);
    b1 = V::fmadd(xw, v1, b1);
    b2 = V::fmadd(xw, v2, b2);
    b3 = V::fmadd(xw, v3, b3);
  }
  float s[8] = {V::hsum(a0), V::hsum(a1), V::hsum(a2), V::hsum(a3),
                V::hsum(b0), V::hsum(b1), V::hsum(b2), V::hsum(b3)};
  const T* w[4] = {w0, w1, w2, w3};
  for (; i < k; ++i)
    for (int j = 0; j < 4; ++j) {
      s[j] = std::fma(xa[i], widen(w[j][i]), s[j]);
      s[4 + j] = std::fma(xb[i], widen(w[j][i]), s[4 + j]);
    }
  for (int j = 0; j < 4; ++j) ya[j] += s[j];
  if (yb != ya)
    for (int j = 0; j < 4; ++j) yb[j] += s[4 + j];
}

// y[r, n] = dot(x[r, :], wt[n, :]) for output rows n0 .. n1 and token rows r < m. One token row: one
// sequential stream of weight rows (measured fastest); more: 4 x 2 register tiles, the four weight rows
// read from memory once and from L1 for the other token rows.
template <class V, class T>
void gemv_range(const float* x, int64_t m, int64_t k, const T* wt, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  int64_t n = n0;
  if (m > 1) {
    for (; n + 4 <= n1; n += 4) {
      for (int64_t r = 0; r < m; ++r) std::fill(y + r * ldy + n, y + r * ldy + n + 4, 0.0f);
      for (int64_t k0 = 0; k0 < k; k0 += kBlock) {  // the 4 weight rows' block and x's stay in L1
        const int64_t len = std::min(kBlock, k - k0);
        for (int64_t r = 0; r < m; r += 2) {
          const bool two = r + 1 < m;
          tile4x2<V>(x + r * k + k0, x + (two ? r + 1 : r) * k + k0, len, wt + n * k + k0, k, y + r * ldy + n,
                     y + (two ? r + 1 : r) * ldy + n);
        }
      }
    }
  }
  for (; n < n1; ++n)
    for (int64_t r = 0; r < m; ++r) y[r * ldy + n] = dot<V>(x + r * k, wt + n * k, k);
}

// The GEMV over all n: each thread one contiguous run of kChunk-row chunks (a static schedule: in the
// predictor, dynamic hand-out of chunks measured 1.7x slower).
template <class V, class T>
void gemv_with(const float* x, int64_t m, int64_t k, const T* wt, int64_t n, float* y) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int threads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), chunks));
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t c = 0; c < chunks; ++c)
    gemv_range<V>(x, m, k, wt, c * kChunk, std::min(n, (c + 1) * kChunk), y, n);
}

template <class T>
void gemv(const float* x, int64_t m, int64_t k, const T* wt, int64_t n, float* y) {
#ifdef ERNIE_HAVE_AVX2
  if (!portable_requested()) return gemv_with<Avx2>(x, m, k, wt, n, y);
#endif
  gemv_with<Portable>(x, m, k, wt, n, y);
}

// y [m, n] = x @ wt^T for prefill rows (m > kSmallRows). float32 weights: Paddle's matmul (MKL). Other
// formats: the same register-decoding kernel as decode, over blocks of kPrefillRows token rows, so each
// thread's kChunk weight rows stay in cache while every token row of the block passes over them; the
// weights are read from memory once per block. (Widening tiles into a float32 block for MKL measured
// 1.5-7x slower than this at 2 threads: a small GEMM per tile, see the report of issue 16.)
template <class T>
void prefill_into(const float* x, int64_t m, int64_t k, const T* wt, int64_t n, float* y) {
  if constexpr (std::is_same_v<T, float>) {
    auto xt = paddle::from_blob(const_cast<float*>(x), {m, k}, paddle::DataType::FLOAT32);
    auto wv = paddle::from_blob(const_cast<float*>(wt), {n, k}, paddle::DataType::FLOAT32);
    auto out = paddle::experimental::matmul(xt, wv, false, true);
    std::memcpy(y, out.data<float>(), sizeof(float) * m * n);
  } else {
    for (int64_t r0 = 0; r0 < m; r0 += kPrefillRows) gemv(x + r0 * k, std::min(kPrefillRows, m - r0), k, wt, n, y + r0 * n);
  }
}

// y [m, n] = x [m, k] @ wt[n, k]^T into y (contiguous): the GEMV for few rows, prefill_into otherwise.
template <class T>
void linear_into(const float* x, int64_t m, int64_t k, const T* wt, int64_t n, float* y) {
  if (m <= kSmallRows)
    gemv(x, m, k, wt, n, y);
  else
    prefill_into(x, m, k, wt, n, y);
}

}  // namespace ernie
