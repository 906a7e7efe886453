// Eight-lane float vectors: the two backends every kernel is written over.
//
// Each backend also has a 32-byte integer vector B and idot32(x, w): the eight int32 sums of four
// neighbouring int8 products (lane j: bytes 4j .. 4j + 3) of 32 int8 activations and 32 int8 weights, as
// float lanes (exact). Avx2 computes them with |w| as unsigned bytes and w's sign moved onto x
// (maddubs + madd, or one dpbusd where the build CPU has AVX-VNNI or AVX512-VNNI): exact for every weight
// byte -128..127 and activations -127..127 (no int16 pair exceeds 2 * 128 * 127). idot32u(x, u, init): the
// same sums for unsigned weight bytes u (0..15: maddubs pairs stay under 2 * 15 * 127) added to the eight int32
// lanes init (one dpbusd, no abs/sign): a format stored with an offset (wint4: w = u - 8) passes init = -8 x
// each lane's four activations, so the lanes equal idot32's exactly.
//
// Avx2 (AVX2 + FMA + F16C registers) and Portable (plain C++, lane by lane, std::fma: the same fused
// products and the same reduction order as Avx2), so both give identical results. Portable runs where the
// build CPU lacks AVX2, or when ERNIE_PADDLE_PORTABLE_KERNELS=1 (the tests compare the two). The build
// passes -ffp-contract=off: the only fused multiply-adds are the explicit fmadd/std::fma calls.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define ERNIE_HAVE_AVX2 1
#endif

namespace ernie {

// The plain C++ backend: one struct of eight lanes, each operation lane by lane.
struct Portable {
  struct R {
    float v[8];
  };
  static R zero() { return R{{0, 0, 0, 0, 0, 0, 0, 0}}; }
  static R set1(float a) { return R{{a, a, a, a, a, a, a, a}}; }
  static R load8(const float* p) {
    R r;
    std::memcpy(r.v, p, sizeof r.v);
    return r;
  }
  static R load8(const uint16_t* p) {  // bf16 bits: the high half of a float32 (exact)
    R r;
    for (int i = 0; i < 8; ++i) {
      const uint32_t bits = static_cast<uint32_t>(p[i]) << 16;
      std::memcpy(&r.v[i], &bits, sizeof bits);
    }
    return r;
  }
  static void store8(float* p, R a) { std::memcpy(p, a.v, sizeof a.v); }
  static R fmadd(R a, R b, R c) {
    for (int i = 0; i < 8; ++i) c.v[i] = std::fma(a.v[i], b.v[i], c.v[i]);
    return c;
  }
  static R add(R a, R b) {
    for (int i = 0; i < 8; ++i) a.v[i] += b.v[i];
    return a;
  }
  static R mul(R a, R b) {
    for (int i = 0; i < 8; ++i) a.v[i] *= b.v[i];
    return a;
  }
  static float hsum(R a) {  // the order of Avx2::hsum: (lane i + lane i+4), then (0 + 2) + (1 + 3)
    float s[4];
    for (int i = 0; i < 4; ++i) s[i] = a.v[i] + a.v[i + 4];
    return (s[0] + s[2]) + (s[1] + s[3]);
  }
  struct B {
    int8_t v[32];
  };
  static R idot32(const int8_t* x, const B& w) {
    R r;
    for (int j = 0; j < 8; ++j) {
      int32_t s = 0;
      for (int i = 4 * j; i < 4 * j + 4; ++i) s += static_cast<int32_t>(x[i]) * w.v[i];
      r.v[j] = static_cast<float>(s);
    }
    return r;
  }
  static R idot32u(const int8_t* x, const B& u, const int32_t* init) {  // u: unsigned bytes 0..15
    R r;
    for (int j = 0; j < 8; ++j) {
      int32_t s = init[j];
      for (int i = 4 * j; i < 4 * j + 4; ++i) s += static_cast<int32_t>(x[i]) * static_cast<uint8_t>(u.v[i]);
      r.v[j] = static_cast<float>(s);
    }
    return r;
  }
};

#ifdef ERNIE_HAVE_AVX2
struct Avx2 {
  using R = __m256;
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float a) { return _mm256_set1_ps(a); }
  static R load8(const float* p) { return _mm256_loadu_ps(p); }
  static R load8(const uint16_t* p) {  // bf16 bits: 8 x u16 -> u32, shifted into the high half (exact)
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static void store8(float* p, R a) { _mm256_storeu_ps(p, a); }
  static R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static float hsum(R v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
  }
  using B = __m256i;
  static R idot32(const int8_t* x, B w) {
    const __m256i u = _mm256_abs_epi8(w);
    const __m256i s = _mm256_sign_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)), w);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && !defined(ERNIE_NO_VNNI)
    return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s));
#elif defined(__AVXVNNI__) && !defined(ERNIE_NO_VNNI)
    return _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s));
#else
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
  }
  static R idot32u(const int8_t* x, B u, const int32_t* init) {
    const __m256i xs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(init));
#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && !defined(ERNIE_NO_VNNI)
    return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(c, u, xs));
#elif defined(__AVXVNNI__) && !defined(ERNIE_NO_VNNI)
    return _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(c, u, xs));
#else
    return _mm256_cvtepi32_ps(_mm256_add_epi32(c, _mm256_madd_epi16(_mm256_maddubs_epi16(u, xs), _mm256_set1_epi16(1))));
#endif
  }
};
#endif

// True when the portable backend is asked for (read per call: tests switch it).
inline bool portable_requested() {
#ifdef ERNIE_HAVE_AVX2
  const char* v = std::getenv("ERNIE_PADDLE_PORTABLE_KERNELS");
  return v != nullptr && v[0] == '1';
#else
  return true;
#endif
}

}  // namespace ernie
