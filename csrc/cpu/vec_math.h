// Elementwise float math for the CPU kernels' hot loops (loss_rows.h: exp in the cross-entropy
// rows; elman_cpu.cpp: tanh in the forward steps): no library calls (std::exp / std::tanh are
// calls the compiler cannot vectorise without -ffast-math), selects instead of branches, every
// function always inlined. Two ways to vectorise: loops over fixed blocks of kLanes floats that
// the compiler turns into vector instructions (tanh; the build's -fno-trapping-math, setup.py,
// lets GCC if-convert the selects for AVX2 and SSE, not only for AVX-512), or explicit vectors,
// Vec<W> (the loss rows, whose running max and sum must stay in registers).
#pragma once

#include <cstdint>
#include <cstring>

// The loops that call these are compiled for several instruction sets and picked at load time
// (GCC / Clang function multi-versioning), so that a portable build still uses AVX2 / AVX-512.
// GCC's "arch=x86-64-v3" version is AVX2 with FMA, picked on any CPU that has both (Intel and
// AMD alike; the "avx2" one has no FMA, and "arch=haswell" would be picked only on Intel). GCC
// dispatches to it from version 12 (11 stops with "no dispatcher found"); Clang does not.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define RNN_EXT_HAS_X86_64_V3 1
#else
#define RNN_EXT_HAS_X86_64_V3 0
#endif
#if defined(__x86_64__) && defined(__GNUC__) && defined(__has_attribute)
#if __has_attribute(target_clones) && RNN_EXT_HAS_X86_64_V3
#define RNN_EXT_ROW_CLONES \
  __attribute__((target_clones("avx512f", "arch=x86-64-v3", "avx2", "default")))
#elif __has_attribute(target_clones)
#define RNN_EXT_ROW_CLONES \
  __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef RNN_EXT_ROW_CLONES
#define RNN_EXT_ROW_CLONES
#endif

// Code in explicit vectors (Vec<W> below) needs a W per instruction set, so it is written once
// per target instead (GCC's C++ function multi-versioning: one definition per target attribute,
// the same dispatch as target_clones); elsewhere one definition with W = 4 (SSE, NEON).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RNN_EXT_VEC_MULTIVERSION 1
#else
#define RNN_EXT_VEC_MULTIVERSION 0
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

// Vectors of W floats (GCC / Clang's vector extension): Vec<W>::F. Arithmetic is lane-wise, a
// float operand is broadcast, a comparison gives a mask of int32 lanes (-1 or 0). Loops that
// keep values in registers across iterations (the loss rows' running max and sum) use them,
// rather than hope that the compiler keeps an array of lanes out of memory. W is chosen per
// instruction set (RNN_EXT_VEC_MULTIVERSION above): a vector wider than the target's registers
// is still computed correctly, but GCC then lowers its comparisons to scalar code.
template <int W>
struct Vec {
  typedef float F __attribute__((vector_size(4 * W)));
};

template <typename V>
RNN_EXT_ALWAYS_INLINE V splat(float v) {
  return V{} + v;
}
template <int W>
RNN_EXT_ALWAYS_INLINE typename Vec<W>::F load(const float* p) {  // p need not be aligned
  typename Vec<W>::F v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename V>
RNN_EXT_ALWAYS_INLINE void store(float* p, V v) {
  std::memcpy(p, &v, sizeof(v));
}
// The first n < W floats at p, the other lanes set to pad (a row's last, partial block).
template <int W>
RNN_EXT_ALWAYS_INLINE typename Vec<W>::F load_partial(const float* p, int64_t n, float pad) {
  auto v = splat<typename Vec<W>::F>(pad);
  for (int64_t k = 0; k < n; ++k) {
    v[k] = p[k];
  }
  return v;
}

// The bits of one value as another of the same size.
template <typename To, typename From>
RNN_EXT_ALWAYS_INLINE To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between sizes");
  To r;
  std::memcpy(&r, &v, sizeof(r));
  return r;
}

// c ? a : b for a float, lane by lane for vectors (bitwise: the vector `?:` is not in every
// compiler).
RNN_EXT_ALWAYS_INLINE float select(bool c, float a, float b) { return c ? a : b; }
template <typename M, typename V>
RNN_EXT_ALWAYS_INLINE V select(M c, V a, V b) {
  return bit_cast<V>((c & bit_cast<M>(a)) | (~c & bit_cast<M>(b)));
}
// max by `a > b ? a : b`: a NaN in a is skipped (x86 maxps).
template <typename V>
RNN_EXT_ALWAYS_INLINE V max_skip_nan(V a, V b) {
  return select(a > b, a, b);
}

// float -> int32 by truncation, lane by lane for vectors.
RNN_EXT_ALWAYS_INLINE int32_t to_int(float v) { return static_cast<int32_t>(v); }
template <typename V>
RNN_EXT_ALWAYS_INLINE auto to_int(V v) {
  return __builtin_convertvector(v, decltype(v < v));
}

// exp(x) for x <= 0, for a float or a Vec<W>::F: relative error about 2e-7 (2^n * Taylor of
// degree 7 on |r| <= ln2/2); 0 below -87 (true value < 1.7e-38); x > 0 is clamped to 0 (the
// callers never pass one). NaN gives NaN: the polynomial runs on 0 in its place (a float -> int
// conversion of NaN would be undefined behaviour), and x - x adds the NaN back at the end.
template <typename V>
RNN_EXT_ALWAYS_INLINE V exp_nonpositive(V x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f;  // ln 2 = kLn2Hi + kLn2Lo, kLn2Hi exact in float
  constexpr float kLn2Lo = 1.42860682030941723212e-6f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds
  const V zero = V{};
  V xc = select(x < -87.0f, zero - 87.0f, x);
  xc = select(xc <= 0.0f, xc, zero);  // also NaN -> 0, so that n converts to an int (no UB)
  const V n = (xc * kLog2e + kRound) - kRound;  // in [-126, 0]
  const V r = (xc - n * kLn2Hi) - n * kLn2Lo;
  V p = zero + 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const V scale = bit_cast<V>((to_int(n) + 127) << 23);  // 2^n from its bits
  return select(x < -87.0f, zero, p * scale + (x - x));  // x - x: 0, or NaN for a NaN x
}

// tanh(x), within 2 float32 ulps of the exact value: 1.57 at worst over every float32, checked
// exhaustively against float64 for the code without FMA (the "avx2" and "default" clones), 1.50
// with FMA (the "arch=x86-64-v3" and AVX-512 clones, whose contractions give other last bits);
// ATen's Sleef tanh: 0.5.
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
