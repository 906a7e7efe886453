// Eight-lane float vectors: the two backends every kernel is written over.
//
// Each backend also has a 32-byte integer vector B and idot32(x, w): the eight int32 sums of four
// neighbouring int8 products (lane j: bytes 4j .. 4j + 3) of 32 int8 activations and 32 int8 weights, as
// float lanes (exact). Avx2 computes them with |w| as unsigned bytes and w's sign moved onto x
// (maddubs + madd, or one dpbusd where the build CPU has AVX-VNNI or AVX512-VNNI): exact for every weight
// byte -128..127 and activations -127..127 (no int16 pair exceeds 2 * 128 * 127). idot32u(x, u, init): the
// same sums for unsigned weight bytes u (0..15: maddubs pairs stay under 2 * 15 * 127) added to the eight int32
// lanes init (one dpbusd, no abs/sign): a format stored with an offset (wint4: w = u - 8) passes init = -8 x
// each lane's four activations, so the lanes equal idot32's exactly. With dpbusd (ERNIE_HAVE_VNNI) u may be any
// unsigned byte 0..255 (wint8: w + 128).
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
#if ((defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)) && !defined(ERNIE_NO_VNNI)
#define ERNIE_HAVE_VNNI 1  // dpbusd: idot32u takes any unsigned byte 0..255 (maddubs pairs would saturate)
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
  static void transpose8(R* r) {  // r[i].v[j] <-> r[j].v[i]
    for (int i = 0; i < 8; ++i)
      for (int j = i + 1; j < 8; ++j) {
        const float t = r[i].v[j];
        r[i].v[j] = r[j].v[i];
        r[j].v[i] = t;
      }
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
  static void transpose8(R* r) {  // r[i] lane j <-> r[j] lane i: unpack, shuffle, then swap 128-bit halves
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20), r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20), r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31), r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31), r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
  }
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
