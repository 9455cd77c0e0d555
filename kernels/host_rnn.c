// Host (CPU) element-wise loops of the NumPy backend's step loop, float32.
//
// NumPy has no vectorised tanh or exp on machines without AVX-512: np.tanh calls the C
// library once per element (measured 3 to 4 ns per float32 element on the project's AVX2
// machine, more than the step's matrix product at H = 128). These loops are written so that
// the compiler vectorises them (no calls, no branches). rnncu/backend/host_kernels.py
// compiles this file with the system C compiler on first use (-O3 -ffp-contract=off
// -fno-trapping-math, the last so that selects stay branch-free), so a machine without a
// compiler runs NumPy's own functions instead.
//
// Accuracy (tests/test_host_kernels.py): tanh within 2 ulp of the correctly rounded value
// over float32; NaN propagates, tanh(+-inf) = +-1, tanh(-0) = -0. The gradient loop does
// exactly NumPy's operations in NumPy's order, so it matches NumPy bit for bit.

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float rnncu_bits_to_float(uint32_t bits) {
  float value;
  memcpy(&value, &bits, sizeof value);
  return value;
}

static inline uint32_t rnncu_float_to_bits(float value) {
  uint32_t bits;
  memcpy(&bits, &value, sizeof bits);
  return bits;
}

// tanh(|x|) from m = expm1(-2|x|), then x's sign: -m / (2 + m) below |x| = 1 (expm1 keeps its
// relative accuracy near 0, where 1 - exp(-2|x|) would cancel), 1 - 2 exp(-2|x|) / (2 + m)
// above (the subtrahend is small there, so the rounding of 2 + m, a number near 1, does not
// reach a result near 1); both share one division. expm1(y) for y = -2|x| in [-80, 0]:
// y = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts, so that n ln2 is exact), expm1(y) =
// (2^n - 1) + 2^n (r + r^2 S(r)) with 2^n built in the exponent bits. S(r) = (exp(r) - 1 - r)
// / r^2 is a least-squares fit with equalised error (exp(r) to 0.8 ulp on [-ln2/2, ln2/2]).
// fmaf is exactly rounded on every machine (one instruction where the CPU has FMA), so the
// result does not depend on the CPU. Measured: at most 1.85 ulp from the correctly rounded
// tanh over 5 million float32 values (np.tanh: 1.37 ulp).
static inline float rnncu_tanh(float x) {
  const float log2e = 1.44269504088896341f;
  const float ln2_hi = 0.693145751953125f;      // 15 significant bits: n * ln2_hi is exact
  const float ln2_lo = 1.42860682030941723e-6f;  // ln2 - ln2_hi
  const float round_magic = 12582912.0f;         // 1.5 * 2^23: adding it rounds to integer
  uint32_t bits = rnncu_float_to_bits(x);
  uint32_t sign = bits & 0x80000000u;
  float a = rnncu_bits_to_float(bits & 0x7fffffffu);
  // tanh is 1 to float32 long before |x| = 40; the clamp also keeps inf and NaN out of the
  // integer conversion (NaN is restored at the end)
  float y = -2.0f * (a < 40.0f ? a : 40.0f);
  float n = fmaf(y, log2e, round_magic) - round_magic;  // in [-116, 0]
  float r = fmaf(-n, ln2_lo, fmaf(-n, ln2_hi, y));
  float s = 1.37526553e-3f;
  s = fmaf(s, r, 8.36891308e-3f);
  s = fmaf(s, r, 4.16695103e-2f);
  s = fmaf(s, r, 1.66665182e-1f);
  s = fmaf(s, r, 4.99999881e-1f);
  float expm1_r = fmaf(r * r, s, r);
  float scale = rnncu_bits_to_float((uint32_t)((int32_t)n + 127) << 23);  // 2^n, normal
  float m = fmaf(scale, expm1_r, scale - 1.0f);        // expm1(y)
  float denominator = fmaf(scale, expm1_r, scale + 1.0f);  // 2 + expm1(y)
  float exp_y = fmaf(scale, expm1_r, scale);
  float numerator = a < 1.0f ? -m : exp_y + exp_y;
  float quotient = numerator / denominator;
  float magnitude = a < 1.0f ? quotient : 1.0f - quotient;
  // |magnitude| with x's sign (tanh(+0) would come out -0 otherwise)
  float result = rnncu_bits_to_float((rnncu_float_to_bits(magnitude) & 0x7fffffffu) | sign);
  return x != x ? x : result;
}

// h[i] = tanh(h[i] + r[i]): the forward step's epilogue (r = h_{t-1} W_hh^T, h = Z_t).
void rnncu_add_tanh_f32(float* restrict h, const float* restrict r, int64_t n) {
  for (int64_t i = 0; i < n; ++i) h[i] = rnncu_tanh(h[i] + r[i]);
}

// x[i] = tanh(x[i])
void rnncu_tanh_f32(float* restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = rnncu_tanh(x[i]);
}

// dz[i] = (g[i] + dh[i]) * (1 - h[i] * h[i]), or dh[i] * (1 - h[i] * h[i]) when g is NULL:
// the backward step's dz_t from the output gradient g, the carried dh_t and the state h_t.
void rnncu_tanh_grad_f32(float* restrict dz, const float* restrict g, const float* restrict dh,
                         const float* restrict h, int64_t n) {
  if (g) {
    for (int64_t i = 0; i < n; ++i) dz[i] = (g[i] + dh[i]) * (1.0f - h[i] * h[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dz[i] = dh[i] * (1.0f - h[i] * h[i]);
  }
}
