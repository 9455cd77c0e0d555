// Host (CPU) kernels of the NumPy backend, float32.
//
// Two ways to run the recurrence, chosen by rnncu/backend/numpy_backend.py:
// - the whole recurrence in one call, forward and backward (rnncu_recurrence_*_f32, below),
//   with its own matrix-product micro-kernel: for steps too small for BLAS to repay its
//   per-call cost;
// - the element-wise part of a step (rnncu_add_tanh_f32, rnncu_tanh_grad_f32), around one
//   BLAS product per step in the backend's loop: for larger steps, where a multi-threaded
//   BLAS is the faster product.
// NumPy has no vectorised tanh on machines without AVX-512 (measured 3 to 4 ns per float32
// element on the project's AVX2 machine, more than the step's matrix product at H = 128).
// rnncu/backend/host_kernels.py compiles this file with the system C compiler on first use
// (-O3 -ffp-contract=off -fno-trapping-math, the last so that selects stay
// branch-free; -mavx2 -mfma and -mavx512f where the CPU has them), so a machine without a
// compiler runs the NumPy loop instead. float64, the reference, always runs the NumPy loop.
//
// Accuracy (tests/test_host_kernels.py): tanh within 2 ulp of the correctly rounded value
// over float32; NaN propagates, tanh(+-inf) = +-1, tanh(-0) = -0.

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

// x[i] = tanh(x[i]); the tests measure the kernels' tanh through it
void rnncu_tanh_f32(float* restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = rnncu_tanh(x[i]);
}

// ---------------------------------------------------------------------------------------------
// The element-wise part of one step, for the backend's step loop (one BLAS product per step).

// h[i] = tanh(h[i] + r[i]): the forward step's epilogue (r = h_{t-1} W_hh^T, h = Z_t).
void rnncu_add_tanh_f32(float* restrict h, const float* restrict r, int64_t n) {
  for (int64_t i = 0; i < n; ++i) h[i] = rnncu_tanh(h[i] + r[i]);
}

// dz[i] = (g[i] + dh[i]) * (1 - h[i] * h[i]), or dh[i] * (1 - h[i] * h[i]) when g is NULL:
// the backward step's dz_t from the output gradient g, the carried dh_t and the state h_t.
// NumPy's operations in NumPy's order: the same bits as the backend's NumPy loop.
void rnncu_tanh_grad_f32(float* restrict dz, const float* restrict g, const float* restrict dh,
                         const float* restrict h, int64_t n) {
  if (g) {
    for (int64_t i = 0; i < n; ++i) dz[i] = (g[i] + dh[i]) * (1.0f - h[i] * h[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dz[i] = dh[i] * (1.0f - h[i] * h[i]);
  }
}

// ---------------------------------------------------------------------------------------------
// The whole float32 recurrence in one call: the CPU counterpart of the persistent GPU kernels.
//
// A BLAS call pays for the step's product h_{t-1} W_hh^T on every step: W_hh is repacked into
// the GEMM's panel layout and worker threads are woken. For small steps that costs about what
// the product is worth. Here W_hh is packed once per sequence into panels of 16 units (32
// with AVX-512), the product runs on a 6-row register-blocked micro-kernel into a B x H
// buffer, and the step's element-wise part follows row by row, on values still in cache.
//
// One thread. Splitting the hidden units over threads that meet at a barrier each step was
// measured and dropped: a multi-threaded OpenBLAS keeps its workers spinning for about 0.1 s
// after each call, so inside a layer (the input projection comes just before) a second thread
// shares a core with one of them. At medium (100 steps, B 64, H 512) on 2 cores, forward and
// backward, two threads took 67 ms with BLAS idle but 141 ms right after a BLAS product (one
// thread: 115 and 109; the BLAS step loop: 83 and 74), and at pixel MNIST (784 steps, B 32,
// H 128) 45 and 114 ms (one thread: 37 and 36).
//
// Rounding: every element of a product is one chain of fused multiply-adds over k = 0, 1, ...
// starting from 0, whatever the row block or the instruction set (the AVX-512, AVX2 and
// portable micro-kernels do the same operations in the same order), so the result does not
// depend on the machine.

#include <errno.h>
#include <stdlib.h>

// The micro-kernel's instruction set, from the compiler's flags (host_kernels.py passes
// -mavx512f too where the CPU has it, and -mavx2 -mfma where it has those): 16 hidden units
// per packed panel in two 8-float AVX registers, or 32 in two 16-float AVX-512 registers,
// which doubles the FMAs per instruction. On a 2-core AMD EPYC Zen 5 the forward recurrence
// ran 1.9 to 2.0x as fast as the AVX2 kernel's at H 64 to 512 (B 32 to 256); less at small H,
// where a 32-unit panel leaves lanes idle (a review measured 1.0x at H 8, 1.4x at H 16, 1.5x at
// H 40, B 32). The bits are the same either way (each output is the same chain of FMAs).
#if defined(__AVX512F__)
#include <immintrin.h>
#define RNNCU_VECTOR_BITS 512
typedef __m512 rnncu_vec;
#define RNNCU_ZERO() _mm512_setzero_ps()
#define RNNCU_LOAD(p) _mm512_load_ps(p)
#define RNNCU_BROADCAST(p) _mm512_set1_ps(*(p))
#define RNNCU_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define RNNCU_STORE(p, v) _mm512_storeu_ps(p, v)
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define RNNCU_VECTOR_BITS 256
typedef __m256 rnncu_vec;
#define RNNCU_ZERO() _mm256_setzero_ps()
#define RNNCU_LOAD(p) _mm256_load_ps(p)
#define RNNCU_BROADCAST(p) _mm256_broadcast_ss(p)
#define RNNCU_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define RNNCU_STORE(p, v) _mm256_storeu_ps(p, v)
#else
#define RNNCU_VECTOR_BITS 0  // the portable C micro-kernel, 16 units per panel
#endif
#define RNNCU_LANES (RNNCU_VECTOR_BITS ? RNNCU_VECTOR_BITS / 32 : 8)  // floats per register
#define RNNCU_PANEL (2 * RNNCU_LANES)  // hidden units per packed panel: two registers
#define RNNCU_ROWS 6  // batch rows per micro-kernel call (12 accumulators + 3 registers)

// Which micro-kernel this build runs: 512 (AVX-512), 256 (AVX2 and FMA) or 0 (portable C).
// The backend reads it to choose between the whole recurrence and its BLAS step loop.
int rnncu_vector_bits(void) { return RNNCU_VECTOR_BITS; }

// C[r][0..P-1] = sum_k A[r][k] * P[k][0..P-1] for r < rows (rows <= RNNCU_ROWS), P =
// RNNCU_PANEL: A's rows lda apart, C's ldc apart, P one packed panel (k-major, P floats per
// k, 64-byte aligned).
static inline __attribute__((always_inline)) void rnncu_micro_kernel(
    int rows, const float* restrict a, int64_t lda, const float* restrict panel, int64_t depth,
    float* restrict c, int64_t ldc) {
#if RNNCU_VECTOR_BITS
  rnncu_vec lo[RNNCU_ROWS], hi[RNNCU_ROWS];
#pragma GCC unroll 6
  for (int r = 0; r < rows; ++r) lo[r] = hi[r] = RNNCU_ZERO();
  for (int64_t k = 0; k < depth; ++k) {
    rnncu_vec b_lo = RNNCU_LOAD(panel + k * RNNCU_PANEL);
    rnncu_vec b_hi = RNNCU_LOAD(panel + k * RNNCU_PANEL + RNNCU_LANES);
#pragma GCC unroll 6
    for (int r = 0; r < rows; ++r) {
      rnncu_vec a_rk = RNNCU_BROADCAST(a + r * lda + k);
      lo[r] = RNNCU_FMA(a_rk, b_lo, lo[r]);
      hi[r] = RNNCU_FMA(a_rk, b_hi, hi[r]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < rows; ++r) {
    RNNCU_STORE(c + r * ldc, lo[r]);
    RNNCU_STORE(c + r * ldc + RNNCU_LANES, hi[r]);
  }
#else
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < RNNCU_PANEL; ++j) c[r * ldc + j] = 0.0f;
  for (int64_t k = 0; k < depth; ++k)
    for (int r = 0; r < rows; ++r) {
      float a_rk = a[r * lda + k];
      for (int j = 0; j < RNNCU_PANEL; ++j)
        c[r * ldc + j] = fmaf(a_rk, panel[k * RNNCU_PANEL + j], c[r * ldc + j]);
    }
#endif
}

// A step's product: C (B x the packed columns, ldc apart) = A (B x H, lda apart) times the
// packed panels. The micro-kernel is specialised per row count so that the accumulators stay
// in registers.
static void rnncu_product(const float* a, int64_t lda, int64_t batch, const float* packed,
                          int64_t panels, int64_t depth, float* c, int64_t ldc) {
  for (int64_t p = 0; p < panels; ++p) {
    const float* panel = packed + p * depth * RNNCU_PANEL;
    for (int64_t b0 = 0; b0 < batch; b0 += RNNCU_ROWS) {
      const float* a_block = a + b0 * lda;
      float* c_block = c + b0 * ldc + p * RNNCU_PANEL;
      switch (batch - b0 < RNNCU_ROWS ? (int)(batch - b0) : RNNCU_ROWS) {
        case 6: rnncu_micro_kernel(6, a_block, lda, panel, depth, c_block, ldc); break;
        case 5: rnncu_micro_kernel(5, a_block, lda, panel, depth, c_block, ldc); break;
        case 4: rnncu_micro_kernel(4, a_block, lda, panel, depth, c_block, ldc); break;
        case 3: rnncu_micro_kernel(3, a_block, lda, panel, depth, c_block, ldc); break;
        case 2: rnncu_micro_kernel(2, a_block, lda, panel, depth, c_block, ldc); break;
        default: rnncu_micro_kernel(1, a_block, lda, panel, depth, c_block, ldc); break;
      }
    }
  }
}

static inline int rnncu_padded(const int64_t* lengths, int64_t t, int64_t b) {
  return lengths != NULL && t >= lengths[b];
}

// relu as np.maximum(x, 0) computes it: NaN propagates
static inline float rnncu_relu(float x) { return x > 0.0f ? x : (x != x ? x : 0.0f); }

// Packs W_hh into panels of RNNCU_PANEL columns of the product's right operand: forward,
// W_hh^T (element (k, j) = W_hh[j][k]); backward, W_hh itself (element (k, j) = W_hh[k][j]).
// Columns past H are zero. Returns NULL when the memory cannot be had.
static float* rnncu_pack(const float* w_hh, int64_t hidden, int transpose) {
  int64_t panels = (hidden + RNNCU_PANEL - 1) / RNNCU_PANEL;
  size_t bytes = (size_t)(panels * hidden * RNNCU_PANEL) * sizeof(float);
  float* packed = aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (packed == NULL) return NULL;
  for (int64_t p = 0; p < panels; ++p) {
    float* panel = packed + p * hidden * RNNCU_PANEL;
    for (int64_t k = 0; k < hidden; ++k)
      for (int64_t j = 0; j < RNNCU_PANEL; ++j) {
        int64_t column = p * RNNCU_PANEL + j;
        float value = 0.0f;
        if (column < hidden)
          value = transpose ? w_hh[column * hidden + k] : w_hh[k * hidden + column];
        panel[k * RNNCU_PANEL + j] = value;
      }
  }
  return packed;
}

// A call's workspace: W_hh packed for its product, and the product's B x ldc buffer.
typedef struct {
  float* packed;
  float* product;
  int64_t panels, ldc;
} rnncu_workspace;

static void rnncu_workspace_free(rnncu_workspace* work) {
  free(work->packed);
  free(work->product);
}

// Returns 0 (nothing left allocated) when the memory cannot be had.
static int rnncu_workspace_init(rnncu_workspace* work, const float* w_hh, int64_t hidden,
                                int64_t batch, int transpose) {
  work->panels = (hidden + RNNCU_PANEL - 1) / RNNCU_PANEL;
  work->ldc = work->panels * RNNCU_PANEL;
  work->packed = rnncu_pack(w_hh, hidden, transpose);
  work->product = malloc((size_t)(batch * work->ldc) * sizeof(float));
  if (work->packed == NULL || work->product == NULL) {
    rnncu_workspace_free(work);
    return 0;
  }
  return 1;
}

// dz_t = (g_t + dh) * act'(h_t), or dh * act'(h_t) without g, with act'(h) = 1 - h^2 (tanh)
// or (h > 0) (relu) formed as the NumPy loop forms it; 0 on padded rows.
static void rnncu_form_grad_z(float* dz, const float* g, const float* dh, const float* h,
                              const int64_t* lengths, int64_t t, int64_t batch, int64_t hidden,
                              int relu) {
  for (int64_t b = 0; b < batch; ++b) {
    int64_t row = b * hidden;
    if (rnncu_padded(lengths, t, b)) {
      memset(dz + row, 0, (size_t)hidden * sizeof(float));
    } else if (relu) {
      for (int64_t j = row; j < row + hidden; ++j)
        dz[j] = (g ? g[j] + dh[j] : dh[j]) * (h[j] > 0.0f ? 1.0f : 0.0f);
    } else if (g) {
      for (int64_t j = row; j < row + hidden; ++j) dz[j] = (g[j] + dh[j]) * (1.0f - h[j] * h[j]);
    } else {
      for (int64_t j = row; j < row + hidden; ++j) dz[j] = dh[j] * (1.0f - h[j] * h[j]);
    }
  }
}

// The forward recurrence, float32: states (T, B, H) holds Z_t (input projection and both
// biases) on entry and h_t on return; w_hh (H, H) and h0 (B, H) row-major; lengths (B,) or
// NULL (rows past their length keep their state); steps run T-1 down to 0 when reverse; tanh,
// or relu when relu is set. Returns 0, or ENOMEM with nothing written.
int rnncu_recurrence_forward_f32(float* states, const float* w_hh, const float* h0,
                                 const int64_t* lengths, int64_t steps, int64_t batch,
                                 int64_t hidden, int reverse, int relu) {
  if (steps <= 0 || batch <= 0 || hidden <= 0) return 0;
  rnncu_workspace work;
  if (!rnncu_workspace_init(&work, w_hh, hidden, batch, 1)) return ENOMEM;
  int64_t size = batch * hidden, ldc = work.ldc;
  float* product = work.product;
  const float* previous = h0;
  for (int64_t i = 0; i < steps; ++i) {
    int64_t t = reverse ? steps - 1 - i : i;
    float* current = states + t * size;
    rnncu_product(previous, hidden, batch, work.packed, work.panels, hidden, product, ldc);
    for (int64_t b = 0; b < batch; ++b) {
      float* h = current + b * hidden;
      const float* r = product + b * ldc;
      if (rnncu_padded(lengths, t, b)) {
        memcpy(h, previous + b * hidden, (size_t)hidden * sizeof(float));
      } else if (relu) {
        for (int64_t j = 0; j < hidden; ++j) h[j] = rnncu_relu(h[j] + r[j]);
      } else {
        for (int64_t j = 0; j < hidden; ++j) h[j] = rnncu_tanh(h[j] + r[j]);
      }
    }
    previous = current;
  }
  rnncu_workspace_free(&work);
  return 0;
}

// The backward recurrence, float32: grad_z (T, B, H) receives dz_t = dL/d(pre-activation);
// grad_h (B, H) holds dL/dh_T (zeros when absent) on entry and dL/dh_0 on return; grad_states
// (T, B, H) is dL/dout or NULL; states (T, B, H) the forward's outputs; the other arguments as
// in the forward. Rows padded at step t get dz_t = 0 and pass dh on unchanged. Returns 0, or
// ENOMEM with nothing written.
int rnncu_recurrence_backward_f32(float* grad_z, float* grad_h, const float* grad_states,
                                  const float* states, const float* w_hh,
                                  const int64_t* lengths, int64_t steps, int64_t batch,
                                  int64_t hidden, int reverse, int relu) {
  if (steps <= 0 || batch <= 0 || hidden <= 0) return 0;
  rnncu_workspace work;
  if (!rnncu_workspace_init(&work, w_hh, hidden, batch, 0)) return ENOMEM;
  int64_t size = batch * hidden, ldc = work.ldc;
  float* product = work.product;
  for (int64_t i = 0; i < steps; ++i) {
    // the backward pass walks the forward's steps in the opposite order
    int64_t t = reverse ? i : steps - 1 - i;
    int64_t offset = t * size;
    rnncu_form_grad_z(grad_z + offset, grad_states ? grad_states + offset : NULL, grad_h,
                      states + offset, lengths, t, batch, hidden, relu);
    // dh_{t-1} = dz_t W_hh, and dh_t itself on rows padded at t
    rnncu_product(grad_z + offset, hidden, batch, work.packed, work.panels, hidden, product, ldc);
    for (int64_t b = 0; b < batch; ++b)
      if (!rnncu_padded(lengths, t, b))
        memcpy(grad_h + b * hidden, product + b * ldc, (size_t)hidden * sizeof(float));
  }
  rnncu_workspace_free(&work);
  return 0;
}
