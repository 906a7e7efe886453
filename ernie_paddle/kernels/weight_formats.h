// The stored weight formats of the kernel library and their decode in registers, per backend.
//
// Every weight is stored in kernel form: transposed, W^T [N, K], one output per row (bytes exact; the
// codes are the `fmt` attribute of the operators, see predictor_ops.cc):
//   0 float32  [N, K] float32                      W = w
//   1 bf16     [N, K] bf16 bits                    W = widen(w)
//   2 wint8    [N, K] int8, S0 f32 [N]             W = q * S0[n]
//   3 wint4    [N, K/2] bytes, S0 f32 [N]          byte j: low nibble k = 2j, high nibble k = 2j + 1 (-8..7)
//   4 fp8      [N, K] e4m3 bytes, S0 f32 [ceil(N/128), ceil(K/128)]      W = e4m3(q) * S0[n/128, k/128]
//   5 wint2    [N, K/4] bytes, S0 u8 [N, ceil(K/128)] local scales (byte g/2: high nibble even 64-group g,
//              low odd g), S1 super scale, S2 code scale, S3 code zero point (f32 [N] each); byte j holds
//              k = 4j + s: c = floor(b * S2 + S3 + 0.5) (float32: mul, add, add), q = ((c >> 9 - 3s) & 63) - 32,
//              W = q * nibble(k / 64) * S1[n] (quant/wint2.py's reference, transposed).
//
// A format is a small struct built per weight row n (F(mat, n)) that the kernels of linear_kernels.h are
// written over:
//   unit(u, w)      the 32 values of decode unit u as four vectors (one overload per backend); lane j of
//                   vector v is k = unit_k(u, 8v + j). Formats that pack several k per byte permute the
//                   unit (wint4: evens then odds; wint2: k = 4i + s in vector s) and the kernels permute the
//                   activation row once per call the same way, so each decoded lane meets its x.
//   at(k)           the scalar value at k (row tails, and the portable decode lane by lane)
//   group_scale(g)  the scale of k-group g (kGroup values; fp8 blocks, wint2 64-groups), applied to the
//                   partial sums of the group; row_scale() the per-row scale applied to the finished dot.
//   unit_i8(u, b)   (wint8) the unit's 32 values as int8 in the same order, for the int8 activation mode
//                   (linear_kernels.h); formats with kOffset (wint4: 8; wint8: 128 where dpbusd exists) give
//                   unit_u8(u, b) instead, the values plus kOffset as unsigned bytes (fewer instructions: see
//                   vectors.h idot32u). Both: kInt8.
// Values of at/unit are the stored integers (fp8: the e4m3 value * 2^-8, which F16C decodes exactly; its
// group scale carries the 2^8). Every decode is exact, so Avx2 and Portable give identical results.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "vectors.h"

namespace ernie {

constexpr int64_t kUnit = 32;  // k values per decode unit: four 8-lane vectors

// One stored weight matrix W^T [n, k] in kernel form (a linear, or one expert of a stack).
struct Mat {
  const void* q = nullptr;  // the stored rows
  const void* s0 = nullptr;  // the format's scales (see the table above)
  const float* s1 = nullptr;
  const float* s2 = nullptr;
  const float* s3 = nullptr;
  int64_t n = 0, k = 0;
};

inline float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// The float value of a stored element the tiles read in place: float32, or bf16 bits.
inline float element(float v) { return v; }
inline float element(uint16_t v) { return bits_to_float(static_cast<uint32_t>(v) << 16); }

// Defaults of a format: no scales, no permutation.
struct FormatDefaults {
  static constexpr int kOffset = 0;  // > 0: has unit_u8, the int8 values + kOffset as unsigned bytes
  static constexpr int64_t kGroup = 0;  // k per group scale; 0: none
  static constexpr bool kRowScale = false;
  static constexpr bool kPermuted = false;
  static constexpr bool kDirect = false;  // the tiles read the stored rows in place (float32, bf16 bits)
  static constexpr bool kInt8 = false;  // has unit_i8 (or unit_u8): the int8 activation mode applies
  static int64_t unit_k(int64_t u, int j) { return kUnit * u + j; }
  static float group_scale(int64_t) { return 1.0f; }
  static float row_scale() { return 1.0f; }
};

// The portable decode of any format: lane by lane through at().
template <class F>
inline void unit_lanes(const F& f, int64_t u, Portable::R* w) {
  for (int v = 0; v < 4; ++v)
    for (int j = 0; j < 8; ++j) w[v].v[j] = f.at(F::unit_k(u, 8 * v + j));
}

struct F32 : FormatDefaults {
  static constexpr int kCode = 0;
  static constexpr bool kDirect = true;
  const float* p;
  F32(const Mat& w, int64_t n) : p(static_cast<const float*>(w.q) + n * w.k) {}
  explicit F32(const float* row) : p(row) {}
  float at(int64_t k) const { return p[k]; }
  void unit(int64_t u, Portable::R* w) const { unit_lanes(*this, u, w); }
#ifdef ERNIE_HAVE_AVX2
  void unit(int64_t u, __m256* w) const {
    for (int v = 0; v < 4; ++v) w[v] = _mm256_loadu_ps(p + kUnit * u + 8 * v);
  }
#endif
};

struct Bf16 : FormatDefaults {  // the high half of a float32: widening is a 16-bit shift, exact
  static constexpr int kCode = 1;
  static constexpr bool kDirect = true;
  const uint16_t* p;
  Bf16(const Mat& w, int64_t n) : p(static_cast<const uint16_t*>(w.q) + n * w.k) {}
  float at(int64_t k) const { return bits_to_float(static_cast<uint32_t>(p[k]) << 16); }
  void unit(int64_t u, Portable::R* w) const { unit_lanes(*this, u, w); }
#ifdef ERNIE_HAVE_AVX2
  void unit(int64_t u, __m256* w) const {
    for (int v = 0; v < 4; ++v) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + kUnit * u + 8 * v));
      w[v] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
  }
#endif
};

struct Wint8 : FormatDefaults {
  static constexpr int kCode = 2;
  static constexpr bool kRowScale = true;
  static constexpr bool kInt8 = true;
#ifdef ERNIE_HAVE_VNNI
  static constexpr int kOffset = 128;  // unit_u8: w + 128 (0..255), which only dpbusd multiplies exactly
#endif
  const int8_t* p;
  float scale;
  Wint8(const Mat& w, int64_t n) : p(static_cast<const int8_t*>(w.q) + n * w.k), scale(static_cast<const float*>(w.s0)[n]) {}
  float at(int64_t k) const { return static_cast<float>(p[k]); }
  float row_scale() const { return scale; }
  void unit(int64_t u, Portable::R* w) const { unit_lanes(*this, u, w); }
#ifdef ERNIE_HAVE_AVX2
  void unit(int64_t u, __m256* w) const {  // one sign-extending load (vpmovsxbd) per 8 values
    for (int v = 0; v < 4; ++v)
      w[v] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + kUnit * u + 8 * v))));
  }
  void unit_i8(int64_t u, __m256i* b) const { *b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + kUnit * u)); }
  void unit_u8(int64_t u, __m256i* b) const {  // w + 128 = w xor 0x80 as unsigned bytes
    *b = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + kUnit * u)), _mm256_set1_epi8(-128));
  }
#endif
  void unit_i8(int64_t u, Portable::B* b) const { std::memcpy(b->v, p + kUnit * u, kUnit); }
  void unit_u8(int64_t u, Portable::B* b) const {
    for (int j = 0; j < kUnit; ++j) b->v[j] = static_cast<int8_t>(p[kUnit * u + j] ^ 0x80);
  }
};

struct Wint4 : FormatDefaults {
  static constexpr int kCode = 3;
  static constexpr bool kRowScale = true;
  static constexpr bool kInt8 = true;
  static constexpr bool kPermuted = true;
  static constexpr int kOffset = 8;  // unit_u8: the stored nibble, w + 8 (0..15)
  const uint8_t* p;
  float scale;
  Wint4(const Mat& w, int64_t n)
      : p(static_cast<const uint8_t*>(w.q) + n * (w.k / 2)), scale(static_cast<const float*>(w.s0)[n]) {}
  // unit position j < 16: k = 2j (low nibbles of the unit's 16 bytes); j >= 16: k = 2(j - 16) + 1
  static int64_t unit_k(int64_t u, int j) { return kUnit * u + (j < 16 ? 2 * j : 2 * (j - 16) + 1); }
  static int nibble(uint8_t b, int64_t k) { return (((k & 1) ? b >> 4 : b & 15) ^ 8) - 8; }
  float at(int64_t k) const { return static_cast<float>(nibble(p[k >> 1], k)); }
  float row_scale() const { return scale; }
  void unit(int64_t u, Portable::R* w) const { unit_lanes(*this, u, w); }
  void unit_u8(int64_t u, Portable::B* b) const {
    for (int j = 0; j < kUnit; ++j) b->v[j] = static_cast<int8_t>(nibble(p[unit_k(u, j) >> 1], unit_k(u, j)) + kOffset);
  }
#ifdef ERNIE_HAVE_AVX2
  // unsigned: w + 8 = the nibble (two's complement w) xor 8, both nibbles of a byte flipped at once (0x88)
  void unit_u8(int64_t u, __m256i* b) const {
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * u));
    const __m256i v = _mm256_broadcastsi128_si256(_mm_xor_si128(q, _mm_set1_epi8(static_cast<char>(0x88))));
    *b = _mm256_and_si256(_mm256_blend_epi32(v, _mm256_srli_epi16(v, 4), 0xF0), _mm256_set1_epi8(15));
  }
  // float32: each byte zero-extended into a 32-bit lane (vpmovzxbd); a nibble v becomes the float
  // 2^23 + (v ^ 8) by or-ing in 2^23's exponent (one xor: v's bits lie below it), minus 2^23 + 8: the
  // signed value (v ^ 8) - 8, exact, with no integer-to-float conversion.
  void unit(int64_t u, __m256* w) const {
    const __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 16 * u)));
    const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 16 * u + 8)));
    const __m256i low = _mm256_set1_epi32(15), magic = _mm256_set1_epi32(0x4B000008);
    const __m256 bias = _mm256_set1_ps(8388616.0f);  // 2^23 + 8
    auto value = [&](__m256i v) { return _mm256_sub_ps(_mm256_castsi256_ps(_mm256_xor_si256(v, magic)), bias); };
    w[0] = value(_mm256_and_si256(a, low));
    w[1] = value(_mm256_and_si256(b, low));
    w[2] = value(_mm256_srli_epi32(a, 4));
    w[3] = value(_mm256_srli_epi32(b, 4));
  }
#endif
};

struct Fp8 : FormatDefaults {
  static constexpr int kCode = 4;
  static constexpr int64_t kBlock = 128;  // the scale grid's block, both axes
  static constexpr int64_t kGroup = kBlock;
  const uint8_t* p;
  const float* scales;  // this row's block-row of S0
  Fp8(const Mat& w, int64_t n)
      : p(static_cast<const uint8_t*>(w.q) + n * w.k),
        scales(static_cast<const float*>(w.s0) + (n / kBlock) * ((w.k + kBlock - 1) / kBlock)) {}
  // e4m3 * 2^-8, exact: normal (1 + M/8) 2^(E-15) is float32 exponent E + 112; subnormal M 2^-17. (The NaN
  // codes 0x7F/0xFF, which the loaders refuse, decode as 1.875 like F16C's.)
  static float decode(uint8_t b) {
    const uint32_t a = b & 0x7Fu, e = a >> 3, m = a & 7u;
    const float f = e ? bits_to_float(((e + 112u) << 23) | (m << 20)) : static_cast<float>(m) * (1.0f / 131072.0f);
    return (b & 0x80u) ? -f : f;
  }
  float at(int64_t k) const { return decode(p[k]); }
  float group_scale(int64_t g) const { return scales[g] * 256.0f; }
  void unit(int64_t u, Portable::R* w) const { unit_lanes(*this, u, w); }
#ifdef ERNIE_HAVE_AVX2
  // Each byte in the high half of a 16-bit lane (unpack with zero), shifted right by one (arithmetic) and
  // bit 14 cleared: sign at 15, the 7 magnitude bits at 13..7, the fp16 of e4m3 * 2^-8 (subnormals included).
  void unit(int64_t u, __m256* w) const {
    const __m128i zero = _mm_setzero_si128(), keep = _mm_set1_epi16(static_cast<int16_t>(0xBFFF));
    for (int h = 0; h < 2; ++h) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + kUnit * u + 16 * h));
      w[2 * h] = _mm256_cvtph_ps(_mm_and_si128(_mm_srai_epi16(_mm_unpacklo_epi8(zero, b), 1), keep));
      w[2 * h + 1] = _mm256_cvtph_ps(_mm_and_si128(_mm_srai_epi16(_mm_unpackhi_epi8(zero, b), 1), keep));
    }
  }
#endif
};

struct Wint2 : FormatDefaults {
  static constexpr int kCode = 5;
  static constexpr int64_t kGroup = 64;
  static constexpr bool kRowScale = true;
  static constexpr bool kPermuted = true;
  const uint8_t* p;
  const uint8_t* local;  // this row's local scale bytes
  float super_scale, code_scale, code_zp;
  Wint2(const Mat& w, int64_t n)
      : p(static_cast<const uint8_t*>(w.q) + n * (w.k / 4)),
        local(static_cast<const uint8_t*>(w.s0) + n * ((w.k + 127) / 128)),
        super_scale(w.s1[n]), code_scale(w.s2[n]), code_zp(w.s3[n]) {}
  static int64_t unit_k(int64_t u, int j) { return kUnit * u + 4 * (j & 7) + (j >> 3); }
  int32_t code(uint8_t b) const {  // float32 mul, add, add (never fused), as numpy computes it
    float c = static_cast<float>(b) * code_scale;
    c = c + code_zp;
    c = c + 0.5f;
    return static_cast<int32_t>(std::floor(c));
  }
  float at(int64_t k) const {
    return static_cast<float>(((code(p[k >> 2]) >> (9 - 3 * (k & 3))) & 0x3F) - 32);
  }
  float group_scale(int64_t g) const {
    const uint8_t b = local[g >> 1];
    return static_cast<float>((g & 1) ? b & 15 : b >> 4);
  }
  float row_scale() const { return super_scale; }
  void unit(int64_t u, Portable::R* w) const { unit_lanes(*this, u, w); }
#ifdef ERNIE_HAVE_AVX2
  void unit(int64_t u, __m256* w) const {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * u));
    __m256 c = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)), _mm256_set1_ps(code_scale));
    c = _mm256_add_ps(_mm256_add_ps(c, _mm256_set1_ps(code_zp)), _mm256_set1_ps(0.5f));
    const __m256i ci = _mm256_cvttps_epi32(_mm256_floor_ps(c));
    const __m256i mask = _mm256_set1_epi32(0x3F), zp = _mm256_set1_epi32(32);
    w[0] = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(_mm256_srai_epi32(ci, 9), mask), zp));
    w[1] = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(_mm256_srai_epi32(ci, 6), mask), zp));
    w[2] = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(_mm256_srai_epi32(ci, 3), mask), zp));
    w[3] = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(ci, mask), zp));
  }
#endif
};

// The value of k with its group scale (row tails).
template <class F>
inline float scaled_at(const F& f, int64_t k) {
  if constexpr (F::kGroup > 0)
    return f.at(k) * f.group_scale(k / F::kGroup);
  else
    return f.at(k);
}

// xp = x's rows [m, k] in F's unit order (full units permuted, the tail as is).
template <class F>
void permute_rows(const float* x, int64_t m, int64_t k, float* xp) {
  const int64_t units = k / kUnit;
  for (int64_t r = 0; r < m; ++r) {
    const float* a = x + r * k;
    float* b = xp + r * k;
    for (int64_t u = 0; u < units; ++u)
      for (int j = 0; j < kUnit; ++j) b[kUnit * u + j] = a[F::unit_k(u, j)];
    for (int64_t i = units * kUnit; i < k; ++i) b[i] = a[i];
  }
}

template <class F>
struct Tag {
  using type = F;
};

// fn(Tag<F>{}) for the format of code fmt (already validated).
template <class Fn>
void with_format(int fmt, Fn&& fn) {
  switch (fmt) {
    case F32::kCode: return fn(Tag<F32>{});
    case Bf16::kCode: return fn(Tag<Bf16>{});
    case Wint8::kCode: return fn(Tag<Wint8>{});
    case Wint4::kCode: return fn(Tag<Wint4>{});
    case Fp8::kCode: return fn(Tag<Fp8>{});
    default: return fn(Tag<Wint2>{});
  }
}

}  // namespace ernie
