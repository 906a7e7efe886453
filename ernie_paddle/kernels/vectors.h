// Eight-lane float vectors: the two backends every kernel is written over.
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
};

#ifdef ERNIE_HAVE_AVX2
struct Avx2 {
  using R = __m256;
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float a) { return _mm256_set1_ps(a); }
  static R load8(const float* p) { return _mm256_loadu_ps(p); }
  static void store8(float* p, R a) { _mm256_storeu_ps(p, a); }
  static R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static float hsum(R v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
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
