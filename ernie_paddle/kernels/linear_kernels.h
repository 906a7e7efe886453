// y [m, n] = x [m, k] @ W^T for a stored weight matrix (weight_formats.h) with float32 activations and
// float32 accumulation. Written once over a vector backend V and a format F.
//
// Decode (m <= kSmallRows): a streaming GEMV, each weight row read from memory once and decoded in
// registers; up to 3 token rows: each weight row decoded once for all of them (dot_rows, a row's result the
// same whatever rows come with it); more: the weight rows of each 4-row tile are decoded once per k-block
// into an L1 buffer and every token row passes over it. Prefill (more rows): Paddle's matmul (MKL) on float32
// weights; other formats the packed-panel GEMM of gemm_kernels.h over blocks of token rows (the tiles take the
// output rows past its last full panel).
//
// int8 activation mode (int8_act, formats with kInt8: wint8, wint4), for decode and prefill alike: each
// activation row is quantized per block b of 32 values to int8 with scale xs_b = absmax_b / 127 (round to
// nearest even; a block under 127 * FLT_MIN counts as zero), and y[n] = S0[n] * sum_b xs_b * (integer dot of
// the block), the integer dots exact (vectors.h idot32). Error bound against the float32 mode's exact value
// x @ W^T: |y - y_ref| <= sum_b 0.5 * xs_b * sum_{k in b} |W[n, k]| (plus float32 rounding), since each
// activation moves by at most half a step. From 4 token rows on, 4 x 4 tiles (itile) over 4 weight rows whose
// integer units are decoded once into a buffer: prefill, one thread, 3072 x 1024, 32 rows: wint4 1.5x and
// wint8 1.6x the per-row passes (about 70 GMAC/s per core), bit for bit the same values.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#include "paddle/extension.h"
#include "gemm_kernels.h"
#include "weight_formats.h"

namespace ernie {

constexpr int64_t kSmallRows = 8;
constexpr int64_t kBlock = 512;  // k per pass of the tiles (a multiple of every kGroup): 4 rows = 8 KB
constexpr int64_t kChunk = 64;  // output rows per work item (a multiple of 4: the 4 x 2 tiles)
constexpr int64_t kPrefillRows = 64;  // token rows per pass over the weights in prefill (non-float32)
constexpr int64_t kRowsKernelRows = 3;  // up to this many token rows: dot_rows; more: the 4 x 2 tiles

// A 64-byte aligned scratch array (the per-call activation copies: aligned vector loads).
template <class T>
struct Scratch {
  std::unique_ptr<T, void (*)(void*)> data;
  explicit Scratch(int64_t count)
      : data(static_cast<T*>(std::aligned_alloc(64, (count * sizeof(T) + 63) / 64 * 64 + 64)), std::free) {
    if (data == nullptr) throw std::bad_alloc();
  }
  T* get() const { return data.get(); }
};

// out[r] = dot(x row r, row f) over k for R token rows (x rows ldx apart), the weight row decoded once per
// unit for all R: per row four independent accumulators per scale group (so loads stream at full speed), the
// group's partial sum times its group scale, the scalar tail, then the row scale. Each row's arithmetic is the
// same for every R, so a row's result does not depend on the rows decoded with it.
template <class V, int R, class F>
inline void dot_rows(const float* xp, int64_t ldx, const F& f, int64_t k, float* out) {
  using Reg = typename V::R;
  const int64_t units = k / kUnit;
  const int64_t per = F::kGroup > 0 ? F::kGroup / kUnit : std::max<int64_t>(units, 1);
  Reg total[R];
  for (int r = 0; r < R; ++r) total[r] = V::zero();
  for (int64_t u0 = 0; u0 < units; u0 += per) {
    const int64_t u1 = std::min(units, u0 + per);
    Reg a[R][4];
    for (int r = 0; r < R; ++r) a[r][0] = a[r][1] = a[r][2] = a[r][3] = V::zero();
    for (int64_t u = u0; u < u1; ++u) {
      Reg w[4];
      f.unit(u, w);
      for (int r = 0; r < R; ++r) {
        const float* xu = xp + r * ldx + kUnit * u;
        for (int v = 0; v < 4; ++v) a[r][v] = V::fmadd(V::load8(xu + 8 * v), w[v], a[r][v]);
      }
    }
    for (int r = 0; r < R; ++r) {
      const Reg part = V::add(V::add(a[r][0], a[r][1]), V::add(a[r][2], a[r][3]));
      if constexpr (F::kGroup > 0)
        total[r] = V::fmadd(part, V::set1(f.group_scale(u0 * kUnit / F::kGroup)), total[r]);
      else
        total[r] = part;
    }
  }
  for (int r = 0; r < R; ++r) {
    float s = V::hsum(total[r]);
    for (int64_t i = units * kUnit; i < k; ++i) s = std::fma(xp[r * ldx + i], scaled_at(f, i), s);
    out[r] = F::kRowScale ? s * f.row_scale() : s;
  }
}

template <class V, class F>
inline float dot(const float* xp, const F& f, int64_t k) {
  float out;
  dot_rows<V, 1>(xp, k, f, k, &out);
  return out;
}

// buf [len] = the values k0 .. k0 + len of row f with their group scales (unit order; k0 a multiple of kBlock).
template <class V, class F>
void decode_span(const F& f, int64_t k0, int64_t len, float* buf) {
  const int64_t u0 = k0 / kUnit, u1 = (k0 + len) / kUnit;
  for (int64_t u = u0; u < u1; ++u) {
    typename V::R w[4];
    f.unit(u, w);
    float* out = buf + (u - u0) * kUnit;
    for (int v = 0; v < 4; ++v) {
      if constexpr (F::kGroup > 0) w[v] = V::mul(w[v], V::set1(f.group_scale(u * kUnit / F::kGroup)));
      V::store8(out + 8 * v, w[v]);
    }
  }
  for (int64_t i = u1 * kUnit; i < k0 + len; ++i) buf[i - k0] = scaled_at(f, i);
}

// y[r, n], y[r + 1, n] for four weight rows n .. n + 3 (float32, or bf16 bits widened in registers) and two
// token rows r, r + 1 (r + 1 < m, or xb = xa): eight accumulators, six loads per eight FMAs, so batched
// decode is not bound by loads.
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
      s[j] = std::fma(xa[i], element(w[j][i]), s[j]);
      s[4 + j] = std::fma(xb[i], element(w[j][i]), s[4 + j]);
    }
  for (int j = 0; j < 4; ++j) ya[j] += s[j];
  if (yb != ya)
    for (int j = 0; j < 4; ++j) yb[j] += s[4 + j];
}

// y[r, n] (row stride ldy) for the m <= kRowsKernelRows token rows of weight row f: one dot_rows pass.
template <class V, class F>
void dot_rows_any(const float* xp, int64_t m, int64_t k, const F& f, float* y, int64_t ldy) {
  float out[kRowsKernelRows];
  if (m == 1) dot_rows<V, 1>(xp, k, f, k, out);
  if (m == 2) dot_rows<V, 2>(xp, k, f, k, out);
  if (m == 3) dot_rows<V, 3>(xp, k, f, k, out);
  for (int64_t r = 0; r < m; ++r) y[r * ldy] = out[r];
}

// y[r, n] = dot(xp[r, :], W[n, :]) for output rows n0 .. n1 and token rows r < m. Up to kRowsKernelRows
// token rows: one sequential stream of weight rows, each decoded in registers once for all token rows
// (dot_rows; at 2 and 3 rows, one thread, 1024 x 1024: bf16, wint8, wint4 and fp8 1.5-3x the tiles'
// speed, wint2 1.1-1.9x, float32 equal; at 4 rows float32 and wint2 were slower, so 4 and more keep the
// tiles); more: 4 x 2 register tiles over the four weight rows decoded once per k-block into an L1 buffer
// and read from there for every token row. Past kSmallRows token rows the full panels of output rows go
// through gemm_range first (prefill), the tiles take the rest. float32 rows are read in place, and bf16 rows up to kSmallRows
// token rows (widened in registers per pair of rows: faster at 4-8 rows); past that bf16 is widened into the
// buffer once per block like the other formats (prefill, one thread, 3072 x 1024: 1.2-1.3x at 32-64 rows,
// about 1.4x at two threads; the same products in the same order, so the same bits).
template <class V, class F>
void gemv_range(const float* xp, int64_t m, int64_t k, const Mat& w, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  int64_t n = n0;
  if constexpr (!std::is_same_v<F, F32>) {
    if (m > kSmallRows) n = gemm_range<V, F>(xp, m, k, w, n0, n1, y, ldy);  // prefill: full panels of rows
  }
  if (m <= kRowsKernelRows) {
    for (; n < n1; ++n) dot_rows_any<V>(xp, m, k, F(w, n), y + n, ldy);
    return;
  }
  const bool in_place = F::kDirect && (std::is_same_v<F, F32> || m <= kSmallRows);
  alignas(32) float buf[4 * kBlock];
  for (; n + 4 <= n1; n += 4) {
    const F f[4] = {F(w, n), F(w, n + 1), F(w, n + 2), F(w, n + 3)};
    for (int64_t r = 0; r < m; ++r) std::fill(y + r * ldy + n, y + r * ldy + n + 4, 0.0f);
    for (int64_t k0 = 0; k0 < k; k0 += kBlock) {  // the 4 weight rows' block and x's stay in L1
      const int64_t len = std::min(kBlock, k - k0);
      if (!in_place)
        for (int j = 0; j < 4; ++j) decode_span<V>(f[j], k0, len, buf + j * kBlock);
      for (int64_t r = 0; r < m; r += 2) {
        const int64_t r2 = r + 1 < m ? r + 1 : r;
        float *ya = y + r * ldy + n, *yb = y + r2 * ldy + n;
        if constexpr (F::kDirect) {
          if (in_place) {
            tile4x2<V>(xp + r * k + k0, xp + r2 * k + k0, len, f[0].p + k0, k, ya, yb);
            continue;
          }
        }
        tile4x2<V>(xp + r * k + k0, xp + r2 * k + k0, len, buf, kBlock, ya, yb);
      }
    }
    if constexpr (F::kRowScale)
      for (int64_t r = 0; r < m; ++r)
        for (int j = 0; j < 4; ++j) y[r * ldy + n + j] *= f[j].row_scale();
  }
  for (; n < n1; ++n) {
    const F f(w, n);
    for (int64_t r = 0; r < m; ++r) y[r * ldy + n] = dot<V>(xp + r * k, f, k);
  }
}

// The GEMV over all n: each thread one contiguous run of kChunk-row chunks (a static schedule: in the
// predictor, dynamic hand-out of chunks measured 1.7x slower).
template <class V, class F>
void gemv_with(const float* xp, int64_t m, int64_t k, const Mat& w, float* y) {
  const int64_t chunks = (w.n + kChunk - 1) / kChunk;
  const int threads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), chunks));
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t c = 0; c < chunks; ++c)
    gemv_range<V, F>(xp, m, k, w, c * kChunk, std::min(w.n, (c + 1) * kChunk), y, w.n);
}

template <class F>
void gemv(const float* xp, int64_t m, int64_t k, const Mat& w, float* y) {
#ifdef ERNIE_HAVE_AVX2
  if (!portable_requested()) return gemv_with<Avx2, F>(xp, m, k, w, y);
#endif
  gemv_with<Portable, F>(xp, m, k, w, y);
}

// Int8 activation rows (the int8 mode), in the format's unit order (so a block holds the same 32 values
// either way): q [m, k] int8, s [m, blocks] block scales, and for formats with an offset (F::kOffset) c
// [m, blocks, 8] per full block the lane offsets -kOffset x (the sum of each lane's four q), the init of
// vectors.h idot32u.
inline int64_t blocks_of(int64_t k) { return (k + kUnit - 1) / kUnit; }  // 32-value blocks of a row

struct QRows {
  const int8_t* q;
  const float* s;
  const int32_t* c;
  int64_t k;
  int64_t blocks() const { return blocks_of(k); }
  QRows row(int64_t r) const { return {q + r * k, s + r * blocks(), c + r * blocks() * 8, k}; }
};

// The buffers of `rows` int8 activation rows of width k; quantize(x, m, r0, offset) fills rows r0 .. r0 + m:
// scale xs_b = absmax_b / 127 per 32-value block (a block under 127 * FLT_MIN counts as zero), values rounded to
// nearest even.
struct QBuffers {
  Scratch<int8_t> q;
  Scratch<float> s;
  Scratch<int32_t> c;
  int64_t k;
  QBuffers(int64_t rows, int64_t k)
      : q(rows * k), s(rows * blocks_of(k)), c(rows * blocks_of(k) * 8), k(k) {}
  QRows rows(int64_t r0) const { return QRows{q.get(), s.get(), c.get(), k}.row(r0); }
  void quantize(const float* x, int64_t m, int64_t r0, int offset) {
    const int64_t blocks = blocks_of(k);
    for (int64_t r = r0; r < r0 + m; ++r) {
      const float* xr = x + (r - r0) * k;
      int8_t* qr = q.get() + r * k;
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t lo = b * kUnit, hi = std::min(k, (b + 1) * kUnit);
        float amax = 0.0f;
#pragma omp simd reduction(max : amax)
        for (int64_t i = lo; i < hi; ++i) amax = std::max(amax, std::fabs(xr[i]));
        float d = amax / 127.0f;
        d = d >= FLT_MIN ? d : 0.0f;
        const float inv = d > 0.0f ? 1.0f / d : 0.0f;
        s.get()[r * blocks + b] = d;
#pragma omp simd
        for (int64_t i = lo; i < hi; ++i)
          qr[i] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, std::nearbyint(xr[i] * inv))));
        if (offset > 0 && hi - lo == kUnit)
          for (int j = 0; j < 8; ++j) {
            const int8_t* lane = qr + lo + 4 * j;
            c.get()[(r * blocks + b) * 8 + j] = -offset * (lane[0] + lane[1] + lane[2] + lane[3]);
          }
      }
    }
  }
};

// The int8-mode dots of R quantized activation rows (x.row(0 .. R)) and weight row f, the unit decoded once for
// all R: per 32-value block the exact integer dot (idot32, or idot32u over the unsigned bytes with the lane
// offsets: the same integers) times the block's scale, into four accumulators per row (units 4j + v into
// accumulator v, the last units % 4 into the first), then the row scale. A row's arithmetic is the same for
// every R.
template <class V, int R, class F>
inline void idot_rows(const QRows& x, const F& f, float* out) {
  using Reg = typename V::R;
  const int64_t k = x.k, units = k / kUnit, blocks = x.blocks();
  Reg a[R][4];
  for (int r = 0; r < R; ++r) a[r][0] = a[r][1] = a[r][2] = a[r][3] = V::zero();
  auto unit = [&](int64_t u, int v) {  // unit u into the accumulators v
    typename V::B w;
    if constexpr (F::kOffset > 0) {
      f.unit_u8(u, &w);
      for (int r = 0; r < R; ++r)
        a[r][v] = V::fmadd(V::idot32u(x.q + r * k + kUnit * u, w, x.c + (r * blocks + u) * 8),
                           V::set1(x.s[r * blocks + u]), a[r][v]);
    } else {
      f.unit_i8(u, &w);
      for (int r = 0; r < R; ++r)
        a[r][v] = V::fmadd(V::idot32(x.q + r * k + kUnit * u, w), V::set1(x.s[r * blocks + u]), a[r][v]);
    }
  };
  int64_t u = 0;
  for (; u + 4 <= units; u += 4)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) unit(u + v, v);
  for (; u < units; ++u) unit(u, 0);
  for (int r = 0; r < R; ++r) {
    float s = V::hsum(V::add(V::add(a[r][0], a[r][1]), V::add(a[r][2], a[r][3])));
    if (units * kUnit < k) {
      int32_t tail = 0;
      for (int64_t i = units * kUnit; i < k; ++i) tail += x.q[r * k + i] * static_cast<int32_t>(f.at(i));
      s = std::fma(x.s[r * blocks + units], static_cast<float>(tail), s);
    }
    out[r] = s * f.row_scale();
  }
}

// The int8-mode dots of kITileRows quantized activation rows (x.row(0 ..)) and the kITileRows weight rows f[]
// whose units lie decoded in buf (row j's unit u at (j * units + u) * kUnit): out[r * ldo + j] = idot_rows'
// value for row r and weight row j, bit for bit. The same fused multiply-adds in the same order per
// accumulator: accumulator v takes units v, v + 4, ... of the full groups of four (and accumulator 0 then the
// last units % 4), so the loop runs once per accumulator over the 16 (row, weight row) pairs in registers.
constexpr int64_t kITileRows = 4;  // weight rows and token rows of an int8 tile

template <class V, class F>
void itile(const QRows& x, const F* f, const int8_t* buf, float* out, int64_t ldo) {
  using Reg = typename V::R;
  constexpr int T = kITileRows;
  const int64_t k = x.k, units = k / kUnit, blocks = x.blocks(), full = units / 4 * 4;
  Reg part[4][T][T];  // [accumulator][weight row][token row]
  for (int v = 0; v < 4; ++v) {
    Reg a[T][T];
    for (int j = 0; j < T; ++j)
      for (int r = 0; r < T; ++r) a[j][r] = V::zero();
    auto unit = [&](int64_t u) {
      typename V::B w[T];
      for (int j = 0; j < T; ++j) std::memcpy(&w[j], buf + (j * units + u) * kUnit, kUnit);
      for (int r = 0; r < T; ++r) {
        const int8_t* xq = x.q + r * k + kUnit * u;
        const Reg xs = V::set1(x.s[r * blocks + u]);
        for (int j = 0; j < T; ++j) {
          if constexpr (F::kOffset > 0)
            a[j][r] = V::fmadd(V::idot32u(xq, w[j], x.c + (r * blocks + u) * 8), xs, a[j][r]);
          else
            a[j][r] = V::fmadd(V::idot32(xq, w[j]), xs, a[j][r]);
        }
      }
    };
    for (int64_t u = v; u < full; u += 4) unit(u);
    if (v == 0)
      for (int64_t u = full; u < units; ++u) unit(u);
    for (int j = 0; j < T; ++j)
      for (int r = 0; r < T; ++r) part[v][j][r] = a[j][r];
  }
  for (int j = 0; j < T; ++j)
    for (int r = 0; r < T; ++r) {
      float s = V::hsum(V::add(V::add(part[0][j][r], part[1][j][r]), V::add(part[2][j][r], part[3][j][r])));
      if (units * kUnit < k) {
        int32_t tail = 0;
        for (int64_t i = units * kUnit; i < k; ++i) tail += x.q[r * k + i] * static_cast<int32_t>(f[j].at(i));
        s = std::fma(x.s[r * blocks + units], static_cast<float>(tail), s);
      }
      out[r * ldo + j] = s * f[j].row_scale();
    }
}

// The units of weight row f as int8 bytes (unsigned with the offset for F::kOffset formats) into buf.
template <class V, class F>
void decode_units(const F& f, int64_t units, int8_t* buf) {
  for (int64_t u = 0; u < units; ++u) {
    typename V::B w;
    if constexpr (F::kOffset > 0)
      f.unit_u8(u, &w);
    else
      f.unit_i8(u, &w);
    std::memcpy(buf + u * kUnit, &w, kUnit);
  }
}

// y[r, n] (row stride ldy) in the int8 mode for output rows n0 .. n1 and token rows r < m. At least
// kITileRows token rows: the units of each kITileRows weight rows decoded once into a per-thread buffer and
// every full group of kITileRows token rows passes over it (itile); the other rows and weight rows: each
// weight row read from memory once, decoded once per pass of up to kRowsKernelRows token rows. Every value
// is idot_rows' for its row, whichever path computes it.
template <class V, class F>
void igemv_range(const QRows& x, int64_t m, const Mat& w, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  float out[kRowsKernelRows];
  auto rows_of = [&](const F& f, int64_t n, int64_t r0) {
    for (int64_t r = r0; r < m; r += kRowsKernelRows) {
      const int64_t rows = std::min(kRowsKernelRows, m - r);
      const QRows q = x.row(r);
      if (rows == 1) idot_rows<V, 1>(q, f, out);
      if (rows == 2) idot_rows<V, 2>(q, f, out);
      if (rows == 3) idot_rows<V, 3>(q, f, out);
      for (int64_t j = 0; j < rows; ++j) y[(r + j) * ldy + n] = out[j];
    }
  };
  int64_t n = n0;
  if (m >= kITileRows) {
    const int64_t units = x.k / kUnit, tiled = m / kITileRows * kITileRows;
    thread_local std::vector<int8_t> buf;
    buf.resize(kITileRows * units * kUnit);
    for (; n + kITileRows <= n1; n += kITileRows) {
      const F f[kITileRows] = {F(w, n), F(w, n + 1), F(w, n + 2), F(w, n + 3)};
      for (int64_t j = 0; j < kITileRows; ++j) decode_units<V, F>(f[j], units, buf.data() + j * units * kUnit);
      for (int64_t r = 0; r < tiled; r += kITileRows) itile<V, F>(x.row(r), f, buf.data(), y + r * ldy + n, ldy);
      for (int64_t j = 0; j < kITileRows; ++j) rows_of(f[j], n + j, tiled);
    }
  }
  for (; n < n1; ++n) rows_of(F(w, n), n, 0);
}

// y [m, n] (row stride n) in the int8 mode: each thread a run of kChunk weight rows.
template <class V, class F>
void igemv_with(const QRows& x, int64_t m, const Mat& w, float* y) {
  const int64_t chunks = (w.n + kChunk - 1) / kChunk;
  const int threads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), chunks));
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t c = 0; c < chunks; ++c)
    igemv_range<V, F>(x, m, w, c * kChunk, std::min(w.n, (c + 1) * kChunk), y, w.n);
}

template <class F>
void int8_linear_into(const float* xp, int64_t m, int64_t k, const Mat& w, float* y) {
  QBuffers q(m, k);
  q.quantize(xp, m, 0, F::kOffset);
  for (int64_t r0 = 0; r0 < m; r0 += kPrefillRows) {  // prefill: the weights pass once per block of rows
    const int64_t rows = std::min(kPrefillRows, m - r0);
#ifdef ERNIE_HAVE_AVX2
    if (!portable_requested()) {
      igemv_with<Avx2, F>(q.rows(r0), rows, w, y + r0 * w.n);
      continue;
    }
#endif
    igemv_with<Portable, F>(q.rows(r0), rows, w, y + r0 * w.n);
  }
}

// y [m, n] = x [m, k] @ W^T into y (contiguous); int8_act: the int8 activation mode (wint8, wint4; other
// formats ignore it). Few rows: the GEMV. Prefill: float32 weights through
// Paddle's matmul (MKL); other formats the GEMV's tiles over blocks of kPrefillRows token rows, so each
// thread's kChunk weight rows stay in cache while every token row of the block passes over them.
// (Widening tiles into a float32 block for MKL measured 1.5-7x slower at 2 threads, see issue 16.)
template <class F>
void linear_into(const float* x, int64_t m, int64_t k, const Mat& w, float* y, bool int8_act) {
  if constexpr (std::is_same_v<F, F32>) {
    if (m > kSmallRows) {
      auto xt = paddle::from_blob(const_cast<float*>(x), {m, k}, paddle::DataType::FLOAT32);
      auto wv = paddle::from_blob(const_cast<void*>(w.q), {w.n, k}, paddle::DataType::FLOAT32);
      auto out = paddle::experimental::matmul(xt, wv, false, true);
      std::memcpy(y, out.data<float>(), sizeof(float) * m * w.n);
      return;
    }
  }
  Scratch<float> permuted(F::kPermuted ? m * k : 0);
  const float* xp = x;
  if constexpr (F::kPermuted) {
    permute_rows<F>(x, m, k, permuted.get());
    xp = permuted.get();
  }
  if constexpr (F::kInt8) {
    if (int8_act) return int8_linear_into<F>(xp, m, k, w, y);
  }
  for (int64_t r0 = 0; r0 < m; r0 += kPrefillRows)
    gemv<F>(xp + r0 * k, std::min(kPrefillRows, m - r0), k, w, y + r0 * w.n);
}

}  // namespace ernie
