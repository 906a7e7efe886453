// CPU operators of the exported step program (Paddle custom operators, built by predictor_ops.py), float32.
//
// Weights are stored transposed, W^T [N, K] (one output per contiguous row, like the embedding), so a
// decode step streams every weight once from memory in long runs.
//
// ernie_linear(x [..., K], wt [N, K]) -> [..., N]: up to kSmallRows rows run a streaming GEMV (each row
//     of W^T read once, up to 8 token rows per pass); more rows (prefill) call Paddle's matmul (MKL).
// ernie_linear_add(x [..., K or 2K], wt [N, K], residual [..., N]; swiglu) -> residual + f(x) @ wt^T, f the
//     identity or SwiGLU of x's [gate | up] halves: the output projections with their residual add.
// ernie_moe_experts(x [T, H], ids [T, k], weights [T, k], up_gate_t [E, 2I, H], down_t [E, H, I]) -> [T, H]:
//     sum over each token's chosen experts of weight * down(silu(gate) * up); only chosen experts run, and
//     one operator replaces the per-expert conditional blocks of a traced loop.
// ernie_rms_norm(x [..., H], w [H]; eps) -> w * x * rsqrt(mean(x^2) + eps).
// ernie_attention(q [B, T, nh, hd], kv [L, 2, B, nkv, C, hd], key_mask [B, S] int64, start [1] int64; layer)
//     -> [B, T, nh * hd]: softmax(q k^T / sqrt(hd) + mask) v over the first S = start + T cached columns of
//     the layer's keys/values, query head h reading kv head h / (nh / nkv); a key is visible when it is a
//     real token (key_mask) at or before the query's column (causal). One operator for the dozen reshapes,
//     slices, matmuls and softmax of the traced attention.
// ernie_rope_kv(qkv [B, T, (nh + 2 nkv) hd], cos2 [B, T, 1, hd], sin2 [B, T, 1, hd], start [1], kv; nh,
//     layer) -> q [B, T, nh, hd], kv (in place): the fused projection cut into heads, rotary embedding on q
//     and k (x * cos + rotate_pairs(x) * sin, pairs (2i, 2i + 1)); k and v written straight into the
//     layer's KV columns start .. start + T (the buffer the runner shares with the predictor).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "paddle/extension.h"

namespace {

constexpr int64_t kSmallRows = 8;
constexpr int64_t kBlock = 512;  // k per pass of the batched tiles: 4 weight rows + 8 token rows = 24 KB
constexpr int64_t kChunk = 64;  // output rows per work item (a multiple of 4: the 4 x 2 tiles)

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// dot(a, b) over k floats: four independent accumulators, so loads of b stream at full speed.
inline float dot(const float* a, const float* b, int64_t k) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  for (; i + 8 <= k; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float s = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < k; ++i) s += a[i] * b[i];
  return s;
}

// y[r, n], y[r + 1, n] for four weight rows n .. n + 3 and two token rows r, r + 1 (r + 1 < m, or xb = xa):
// eight accumulators, six loads per eight FMAs, so batched decode is not bound by loads.
void tile4x2(const float* xa, const float* xb, int64_t k, const float* w0, int64_t ldw, float* ya, float* yb) {
  const float *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    const __m256 v0 = _mm256_loadu_ps(w0 + i), v1 = _mm256_loadu_ps(w1 + i);
    const __m256 v2 = _mm256_loadu_ps(w2 + i), v3 = _mm256_loadu_ps(w3 + i);
    const __m256 xv = _mm256_loadu_ps(xa + i), xw = _mm256_loadu_ps(xb + i);
    a0 = _mm256_fmadd_ps(xv, v0, a0);
    a1 = _mm256_fmadd_ps(xv, v1, a1);
    a2 = _mm256_fmadd_ps(xv, v2, a2);
    a3 = _mm256_fmadd_ps(xv, v3, a3);
    b0 = _mm256_fmadd_ps(xw, v0, b0);
    b1 = _mm256_fmadd_ps(xw, v1, b1);
    b2 = _mm256_fmadd_ps(xw, v2, b2);
    b3 = _mm256_fmadd_ps(xw, v3, b3);
  }
  float s[8] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3), hsum(b0), hsum(b1), hsum(b2), hsum(b3)};
  for (; i < k; ++i) {
    s[0] += xa[i] * w0[i];
    s[1] += xa[i] * w1[i];
    s[2] += xa[i] * w2[i];
    s[3] += xa[i] * w3[i];
    s[4] += xb[i] * w0[i];
    s[5] += xb[i] * w1[i];
    s[6] += xb[i] * w2[i];
    s[7] += xb[i] * w3[i];
  }
  for (int j = 0; j < 4; ++j) ya[j] += s[j];
  if (yb != ya)
    for (int j = 0; j < 4; ++j) yb[j] += s[4 + j];
}

// y[r, n] = dot(x[r, :], wt[n, :]) for output rows n0 .. n1 and token rows r < m. One token row: one
// sequential stream of weight rows (measured fastest); more: 4 x 2 register tiles, the four weight rows
// read from memory once and from L1 for the other token rows.
void gemv_range(const float* x, int64_t m, int64_t k, const float* wt, int64_t n0, int64_t n1, float* y,
                int64_t ldy) {
  int64_t n = n0;
  if (m > 1) {
    for (; n + 4 <= n1; n += 4) {
      for (int64_t r = 0; r < m; ++r) std::fill(y + r * ldy + n, y + r * ldy + n + 4, 0.0f);
      for (int64_t k0 = 0; k0 < k; k0 += kBlock) {  // the 4 weight rows' block and x's stay in L1
        const int64_t len = std::min(kBlock, k - k0);
        for (int64_t r = 0; r < m; r += 2) {
          const bool two = r + 1 < m;
          tile4x2(x + r * k + k0, x + (two ? r + 1 : r) * k + k0, len, wt + n * k + k0, k, y + r * ldy + n,
                  y + (two ? r + 1 : r) * ldy + n);
        }
      }
    }
  }
  for (; n < n1; ++n)
    for (int64_t r = 0; r < m; ++r) y[r * ldy + n] = dot(x + r * k, wt + n * k, k);
}

// The GEMV over all n: each thread one contiguous run of kChunk-row chunks (a static schedule: in the
// predictor, dynamic hand-out of chunks measured 1.7x slower).
void gemv(const float* x, int64_t m, int64_t k, const float* wt, int64_t n, float* y) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int threads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), chunks));
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t c = 0; c < chunks; ++c) gemv_range(x, m, k, wt, c * kChunk, std::min(n, (c + 1) * kChunk), y, n);
}

// y [m, n] = x [m, k] @ wt[n, k]^T into y (contiguous): GEMV for few rows, Paddle's matmul otherwise.
void linear_into(const float* x, int64_t m, int64_t k, const float* wt, int64_t n, float* y) {
  if (m <= kSmallRows) {
    gemv(x, m, k, wt, n, y);
    return;
  }
  auto xt = paddle::from_blob(const_cast<float*>(x), {m, k}, paddle::DataType::FLOAT32);
  auto wv = paddle::from_blob(const_cast<float*>(wt), {n, k}, paddle::DataType::FLOAT32);
  auto out = paddle::experimental::matmul(xt, wv, false, true);
  std::memcpy(y, out.data<float>(), sizeof(float) * m * n);
}

// out [rows, inter] = silu(gate) * up for h [rows, 2 inter] holding [gate | up].
void swiglu_rows(const float* h, int64_t rows, int64_t inter, float* out) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* g = h + i * 2 * inter;
    for (int64_t j = 0; j < inter; ++j) out[i * inter + j] = g[j] / (1.0f + std::exp(-g[j])) * g[inter + j];
  }
}

std::vector<int64_t> out_shape(const std::vector<int64_t>& x, int64_t n) {
  std::vector<int64_t> shape(x);
  shape.back() = n;
  return shape;
}

}  // namespace

std::vector<paddle::Tensor> LinearForward(const paddle::Tensor& x, const paddle::Tensor& wt) {
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32 && wt.dtype() == paddle::DataType::FLOAT32,
           "ernie_linear: float32 only");
  const int64_t k = x.shape().back(), n = wt.shape()[0];
  PD_CHECK(wt.shape().size() == 2 && wt.shape()[1] == k, "ernie_linear: wt must be [N, K]");
  const int64_t m = x.numel() / k;
  auto xc = x.is_contiguous() ? x : x.contiguous();
  if (m > kSmallRows) {  // straight to MKL, no copy of the output
    auto out = paddle::experimental::matmul(paddle::experimental::reshape(xc, {m, k}), wt, false, true);
    return {paddle::experimental::reshape(out, out_shape(x.shape(), n))};
  }
  auto y = paddle::empty(out_shape(x.shape(), n), paddle::DataType::FLOAT32, paddle::CPUPlace());
  gemv(xc.data<float>(), m, k, wt.data<float>(), n, y.data<float>());
  return {y};
}

std::vector<paddle::Tensor> LinearAddForward(const paddle::Tensor& x, const paddle::Tensor& wt,
                                             const paddle::Tensor& residual, bool swiglu) {
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32 && residual.dtype() == paddle::DataType::FLOAT32,
           "ernie_linear_add: float32 only");
  const int64_t n = wt.shape()[0], k = wt.shape()[1], width = x.shape().back();
  PD_CHECK(width == (swiglu ? 2 * k : k) && residual.shape().back() == n, "ernie_linear_add: shapes");
  const int64_t m = x.numel() / width;
  PD_CHECK(residual.numel() == m * n, "ernie_linear_add: residual shape");
  auto xc = x.is_contiguous() ? x : x.contiguous();
  std::vector<float> act;
  const float* in = xc.data<float>();
  if (swiglu) {
    act.resize(m * k);
    swiglu_rows(in, m, k, act.data());
    in = act.data();
  }
  auto rc = residual.is_contiguous() ? residual : residual.contiguous();
  auto y = paddle::empty(residual.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  float* yp = y.data<float>();
  linear_into(in, m, k, wt.data<float>(), n, yp);
  const float* rp = rc.data<float>();
#pragma omp simd
  for (int64_t i = 0; i < m * n; ++i) yp[i] += rp[i];
  return {y};
}

std::vector<paddle::Tensor> MoeExpertsForward(const paddle::Tensor& x, const paddle::Tensor& ids,
                                              const paddle::Tensor& weights, const paddle::Tensor& up_gate_t,
                                              const paddle::Tensor& down_t) {
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32 && weights.dtype() == paddle::DataType::FLOAT32,
           "ernie_moe_experts: float32 x and weights");
  PD_CHECK(ids.dtype() == paddle::DataType::INT64, "ernie_moe_experts: int64 ids");
  const int64_t t = x.shape()[0], h = x.shape()[1], top = ids.shape()[1];
  const int64_t experts = up_gate_t.shape()[0], two_i = up_gate_t.shape()[1], inter = two_i / 2;
  PD_CHECK(up_gate_t.shape()[2] == h && down_t.shape()[0] == experts && down_t.shape()[1] == h &&
               down_t.shape()[2] == inter, "ernie_moe_experts: expert weight shapes do not match");
  auto xc = x.is_contiguous() ? x : x.contiguous();
  const float* xp = xc.data<float>();
  const int64_t* idp = ids.data<int64_t>();
  const float* wp = weights.data<float>();
  auto y = paddle::full({t, h}, 0.0, paddle::DataType::FLOAT32, paddle::CPUPlace());
  float* yp = y.data<float>();
  std::vector<std::vector<std::pair<int64_t, float>>> rows(experts);  // (token, weight) per expert
  for (int64_t r = 0; r < t; ++r)
    for (int64_t j = 0; j < top; ++j) {
      const int64_t e = idp[r * top + j];
      PD_CHECK(e >= 0 && e < experts, "ernie_moe_experts: expert id out of range");
      rows[e].emplace_back(r, wp[r * top + j]);
    }
  std::vector<float> xe, hid, act, out;
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t c = static_cast<int64_t>(rows[e].size());
    if (c == 0) continue;
    xe.resize(c * h);
    hid.resize(c * two_i);
    act.resize(c * inter);
    out.resize(c * h);
    for (int64_t i = 0; i < c; ++i) std::memcpy(&xe[i * h], xp + rows[e][i].first * h, sizeof(float) * h);
    linear_into(xe.data(), c, h, up_gate_t.data<float>() + e * two_i * h, two_i, hid.data());
    swiglu_rows(hid.data(), c, inter, act.data());
    linear_into(act.data(), c, inter, down_t.data<float>() + e * h * inter, h, out.data());
    for (int64_t i = 0; i < c; ++i) {
      float* dst = yp + rows[e][i].first * h;
      const float w = rows[e][i].second;
      for (int64_t j = 0; j < h; ++j) dst[j] += w * out[i * h + j];
    }
  }
  return {y};
}

std::vector<paddle::Tensor> RmsNormForward(const paddle::Tensor& x, const paddle::Tensor& w, float eps) {
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32, "ernie_rms_norm: float32 only");
  const int64_t h = x.shape().back(), rows = x.numel() / h;
  auto xc = x.is_contiguous() ? x : x.contiguous();
  auto y = paddle::empty(x.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* xp = xc.data<float>();
  const float* wp = w.data<float>();
  float* yp = y.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = xp + r * h;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < h; ++j) ss += a[j] * a[j];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(h) + eps);
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) yp[r * h + j] = wp[j] * (a[j] * inv);
  }
  return {y};
}

std::vector<paddle::Tensor> AttentionForward(const paddle::Tensor& q, const paddle::Tensor& kv,
                                             const paddle::Tensor& key_mask, const paddle::Tensor& start, int layer) {
  PD_CHECK(q.dtype() == paddle::DataType::FLOAT32 && kv.dtype() == paddle::DataType::FLOAT32,
           "ernie_attention: float32 only");
  const int64_t b = q.shape()[0], t = q.shape()[1], nh = q.shape()[2], hd = q.shape()[3];
  const int64_t nkv = kv.shape()[3], cap = kv.shape()[4], s_len = key_mask.shape()[1];
  const int64_t first = start.data<int64_t>()[0];
  PD_CHECK(kv.shape()[2] == b && kv.shape()[5] == hd && nh % nkv == 0, "ernie_attention: kv shape");
  PD_CHECK(s_len == first + t && s_len <= cap && layer < kv.shape()[0], "ernie_attention: key length");
  auto qc = q.is_contiguous() ? q : q.contiguous();
  const float* qp = qc.data<float>();
  const float* kvp = kv.data<float>();
  const int64_t* km = key_mask.data<int64_t>();
  auto out = paddle::empty({b, t, nh * hd}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  float* op = out.data<float>();
  const int64_t groups = nh / nkv, plane = nkv * cap * hd;  // one (layer, k|v, batch row) block
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float neg = -std::numeric_limits<float>::max();  // the program's NEG_INF
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t h = 0; h < nh; ++h) {
      const float* keys = kvp + ((layer * 2 + 0) * b + bi) * plane + (h / groups) * cap * hd;
      const float* vals = kvp + ((layer * 2 + 1) * b + bi) * plane + (h / groups) * cap * hd;
      std::vector<float> p(s_len);
      for (int64_t ti = 0; ti < t; ++ti) {
        const float* qrow = qp + ((bi * t + ti) * nh + h) * hd;
        float top = neg;
        for (int64_t si = 0; si < s_len; ++si) {
          const bool seen = si <= first + ti && km[bi * s_len + si] > 0;
          p[si] = seen ? dot(qrow, keys + si * hd, hd) * scale : neg;
          top = std::max(top, p[si]);
        }
        float sum = 0.0f;
        for (int64_t si = 0; si < s_len; ++si) sum += (p[si] = std::exp(p[si] - top));
        float* o = op + ((bi * t + ti) * nh + h) * hd;
        std::fill(o, o + hd, 0.0f);
        for (int64_t si = 0; si < s_len; ++si) {
          if (p[si] == 0.0f) continue;
          const float w = p[si] / sum;
          const float* v = vals + si * hd;
#pragma omp simd
          for (int64_t j = 0; j < hd; ++j) o[j] += w * v[j];
        }
      }
    }
  return {out};
}

std::vector<paddle::Tensor> RopeKvForward(const paddle::Tensor& qkv, const paddle::Tensor& cos2,
                                          const paddle::Tensor& sin2, const paddle::Tensor& start, paddle::Tensor& kv,
                                          int nh, int layer) {
  PD_CHECK(qkv.dtype() == paddle::DataType::FLOAT32 && kv.dtype() == paddle::DataType::FLOAT32,
           "ernie_rope_kv: float32 only");
  const int64_t b = qkv.shape()[0], t = qkv.shape()[1], hd = cos2.shape().back();
  const int64_t nkv = kv.shape()[3], cap = kv.shape()[4], first = start.data<int64_t>()[0];
  PD_CHECK(qkv.shape()[2] == (nh + 2 * nkv) * hd && cos2.numel() == b * t * hd && sin2.numel() == b * t * hd &&
               kv.shape()[2] == b && kv.shape()[5] == hd && first + t <= cap && layer < kv.shape()[0],
           "ernie_rope_kv: shapes");
  auto src = qkv.is_contiguous() ? qkv : qkv.contiguous();
  auto q = paddle::empty({b, t, nh, hd}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* xp = src.data<float>();
  const float* cp = cos2.data<float>();
  const float* sp = sin2.data<float>();
  float* kvp = kv.data<float>();
  const int64_t heads = nh + 2 * nkv, plane = nkv * cap * hd;
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t ti = 0; ti < t; ++ti) {
      const float* row = xp + (bi * t + ti) * heads * hd;
      const float* c = cp + (bi * t + ti) * hd;
      const float* sn = sp + (bi * t + ti) * hd;
      for (int64_t h = 0; h < heads; ++h) {
        const float* x = row + h * hd;
        const int64_t part = h < nh + nkv ? 0 : 1, kvh = h < nh + nkv ? h - nh : h - nh - nkv;
        float* dst = h < nh ? q.data<float>() + ((bi * t + ti) * nh + h) * hd
                            : kvp + ((layer * 2 + part) * b + bi) * plane + (kvh * cap + first + ti) * hd;
        if (part == 1) {
          std::memcpy(dst, x, hd * sizeof(float));
          continue;
        }
        for (int64_t j = 0; j < hd; j += 2) {
          dst[j] = x[j] * c[j] + (-x[j + 1]) * sn[j];
          dst[j + 1] = x[j + 1] * c[j + 1] + x[j] * sn[j + 1];
        }
      }
    }
  return {q};
}

std::vector<std::vector<int64_t>> RopeKvShape(const std::vector<int64_t>& qkv, const std::vector<int64_t>& cos2,
                                              const std::vector<int64_t>&, const std::vector<int64_t>&,
                                              const std::vector<int64_t>& kv, int nh, int) {
  return {{qkv[0], qkv[1], nh, cos2.back()}, kv};
}

std::vector<paddle::DataType> Float32RopeKv(const paddle::DataType&, const paddle::DataType&, const paddle::DataType&,
                                            const paddle::DataType&, const paddle::DataType&) {
  return {paddle::DataType::FLOAT32, paddle::DataType::FLOAT32};
}

std::vector<std::vector<int64_t>> AttentionShape(const std::vector<int64_t>& q, const std::vector<int64_t>&,
                                                 const std::vector<int64_t>&, const std::vector<int64_t>&) {
  return {{q[0], q[1], q[2] * q[3]}};
}

std::vector<paddle::DataType> Float32Attention(const paddle::DataType&, const paddle::DataType&,
                                               const paddle::DataType&, const paddle::DataType&) {
  return {paddle::DataType::FLOAT32};
}

std::vector<std::vector<int64_t>> LinearShape(const std::vector<int64_t>& x, const std::vector<int64_t>& wt) {
  return {out_shape(x, wt[0])};
}

std::vector<std::vector<int64_t>> LinearAddShape(const std::vector<int64_t>&, const std::vector<int64_t>&,
                                                 const std::vector<int64_t>& residual, bool) {
  return {residual};
}

std::vector<paddle::DataType> Float32LinearAdd(const paddle::DataType&, const paddle::DataType&,
                                               const paddle::DataType&) {
  return {paddle::DataType::FLOAT32};
}

std::vector<std::vector<int64_t>> MoeShape(const std::vector<int64_t>& x, const std::vector<int64_t>&,
                                           const std::vector<int64_t>&, const std::vector<int64_t>&,
                                           const std::vector<int64_t>&) {
  return {x};
}

std::vector<std::vector<int64_t>> SameShape(const std::vector<int64_t>& x, const std::vector<int64_t>&) {
  return {x};
}

std::vector<paddle::DataType> Float32(const paddle::DataType&, const paddle::DataType&) {
  return {paddle::DataType::FLOAT32};
}

std::vector<paddle::DataType> Float32Moe(const paddle::DataType&, const paddle::DataType&, const paddle::DataType&,
                                         const paddle::DataType&, const paddle::DataType&) {
  return {paddle::DataType::FLOAT32};
}

PD_BUILD_OP(ernie_linear)
    .Inputs({"X", "WT"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(LinearForward))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Float32));

PD_BUILD_OP(ernie_linear_add)
    .Inputs({"X", "WT", "Residual"})
    .Outputs({"Out"})
    .Attrs({"swiglu: bool"})
    .SetKernelFn(PD_KERNEL(LinearAddForward))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearAddShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Float32LinearAdd));

PD_BUILD_OP(ernie_moe_experts)
    .Inputs({"X", "Ids", "Weights", "UpGateT", "DownT"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(MoeExpertsForward))
    .SetInferShapeFn(PD_INFER_SHAPE(MoeShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Float32Moe));

PD_BUILD_OP(ernie_rms_norm)
    .Inputs({"X", "W"})
    .Outputs({"Out"})
    .Attrs({"eps: float"})
    .SetKernelFn(PD_KERNEL(RmsNormForward))
    .SetInferShapeFn(PD_INFER_SHAPE(SameShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Float32));

PD_BUILD_OP(ernie_attention)
    .Inputs({"Q", "KV", "KeyMask", "Start"})
    .Outputs({"Out"})
    .Attrs({"layer: int"})
    .SetKernelFn(PD_KERNEL(AttentionForward))
    .SetInferShapeFn(PD_INFER_SHAPE(AttentionShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Float32Attention));

PD_BUILD_OP(ernie_rope_kv)
    .Inputs({"QKV", "Cos2", "Sin2", "Start", "KV"})
    .Outputs({"Q", "KVOut"})
    .Attrs({"nh: int", "layer: int"})
    .SetInplaceMap({{"KV", "KVOut"}})
    .SetKernelFn(PD_KERNEL(RopeKvForward))
    .SetInferShapeFn(PD_INFER_SHAPE(RopeKvShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Float32RopeKv));
