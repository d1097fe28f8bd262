// Elementwise float math for the CPU kernels' hot loops (seq_nll_cpu.cpp: exp in the
// cross-entropy rows; elman_cpu.cpp: tanh in the forward steps), written so that the compiler
// vectorises the loops that call it: no library calls (std::exp / std::tanh are calls it cannot
// vectorise without -ffast-math), selects instead of branches, every function always inlined.
// The build's -fno-trapping-math (setup.py) lets GCC if-convert the selects for AVX2 and SSE, not
// only for AVX-512.
#pragma once

#include <cstdint>
#include <cstring>

// The loops that call these are compiled for several instruction sets and picked at load time
// (GCC / Clang function multi-versioning), so that a portable build still uses AVX2 / AVX-512.
#if defined(__x86_64__) && defined(__GNUC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define RNN_EXT_ROW_CLONES \
  __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef RNN_EXT_ROW_CLONES
#define RNN_EXT_ROW_CLONES
#endif

#if defined(__GNUC__)
#define RNN_EXT_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define RNN_EXT_ALWAYS_INLINE inline
#endif

namespace rnn_ext {
namespace cpu_math {

// Elements per block of the vectorised loops: they walk their data in blocks of kLanes with
// fixed-size inner loops (independent lanes, which the compiler turns into vector instructions:
// one AVX-512 register, two AVX2, four SSE), a partial last block padded into a local block.
constexpr int64_t kLanes = 16;

// exp(x) for x <= 0: relative error about 2e-7 (2^n * Taylor of degree 7 on |r| <= ln2/2);
// 0 below -87 (true value < 1.7e-38); x > 0 is clamped to 0 (the callers never pass one). NaN
// stays NaN: it flows through the polynomial (the float -> int conversion of NaN gives the
// "integer indefinite" value on x86, which only scales the NaN).
RNN_EXT_ALWAYS_INLINE float exp_nonpositive(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f;  // ln 2 = kLn2Hi + kLn2Lo, kLn2Hi exact in float
  constexpr float kLn2Lo = 1.42860682030941723212e-6f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds
  float xc = x < -87.0f ? -87.0f : x;
  xc = xc > 0.0f ? 0.0f : xc;
  const float n = (xc * kLog2e + kRound) - kRound;  // in [-126, 0]
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // 2^n from its bits (memcpy, a builtin: inlined into every multi-versioned caller)
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.0f ? 0.0f : p * scale;
}

// tanh(x), within 2 float32 ulps of the exact value: 1.57 at worst over every float32, checked
// exhaustively against float64 for the build without FMA (the AVX2 and SSE clones), 1.50 for one
// with FMA (the AVX-512 clone, whose contractions give other last bits); ATen's Sleef tanh: 0.5.
// tests/test_elman_ops.py checks 2 ulps from subnormals to 20.
// |x| < 0.625: x + x^3 P(x^2), P of degree 4 fitted to (tanh(x) - x) / x^3 for least relative
// error (4.6e-9 in float64; 0.75 ulp evaluated in float32).
// |x| >= 0.625: (1 - e) / (1 + e) with e = exp(-2|x|) <= 0.29 (no cancellation), sign restored.
// tanh(+-0) = +-0 (x + x^3 P would give +0 for -0: kept by a select), tanh(+-inf) = +-1, NaN
// stays NaN, as std::tanh.
RNN_EXT_ALWAYS_INLINE float tanh_float(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float z = x * x;
  float p = -5.718737508e-03f;
  p = p * z + 2.065290133e-02f;
  p = p * z - 5.374457939e-02f;
  p = p * z + 1.333151153e-01f;
  p = p * z - 3.333328516e-01f;
  const float small = x == 0.0f ? x : x + (x * z) * p;
  const float e = exp_nonpositive(-2.0f * ax);
  const float large = (1.0f - e) / (1.0f + e);
  const float signed_large = x < 0.0f ? -large : large;
  return ax < 0.625f ? small : signed_large;
}

}  // namespace cpu_math
}  // namespace rnn_ext
