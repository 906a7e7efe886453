// CPU kernels for ernie_paddle's quantized linears (Paddle custom operators, built by quant_ops.py).
//
// Storage (see ernie_paddle/quant/linear.py, QuantLinear): method 0 = wint8, int8 Q [K, N], scale f32 [N];
// 1 = wint4, int8 [K/2, N] with k = 2p in the low and 2p + 1 in the high nibble, scale f32 [N];
// 2 = fp8, e4m3 bytes [K, N], scale f32 [ceil(K/B), ceil(N/B)] (W = q * S[k/B, n/B]).
//
// eqlinear_fused:   y [M, N] = x [M, K] @ W for a few rows of x (decode): every stored byte is read once,
//                   decoded in registers and accumulated in float32; column blocks run in parallel.
// eqlinear_dequant: float32 rows of a row slice of the storage (prefill: the caller multiplies); fp8 rows
//                   carry their block scales, wint8/wint4 rows are the integers (the caller scales the output).
#include <immintrin.h>
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "paddle/extension.h"

namespace {

constexpr int64_t kCols = 256;  // columns per block: accumulators of 8 rows x 256 floats stay in L1
constexpr int64_t kMaxRows = 8;

inline float fp8_e4m3(uint8_t b) {
  // Normal: (1 + M/8) 2^(E-7) -> float32 exponent E + 120. Subnormal (E = 0): M 2^-9. (0x7F/0xFF NaN
  // codes never come out of the quantizer; they decode as 480 here instead of NaN.)
  const uint32_t a = b & 0x7Fu, e = a >> 3, m = a & 7u;
  uint32_t bits = ((e + 120u) << 23) | (m << 20);
  float f;
  std::memcpy(&f, &bits, 4);
  const float sub = static_cast<float>(m) * (1.0f / 512.0f);
  f = e ? f : sub;
  return (b & 0x80u) ? -f : f;
}

// Decode n e4m3 bytes to float32. SIMD: the byte's 7 magnitude bits shifted left by 7 form an fp16 whose
// value is the e4m3 value times 2^-8, subnormals included (F16C converts fp16 subnormals exactly).
inline void decode_fp8(const uint8_t* src, float* dst, int64_t n) {
  int64_t j = 0;
#if defined(__AVX512F__)
  const __m256i m7f = _mm256_set1_epi16(0x7F), m80 = _mm256_set1_epi16(0x80);
  const __m512 k256 = _mm512_set1_ps(256.0f);
  for (; j + 16 <= n; j += 16) {
    const __m256i h = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j)));
    const __m256i f16 = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(h, m7f), 7),
                                        _mm256_slli_epi16(_mm256_and_si256(h, m80), 8));
    _mm512_storeu_ps(dst + j, _mm512_mul_ps(_mm512_cvtph_ps(f16), k256));
  }
#elif defined(__AVX2__) && defined(__F16C__)
  const __m128i m7f = _mm_set1_epi16(0x7F), m80 = _mm_set1_epi16(0x80);
  const __m256 k256 = _mm256_set1_ps(256.0f);
  for (; j + 8 <= n; j += 8) {
    const __m128i h = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + j)));
    const __m128i f16 = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(h, m7f), 7), _mm_slli_epi16(_mm_and_si128(h, m80), 8));
    _mm256_storeu_ps(dst + j, _mm256_mul_ps(_mm256_cvtph_ps(f16), k256));
  }
#endif
  for (; j < n; ++j) dst[j] = fp8_e4m3(src[j]);
}

struct Args {
  const float* x;
  int64_t m, k, n, block;
  const void* q;
  const float* scale;
  float* y;
};

template <int METHOD>
void fused_block(const Args& a, int64_t n0, int64_t cols) {
  float acc[kMaxRows][kCols];
  float part[kMaxRows][kCols];
  std::memset(acc, 0, sizeof(acc));
  const int64_t m = a.m, n = a.n;
  if (METHOD == 0) {
    const int8_t* q = static_cast<const int8_t*>(a.q);
    for (int64_t k = 0; k < a.k; ++k) {
      const int8_t* row = q + k * n + n0;
      for (int64_t r = 0; r < m; ++r) {
        const float xv = a.x[r * a.k + k];
        float* ac = acc[r];
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) ac[j] += xv * static_cast<float>(row[j]);
      }
    }
  } else if (METHOD == 1) {
    const int8_t* q = static_cast<const int8_t*>(a.q);
    for (int64_t p = 0; p < a.k / 2; ++p) {
      const int8_t* row = q + p * n + n0;
      for (int64_t r = 0; r < m; ++r) {
        const float xe = a.x[r * a.k + 2 * p], xo = a.x[r * a.k + 2 * p + 1];
        float* ac = acc[r];
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) {
          const int8_t b = row[j];
          const int8_t lo = static_cast<int8_t>(static_cast<int8_t>(b << 4) >> 4);
          const int8_t hi = static_cast<int8_t>(b >> 4);
          ac[j] += xe * static_cast<float>(lo) + xo * static_cast<float>(hi);
        }
      }
    }
  } else {
    const uint8_t* q = static_cast<const uint8_t*>(a.q);
    const int64_t nb = (n + a.block - 1) / a.block;
    float sv[kCols], w[kCols];
    for (int64_t k0 = 0; k0 < a.k; k0 += a.block) {
      const int64_t k1 = k0 + a.block < a.k ? k0 + a.block : a.k;
      std::memset(part, 0, sizeof(part));
      for (int64_t k = k0; k < k1; ++k) {
        decode_fp8(q + k * n + n0, w, cols);
        for (int64_t r = 0; r < m; ++r) {
          const float xv = a.x[r * a.k + k];
          float* pt = part[r];
#pragma omp simd
          for (int64_t j = 0; j < cols; ++j) pt[j] += xv * w[j];
        }
      }
      const float* srow = a.scale + (k0 / a.block) * nb;
      for (int64_t j = 0; j < cols; ++j) sv[j] = srow[(n0 + j) / a.block];
      for (int64_t r = 0; r < m; ++r)
        for (int64_t j = 0; j < cols; ++j) acc[r][j] += part[r][j] * sv[j];
    }
  }
  for (int64_t r = 0; r < m; ++r) {
    float* out = a.y + r * n + n0;
    if (METHOD == 2) {
      std::memcpy(out, acc[r], cols * sizeof(float));
    } else {
      for (int64_t j = 0; j < cols; ++j) out[j] = acc[r][j] * a.scale[n0 + j];
    }
  }
}

template <int METHOD>
void fused(const Args& a, int threads) {
  const int64_t blocks = (a.n + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t n0 = b * kCols;
    fused_block<METHOD>(a, n0, a.n - n0 < kCols ? a.n - n0 : kCols);
  }
}

}  // namespace

std::vector<paddle::Tensor> FusedForward(const paddle::Tensor& x, const paddle::Tensor& q, const paddle::Tensor& scale,
                                         int method, int block, int out_features, int threads) {
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32, "x must be float32");
  PD_CHECK(x.shape().size() == 2 && x.shape()[0] <= kMaxRows, "x must be [M <= 8, K]");
  const int64_t m = x.shape()[0], k = x.shape()[1], n = out_features;
  auto y = paddle::empty({m, n}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  Args a{x.data<float>(), m, k, n, block, q.data(), scale.data<float>(), y.data<float>()};
  if (method == 0) {
    PD_CHECK(q.numel() == k * n, "wint8 storage must be [K, N]");
    fused<0>(a, threads);
  } else if (method == 1) {
    PD_CHECK(q.numel() * 2 == k * n && k % 2 == 0, "wint4 storage must be [K/2, N]");
    fused<1>(a, threads);
  } else {
    PD_CHECK(method == 2 && q.numel() == k * n, "fp8 storage must be [K, N]");
    fused<2>(a, threads);
  }
  return {y};
}

std::vector<paddle::Tensor> DequantRows(const paddle::Tensor& q, const paddle::Tensor& scale, int method, int block,
                                        int out_features, int threads) {
  // q: a row slice of the storage (fp8: starting on a block boundary; scale: the matching scale rows).
  const int64_t n = out_features, stored = q.numel() / n, rows = method == 1 ? 2 * stored : stored;
  auto w = paddle::empty({rows, n}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  float* out = w.data<float>();
  const float* s = scale.data<float>();
  const int64_t nb = (n + block - 1) / block;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t r = 0; r < stored; ++r) {
    if (method == 0) {
      const int8_t* row = q.data<int8_t>() + r * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) out[r * n + j] = static_cast<float>(row[j]);
    } else if (method == 1) {
      const int8_t* row = q.data<int8_t>() + r * n;
      float* lo_out = out + 2 * r * n;
      float* hi_out = lo_out + n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const int8_t b = row[j];
        lo_out[j] = static_cast<float>(static_cast<int8_t>(static_cast<int8_t>(b << 4) >> 4));
        hi_out[j] = static_cast<float>(static_cast<int8_t>(b >> 4));
      }
    } else {
      const uint8_t* row = reinterpret_cast<const uint8_t*>(q.data()) + r * n;
      const float* srow = s + (r / block) * nb;
      decode_fp8(row, out + r * n, n);
      for (int64_t j = 0; j < n; ++j) out[r * n + j] *= srow[j / block];
    }
  }
  return {w};
}

PD_BUILD_OP(eqlinear_fused)
    .Inputs({"X", "Q", "Scale"})
    .Outputs({"Y"})
    .Attrs({"method: int", "block: int", "out_features: int", "threads: int"})
    .SetKernelFn(PD_KERNEL(FusedForward));

PD_BUILD_OP(eqlinear_dequant)
    .Inputs({"Q", "Scale"})
    .Outputs({"W"})
    .Attrs({"method: int", "block: int", "out_features: int", "threads: int"})
    .SetKernelFn(PD_KERNEL(DequantRows));
