// CPU operators of the exported step program (Paddle custom operators, built by predictor_ops.py): float32
// activations; linear and expert weights in any stored format of weight_formats.h (float32, bf16, wint8,
// wint4, fp8, wint2), decoded in registers by linear_kernels.h with float32 accumulation.
//
// Weights are stored transposed, W^T [N, K] (one output per contiguous row, like the embedding), so a
// decode step streams every weight once from memory in long runs. Each weight comes with four scale inputs
// S0..S3 (the format's, see weight_formats.h; unused ones get a dummy float32 [1], never read) and the
// attributes fmt (the format code) and int8_act (int8 activations for wint8/wint4; others ignore it).
//
// ernie_linear(x [..., K], wt, s0..s3; fmt, int8_act) -> [..., N]: up to kSmallRows rows run a streaming
//     GEMV (each row of W^T read once, up to 8 token rows per pass); more rows (prefill) call Paddle's
//     matmul (MKL) for float32 weights, the register-decoding kernel over blocks of 64 token rows otherwise.
// ernie_linear_add(x [..., K or 2K], wt, s0..s3, residual [..., N]; fmt, int8_act, swiglu) -> residual +
//     f(x) @ W^T, f the identity or SwiGLU of x's [gate | up] halves: the output projections with their add.
// ernie_moe_experts(x [T, H], ids [T, k], weights [T, k], up_gate [E, 2I, H], ug0..ug3, down [E, H, I],
//     d0..d3; fmt, int8_act) -> [T, H] (stacks in the stored form, scales with the leading expert axis):
//     sum over each token's chosen experts of weight * down(silu(gate) * up); only chosen experts run, each
//     expert's weights read once per call (moe_kernels.h: tokens grouped by expert, one parallel region),
//     and one operator replaces the per-expert conditional blocks of a traced loop.
// ernie_moe(x [..., H], gate [H, E], bias [1, E] (or a dummy), up_gate, ug0..ug3, down, d0..d3; k, norm_min,
//     act, use_bias, fmt, int8_act) -> out [..., H], ids [..., k] int64, weights [..., k]: the router
//     (router_kernels.h: models/moe.py's route, Paddle's topk ties included) and ernie_moe_experts in one
//     operator; out is the routed sum, ids and weights the routing (for tests; the program reads out only).
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
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "linear_kernels.h"
#include "moe_kernels.h"
#include "paddle/extension.h"
#include "router_kernels.h"
#include "stored_weights.h"

namespace {

using ernie::kSmallRows;
using ernie::Mat;
using ernie::WeightInputs;
using Tensor = paddle::Tensor;

// q . k for attention (float32 both sides) on the selected backend (``portable``: portable_requested(), read once
// per call: getenv per key and head cost 2% of a decode step).
inline float dot(const float* a, const float* b, int64_t k, bool portable) {
#ifdef ERNIE_HAVE_AVX2
  if (!portable) return ernie::dot<ernie::Avx2>(a, ernie::F32(b), k);
#endif
  return ernie::dot<ernie::Portable>(a, ernie::F32(b), k);
}

// y [m, w.n] = x [m, w.k] @ W^T for a validated matrix of format fmt.
void linear_any(int fmt, bool int8_act, const float* x, int64_t m, const Mat& w, float* y) {
  ernie::with_format(fmt, [&](auto tag) { ernie::linear_into<typename decltype(tag)::type>(x, m, w.k, w, y, int8_act); });
}

std::vector<int64_t> out_shape(const std::vector<int64_t>& x, int64_t n) {
  std::vector<int64_t> shape(x);
  shape.back() = n;
  return shape;
}

int64_t rows_of(const Tensor& t) { return t.shape().empty() ? 0 : t.shape()[0]; }

// The float32 activation x (contiguous) and its width, checked.
Tensor float_rows(const Tensor& x, const char* op) {
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32 && !x.shape().empty() && x.shape().back() > 0, op,
           ": X must be float32 [..., K] with K > 0; got ", phi::DataTypeToString(x.dtype()), " ",
           ernie::shape_text(x.shape()));
  return x.is_contiguous() ? x : x.contiguous();
}

}  // namespace

std::vector<Tensor> LinearForward(const Tensor& x, const Tensor& wt, const Tensor& s0, const Tensor& s1,
                                  const Tensor& s2, const Tensor& s3, int fmt, bool int8_act) {
  auto xc = float_rows(x, "ernie_linear");
  const int64_t k = x.shape().back(), m = x.numel() / k, n = rows_of(wt);
  const auto w = ernie::stored_weights("ernie_linear", fmt, WeightInputs{wt, s0, s1, s2, s3}, 0, n, k).first;
  if (m > kSmallRows && fmt == ernie::F32::kCode) {  // straight to MKL, no copy of the output
    auto out = paddle::experimental::matmul(paddle::experimental::reshape(xc, {m, k}), wt, false, true);
    return {paddle::experimental::reshape(out, out_shape(x.shape(), n))};
  }
  auto y = paddle::empty(out_shape(x.shape(), n), paddle::DataType::FLOAT32, paddle::CPUPlace());
  linear_any(fmt, int8_act, xc.data<float>(), m, w, y.data<float>());
  return {y};
}

std::vector<Tensor> LinearAddForward(const Tensor& x, const Tensor& wt, const Tensor& s0, const Tensor& s1,
                                     const Tensor& s2, const Tensor& s3, const Tensor& residual, int fmt,
                                     bool int8_act, bool swiglu) {
  auto xc = float_rows(x, "ernie_linear_add");
  const int64_t width = x.shape().back(), k = swiglu ? width / 2 : width, m = x.numel() / width, n = rows_of(wt);
  PD_CHECK(!swiglu || width % 2 == 0, "ernie_linear_add: X of SwiGLU must hold [gate | up], an even width; got ",
           width);
  const auto w = ernie::stored_weights("ernie_linear_add", fmt, WeightInputs{wt, s0, s1, s2, s3}, 0, n, k).first;
  PD_CHECK(residual.dtype() == paddle::DataType::FLOAT32 && residual.shape() == out_shape(x.shape(), n),
           "ernie_linear_add: Residual must be float32 ", ernie::shape_text(out_shape(x.shape(), n)), "; got ",
           phi::DataTypeToString(residual.dtype()), " ", ernie::shape_text(residual.shape()));
  std::vector<float> act;
  const float* in = xc.data<float>();
  if (swiglu) {
    act.resize(m * k);
    ernie::swiglu_rows(in, m, k, act.data());
    in = act.data();
  }
  auto rc = residual.is_contiguous() ? residual : residual.contiguous();
  auto y = paddle::empty(residual.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  float* yp = y.data<float>();
  linear_any(fmt, int8_act, in, m, w, yp);
  const float* rp = rc.data<float>();
#pragma omp simd
  for (int64_t i = 0; i < m * n; ++i) yp[i] += rp[i];
  return {y};
}

namespace {

// y [t, h] (zeros on entry) = the routed experts of tokens x [t, h] for their ids and weights [t, top].
void experts_into(const char* op, const float* x, int64_t t, int64_t h, const int64_t* ids, const float* weights,
                  int64_t top, const Tensor& ug, const Tensor& ug0, const Tensor& ug1, const Tensor& ug2,
                  const Tensor& ug3, const Tensor& down, const Tensor& d0, const Tensor& d1, const Tensor& d2,
                  const Tensor& d3, int fmt, bool int8_act, float* y) {
  PD_CHECK(ug.shape().size() == 3 && ug.shape()[1] % 2 == 0, op, ": UG must be a stack [E, 2I, ...]; got ",
           ernie::shape_text(ug.shape()));
  const int64_t experts = ug.shape()[0], two_i = ug.shape()[1], inter = two_i / 2;
  const auto up_gate = ernie::stored_weights(std::string(op) + ": UG", fmt, WeightInputs{ug, ug0, ug1, ug2, ug3},
                                             experts, two_i, h);
  const auto down_w = ernie::stored_weights(std::string(op) + ": D", fmt, WeightInputs{down, d0, d1, d2, d3},
                                            experts, h, inter);
  const auto route = ernie::route_tokens(ids, weights, t, top, experts);
  const ernie::MoeCall call{x, t, h, inter, top, up_gate, down_w, route, int8_act, y};
  ernie::with_format(fmt, [&](auto tag) { ernie::experts_with<typename decltype(tag)::type>(call); });
}

}  // namespace

std::vector<Tensor> MoeExpertsForward(const Tensor& x, const Tensor& ids, const Tensor& weights, const Tensor& ug,
                                      const Tensor& ug0, const Tensor& ug1, const Tensor& ug2, const Tensor& ug3,
                                      const Tensor& down, const Tensor& d0, const Tensor& d1, const Tensor& d2,
                                      const Tensor& d3, int fmt, bool int8_act) {
  auto xc = float_rows(x, "ernie_moe_experts");
  PD_CHECK(x.shape().size() == 2, "ernie_moe_experts: X must be [T, H]; got ", ernie::shape_text(x.shape()));
  const int64_t t = x.shape()[0], h = x.shape()[1];
  PD_CHECK(ids.dtype() == paddle::DataType::INT64 && ids.shape().size() == 2 && ids.shape()[0] == t,
           "ernie_moe_experts: Ids must be int64 [T, k] with T = ", t);
  PD_CHECK(weights.dtype() == paddle::DataType::FLOAT32 && weights.shape() == ids.shape(),
           "ernie_moe_experts: Weights must be float32 ", ernie::shape_text(ids.shape()));
  const auto idc = ids.is_contiguous() ? ids : ids.contiguous();
  const auto wc = weights.is_contiguous() ? weights : weights.contiguous();
  auto y = paddle::full({t, h}, 0.0, paddle::DataType::FLOAT32, paddle::CPUPlace());
  experts_into("ernie_moe_experts", xc.data<float>(), t, h, idc.data<int64_t>(), wc.data<float>(), ids.shape()[1],
               ug, ug0, ug1, ug2, ug3, down, d0, d1, d2, d3, fmt, int8_act, y.data<float>());
  return {y};
}

std::vector<Tensor> MoeForward(const Tensor& x, const Tensor& gate, const Tensor& bias, const Tensor& ug,
                               const Tensor& ug0, const Tensor& ug1, const Tensor& ug2, const Tensor& ug3,
                               const Tensor& down, const Tensor& d0, const Tensor& d1, const Tensor& d2,
                               const Tensor& d3, int k, float norm_min, const std::string& act, bool use_bias, int fmt,
                               bool int8_act) {
  auto xc = float_rows(x, "ernie_moe");
  const int64_t h = x.shape().back(), t = x.numel() / h;
  PD_CHECK(gate.dtype() == paddle::DataType::FLOAT32 && gate.shape().size() == 2 && gate.shape()[0] == h,
           "ernie_moe: Gate must be float32 [", h, ", E]; got ", phi::DataTypeToString(gate.dtype()), " ",
           ernie::shape_text(gate.shape()));
  const int64_t experts = gate.shape()[1];
  PD_CHECK(ug.shape().size() == 3 && ug.shape()[0] == experts, "ernie_moe: UG must stack the gate's ", experts,
           " experts; got ", ernie::shape_text(ug.shape()));
  PD_CHECK(k >= 1 && k <= experts, "ernie_moe: k must be 1 .. ", experts, "; got ", k);
  PD_CHECK(act == "softmax" || act == "sigmoid", "ernie_moe: act must be softmax or sigmoid; got ", act);
  PD_CHECK(!use_bias || (bias.dtype() == paddle::DataType::FLOAT32 && bias.numel() == experts),
           "ernie_moe: Bias must be float32 with ", experts, " values; got ", ernie::shape_text(bias.shape()));
  const auto gc = gate.is_contiguous() ? gate : gate.contiguous();
  const auto bc = bias.is_contiguous() ? bias : bias.contiguous();
  auto ids = paddle::empty(out_shape(x.shape(), k), paddle::DataType::INT64, paddle::CPUPlace());
  auto weights = paddle::empty(out_shape(x.shape(), k), paddle::DataType::FLOAT32, paddle::CPUPlace());
  ernie::route_rows({xc.data<float>(), t, h, gc.data<float>(), experts, use_bias ? bc.data<float>() : nullptr, k,
                     norm_min, act == "sigmoid", ids.data<int64_t>(), weights.data<float>()});
  auto y = paddle::full(x.shape(), 0.0, paddle::DataType::FLOAT32, paddle::CPUPlace());
  experts_into("ernie_moe", xc.data<float>(), t, h, ids.data<int64_t>(), weights.data<float>(), k, ug, ug0, ug1,
               ug2, ug3, down, d0, d1, d2, d3, fmt, int8_act, y.data<float>());
  return {y, ids, weights};
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
  const bool portable = ernie::portable_requested();
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
          p[si] = seen ? dot(qrow, keys + si * hd, hd, portable) * scale : neg;
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


#define SHAPE const std::vector<int64_t>&
#define DTYPE const paddle::DataType&

std::vector<std::vector<int64_t>> LinearShape(SHAPE x, SHAPE wt, SHAPE, SHAPE, SHAPE, SHAPE, int, bool) {
  return {out_shape(x, wt.empty() ? 0 : wt[0])};
}

std::vector<std::vector<int64_t>> LinearAddShape(SHAPE, SHAPE, SHAPE, SHAPE, SHAPE, SHAPE, SHAPE residual, int, bool,
                                                 bool) {
  return {residual};
}

std::vector<std::vector<int64_t>> MoeShape(SHAPE x, SHAPE, SHAPE, SHAPE, SHAPE, SHAPE, SHAPE, SHAPE, SHAPE, SHAPE,
                                           SHAPE, SHAPE, SHAPE, int, bool) {
  return {x};
}

std::vector<std::vector<int64_t>> MoeRoutedShape(SHAPE x, SHAPE, SHAPE, SHAPE, SHAPE, SHAPE, SHAPE, SHAPE, SHAPE,
                                                 SHAPE, SHAPE, SHAPE, SHAPE, int k, float, const std::string&, bool, int,
                                                 bool) {
  return {x, out_shape(x, k), out_shape(x, k)};
}

std::vector<paddle::DataType> Float32Linear(DTYPE, DTYPE, DTYPE, DTYPE, DTYPE, DTYPE) {
  return {paddle::DataType::FLOAT32};
}

std::vector<paddle::DataType> Float32LinearAdd(DTYPE, DTYPE, DTYPE, DTYPE, DTYPE, DTYPE, DTYPE) {
  return {paddle::DataType::FLOAT32};
}

std::vector<paddle::DataType> Float32Moe(DTYPE, DTYPE, DTYPE, DTYPE, DTYPE, DTYPE, DTYPE, DTYPE, DTYPE, DTYPE, DTYPE,
                                         DTYPE, DTYPE) {
  return {paddle::DataType::FLOAT32};
}

std::vector<paddle::DataType> MoeRoutedDtypes(DTYPE, DTYPE, DTYPE, DTYPE, DTYPE, DTYPE, DTYPE, DTYPE, DTYPE, DTYPE,
                                              DTYPE, DTYPE, DTYPE) {
  return {paddle::DataType::FLOAT32, paddle::DataType::INT64, paddle::DataType::FLOAT32};
}

std::vector<std::vector<int64_t>> SameShape(SHAPE x, SHAPE) { return {x}; }

std::vector<paddle::DataType> Float32(DTYPE, DTYPE) { return {paddle::DataType::FLOAT32}; }

PD_BUILD_OP(ernie_linear)
    .Inputs({"X", "WT", "S0", "S1", "S2", "S3"})
    .Outputs({"Out"})
    .Attrs({"fmt: int", "int8_act: bool"})
    .SetKernelFn(PD_KERNEL(LinearForward))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Float32Linear));

PD_BUILD_OP(ernie_linear_add)
    .Inputs({"X", "WT", "S0", "S1", "S2", "S3", "Residual"})
    .Outputs({"Out"})
    .Attrs({"fmt: int", "int8_act: bool", "swiglu: bool"})
    .SetKernelFn(PD_KERNEL(LinearAddForward))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearAddShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Float32LinearAdd));

PD_BUILD_OP(ernie_moe_experts)
    .Inputs({"X", "Ids", "Weights", "UG", "UG0", "UG1", "UG2", "UG3", "D", "D0", "D1", "D2", "D3"})
    .Outputs({"Out"})
    .Attrs({"fmt: int", "int8_act: bool"})
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

PD_BUILD_OP(ernie_moe)
    .Inputs({"X", "Gate", "Bias", "UG", "UG0", "UG1", "UG2", "UG3", "D", "D0", "D1", "D2", "D3"})
    .Outputs({"Out", "Ids", "Weights"})
    .Attrs({"k: int", "norm_min: float", "act: std::string", "use_bias: bool", "fmt: int", "int8_act: bool"})
    .SetKernelFn(PD_KERNEL(MoeForward))
    .SetInferShapeFn(PD_INFER_SHAPE(MoeRoutedShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(MoeRoutedDtypes));
