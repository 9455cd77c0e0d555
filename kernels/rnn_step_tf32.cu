// kernels/rnn_step_tf32.cu: the float32 step kernels of rnn_step.cu on the tensor cores, in
// TF32 (matmul_precision "high", a device of compute capability 8.0 or later).
//
// Same steps, arguments and launch plans as rnn_step.cu's float kernels:
//     forward   h_t = valid(b, t) ? act(Z_t + h_{t-1} W^T) : h_{t-1}            (in place)
//     backward  dz_t = valid(b, t) ? g * act'(h_t) : 0                           -> grad_z_t
//               dh_{t-1} = dz_t W + (valid(b, t) ? 0 : dh_t)
// The (B x H) = (B x K)(K x H) product per step runs as WMMA m16n16k8 TF32 products with
// float accumulators; everything else (Z, the activation, dz stored to grad_z, the carried
// gradient of padding rows) stays float32, so only the recurrent product is rounded: its
// operands to TF32's 10 mantissa bits (to nearest, ties away: cvt.rna). The rounding
// compounds over the steps through h and dh; the tests bound it against float64.
//
// A block of four warps (2 x 2) computes a BM x BN tile of outputs (BM batch rows, BN hidden
// units), each warp a (BM / 2) x (BN / 2) patch of 16 x 16 accumulator fragments. K runs in
// slices of kBK = 16: both operand slices are staged in shared memory (rounded to TF32 there,
// once per block rather than once per warp that loads them, and zero outside B x H, so the
// fragments never read past the matrices whatever B and H are), the next slice prefetched
// into registers while the current one is multiplied. The accumulators go through shared
// memory to the element-wise epilogue, whose loads and stores then run along H.
// Launch shape: block (128, 1, 1), grid (ceil(H / BN), ceil(B / BM), 1);
// kernel_loader.TF32_STEP_TILES lists the instantiated (BM, BN).
//
// Shared row pitches, in floats: operand tiles read with k along a row take kBK + 4 (20: in
// the register layout of mma.sync's m16n8k8, which WMMA's fragments are not documented to
// follow, the eight rows one fragment load touches fall on different banks), the backward's
// W tile, read with n along a row, BN + 8; every fragment start is then 32-byte aligned, as
// load_matrix_sync and store_matrix_sync require. (The stores of the 16-wide rows into the
// operand tiles meet 2-way bank conflicts; a slice is stored once and read by two warps.)
#include "common.cuh"

namespace rnncu {

template <int BM, int BN, int A_IN>
struct Tf32Tile {
  static constexpr int kThreads = 128;  // four warps, 2 x 2 over the tile
  // A K slice of 16 (two m16n16k8 products a fragment pair) and a cap of 168 registers
  // (three blocks an SM) forward, 255 (two) backward, whose slice is prefetched as two
  // inputs: with a slice of 32 or the 128-register cap of four blocks, ptxas (NVRTC 13.5,
  // sm_90) spilled up to 1 KB a thread in some tiles, and NVRTC 13.0 spilled the backward's
  // 64-column tiles at 168 (sm_80); with these, none.
  static constexpr int kBK = 16;
  static constexpr int kWarpM = BM / 2;
  static constexpr int kWarpN = BN / 2;
  static constexpr int kFragM = kWarpM / 16;  // accumulator fragments per warp, along B
  static constexpr int kFragN = kWarpN / 16;  // and along H
  static_assert(kFragM >= 1 && kFragN >= 1 && kWarpM % 16 == 0 && kWarpN % 16 == 0,
                "a warp's patch must be whole 16 x 16 fragments");
  static constexpr int kKPitch = kBK + 4;  // rows read along k
  static constexpr int kNPitch = BN + 8;   // the backward's W rows, read along n
  static constexpr int kCPitch = BN + 4;   // accumulators, stored row-major
  static constexpr int A_PER = BM * kBK / kThreads;
  static constexpr int W_PER = BN * kBK / kThreads;
  static constexpr int C_PER = BM * BN / kThreads;
  static_assert(A_PER * kThreads == BM * kBK && W_PER * kThreads == BN * kBK &&
                    C_PER * kThreads == BM * BN,
                "tiles must split evenly over the threads");
  static constexpr int kMinBlocks = A_IN == 1 ? 3 : 2;
};

template <int BM, int BN>
struct __align__(32) Tf32ForwardShared {
  using Tile = Tf32Tile<BM, BN, 1>;
  float a[BM][Tile::kKPitch];  // a[m][k] = h_{t-1}[m0 + m, k0 + k]
  float w[BN][Tile::kKPitch];  // w[n][k] = W[n0 + n, k0 + k]: W^T as a column-major K x BN
  float c[BM][Tile::kCPitch];  // the accumulators, for the epilogue
};

template <int BM, int BN>
struct __align__(32) Tf32BackwardShared {
  using Tile = Tf32Tile<BM, BN, 2>;
  float a[BM][Tile::kKPitch];   // a[m][k] = dz_t[m0 + m, k0 + k]
  float w[Tile::kBK][Tile::kNPitch];  // w[k][n] = W[k0 + k, n0 + n]: row-major K x BN
  float c[BM][Tile::kCPitch];
};

}  // namespace rnncu

// WMMA's TF32 fragments exist from sm_80 on: below it the kernels compile to a trap (the
// backend never launches them there), so that a module of every file still builds.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define RNNCU_TF32_MMA 1
#include <mma.h>

namespace rnncu {

namespace wmma = nvcuda::wmma;
using Tf32FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32,
                                 wmma::row_major>;
template <typename Layout>
using Tf32FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, Layout>;
using Tf32FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

// acc += A B over one staged K slice: A at a[m][k] (pitch kKPitch); B's element (k, n) at
// w[k * k_step + n * n_step] (pitch w_pitch as its fragments see it). The warp's patch starts
// at row wm, column wn of the tile.
template <int BM, int BN, typename Layout, int A_IN>
__device__ __forceinline__ void multiply_tf32_slice(
    const float (*a)[Tf32Tile<BM, BN, A_IN>::kKPitch], const float* w, int k_step, int n_step,
    unsigned w_pitch,
    Tf32FragC (&acc)[Tf32Tile<BM, BN, A_IN>::kFragM][Tf32Tile<BM, BN, A_IN>::kFragN], int wm,
    int wn) {
  using Tile = Tf32Tile<BM, BN, A_IN>;
#pragma unroll
  for (int kk = 0; kk < Tile::kBK; kk += 8) {
    Tf32FragA fa[Tile::kFragM];
    Tf32FragB<Layout> fb[Tile::kFragN];
#pragma unroll
    for (int i = 0; i < Tile::kFragM; ++i) {
      wmma::load_matrix_sync(fa[i], &a[wm + i * 16][kk], Tile::kKPitch);
    }
#pragma unroll
    for (int j = 0; j < Tile::kFragN; ++j) {
      wmma::load_matrix_sync(fb[j], w + kk * k_step + (wn + j * 16) * n_step, w_pitch);
    }
#pragma unroll
    for (int i = 0; i < Tile::kFragM; ++i)
#pragma unroll
      for (int j = 0; j < Tile::kFragN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
  }
}

// The accumulators into c[m][n] (pitch kCPitch), for the element-wise epilogue.
template <int BM, int BN, int A_IN>
__device__ __forceinline__ void store_accumulators(
    float (*c)[Tf32Tile<BM, BN, A_IN>::kCPitch],
    Tf32FragC (&acc)[Tf32Tile<BM, BN, A_IN>::kFragM][Tf32Tile<BM, BN, A_IN>::kFragN], int wm,
    int wn) {
  using Tile = Tf32Tile<BM, BN, A_IN>;
#pragma unroll
  for (int i = 0; i < Tile::kFragM; ++i)
#pragma unroll
    for (int j = 0; j < Tile::kFragN; ++j) {
      wmma::store_matrix_sync(&c[wm + i * 16][wn + j * 16], acc[i][j], Tile::kCPitch,
                              wmma::mem_row_major);
    }
}

}  // namespace rnncu
#endif

// Forward step; the arguments of rnn_step_forward (rnn_step.cu).
template <int ACT, int BM, int BN>
__global__ void __launch_bounds__(rnncu::Tf32Tile<BM, BN, 1>::kThreads,
                                  rnncu::Tf32Tile<BM, BN, 1>::kMinBlocks)
    rnn_step_tf32_forward(float* __restrict__ h_out, const float* __restrict__ h_prev,
                          const float* __restrict__ w_hh, const int* __restrict__ lengths,
                          int t, int batch, int hidden) {
#ifdef RNNCU_TF32_MMA
  using namespace rnncu;
  using Tile = Tf32Tile<BM, BN, 1>;
  constexpr int kBK = Tile::kBK;
  __shared__ Tf32ForwardShared<BM, BN> tiles;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int wm = (warp / 2) * Tile::kWarpM;
  const int wn = (warp % 2) * Tile::kWarpN;
  const int n0 = blockIdx.x * BN;
  const int m0 = blockIdx.y * BM;
  const long long ld = hidden;

  Tf32FragC acc[Tile::kFragM][Tile::kFragN];
#pragma unroll
  for (int i = 0; i < Tile::kFragM; ++i)
#pragma unroll
    for (int j = 0; j < Tile::kFragN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  // Both slices are read with k fastest across consecutive threads: rows of h_{t-1} and of W
  // are contiguous along k.
  float a_next[Tile::A_PER];
  float w_next[Tile::W_PER];
  auto load_slice = [&](int k0) {
#pragma unroll
    for (int r = 0; r < Tile::A_PER; ++r) {
      const int e = tid + r * Tile::kThreads;
      const int m = m0 + e / kBK;
      const int k = k0 + e % kBK;
      a_next[r] = (m < batch && k < hidden) ? h_prev[m * ld + k] : 0.0f;
    }
#pragma unroll
    for (int r = 0; r < Tile::W_PER; ++r) {
      const int e = tid + r * Tile::kThreads;
      const int n = n0 + e / kBK;
      const int k = k0 + e % kBK;
      w_next[r] = (n < hidden && k < hidden) ? __ldg(w_hh + n * ld + k) : 0.0f;
    }
  };

  load_slice(0);
  for (int k0 = 0; k0 < hidden; k0 += kBK) {
#pragma unroll
    for (int r = 0; r < Tile::A_PER; ++r) {
      const int e = tid + r * Tile::kThreads;
      tiles.a[e / kBK][e % kBK] = wmma::__float_to_tf32(a_next[r]);
    }
#pragma unroll
    for (int r = 0; r < Tile::W_PER; ++r) {
      const int e = tid + r * Tile::kThreads;
      tiles.w[e / kBK][e % kBK] = wmma::__float_to_tf32(w_next[r]);
    }
    __syncthreads();
    // The next slice's global loads go out before the products, to overlap their latency.
    if (k0 + kBK < hidden) load_slice(k0 + kBK);
    multiply_tf32_slice<BM, BN, wmma::col_major, 1>(tiles.a, &tiles.w[0][0], 1, Tile::kKPitch,
                                                    Tile::kKPitch, acc, wm, wn);
    // The next iteration overwrites the tiles this one is still reading.
    __syncthreads();
  }
  store_accumulators<BM, BN, 1>(tiles.c, acc, wm, wn);
  __syncthreads();

#pragma unroll
  for (int r = 0; r < Tile::C_PER; ++r) {
    const int e = tid + r * Tile::kThreads;
    const int m = m0 + e / BN;
    const int n = n0 + e % BN;
    if (m >= batch || n >= hidden) continue;
    const long long off = m * ld + n;
    // Same operation order as the reference: (Z + h W^T), then act.
    h_out[off] = step_is_valid(lengths, m, t)
                     ? activate<ACT>(h_out[off] + tiles.c[e / BN][e % BN])
                     : h_prev[off];
  }
#else
  __trap();  // TF32 needs compute capability 8.0; the backend never launches this below it
#endif
}

// Backward step; the arguments of rnn_step_backward (rnn_step.cu).
template <int ACT, int BM, int BN>
__global__ void __launch_bounds__(rnncu::Tf32Tile<BM, BN, 2>::kThreads,
                                  rnncu::Tf32Tile<BM, BN, 2>::kMinBlocks)
    rnn_step_tf32_backward(float* __restrict__ grad_z_t, float* __restrict__ dh_out,
                           const float* __restrict__ dh_in, const float* __restrict__ h_t,
                           const float* __restrict__ grad_states_t,
                           const float* __restrict__ w_hh, const int* __restrict__ lengths,
                           int t, int batch, int hidden) {
#ifdef RNNCU_TF32_MMA
  using namespace rnncu;
  using Tile = Tf32Tile<BM, BN, 2>;
  constexpr int kBK = Tile::kBK;
  __shared__ Tf32BackwardShared<BM, BN> tiles;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int wm = (warp / 2) * Tile::kWarpM;
  const int wn = (warp % 2) * Tile::kWarpN;
  const int n0 = blockIdx.x * BN;
  const int m0 = blockIdx.y * BM;
  const long long ld = hidden;
  // One column of blocks stores dz: each (row tile, K) pair is then written exactly once.
  const bool store_dz = blockIdx.x == 0;

  Tf32FragC acc[Tile::kFragM][Tile::kFragN];
#pragma unroll
  for (int i = 0; i < Tile::kFragM; ++i)
#pragma unroll
    for (int j = 0; j < Tile::kFragN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  // The A slice is prefetched as its raw inputs; dz is formed at the shared store.
  float g_next[Tile::A_PER];
  float h_next[Tile::A_PER];
  float w_next[Tile::W_PER];
  auto load_slice = [&](int k0) {
#pragma unroll
    for (int r = 0; r < Tile::A_PER; ++r) {
      const int e = tid + r * Tile::kThreads;
      const int m = m0 + e / kBK;
      const int k = k0 + e % kBK;
      float g = 0.0f;
      float h = 0.0f;
      if (m < batch && k < hidden) {
        const long long off = m * ld + k;
        g = dh_in[off];
        if (grad_states_t != nullptr) g = grad_states_t[off] + g;
        h = h_t[off];
      }
      g_next[r] = g;
      h_next[r] = h;
    }
    // W rows are contiguous along n: n fastest across consecutive threads.
#pragma unroll
    for (int r = 0; r < Tile::W_PER; ++r) {
      const int e = tid + r * Tile::kThreads;
      const int k = k0 + e / BN;
      const int n = n0 + e % BN;
      w_next[r] = (n < hidden && k < hidden) ? __ldg(w_hh + k * ld + n) : 0.0f;
    }
  };

  load_slice(0);
  for (int k0 = 0; k0 < hidden; k0 += kBK) {
#pragma unroll
    for (int r = 0; r < Tile::A_PER; ++r) {
      const int e = tid + r * Tile::kThreads;
      const int m = m0 + e / kBK;
      const int k = k0 + e % kBK;
      float dz = 0.0f;
      if (m < batch && k < hidden) {
        // A select, not a multiply by valid: padding steps give exactly 0 even when the
        // ignored incoming gradient is not finite, as in the reference.
        dz = step_is_valid(lengths, m, t)
                 ? g_next[r] * activation_grad_from_output<ACT>(h_next[r])
                 : 0.0f;
        if (store_dz) grad_z_t[m * ld + k] = dz;  // float32: the weight gradients use it
      }
      tiles.a[e / kBK][e % kBK] = wmma::__float_to_tf32(dz);
    }
#pragma unroll
    for (int r = 0; r < Tile::W_PER; ++r) {
      const int e = tid + r * Tile::kThreads;
      tiles.w[e / BN][e % BN] = wmma::__float_to_tf32(w_next[r]);
    }
    __syncthreads();
    if (k0 + kBK < hidden) load_slice(k0 + kBK);
    multiply_tf32_slice<BM, BN, wmma::row_major, 2>(tiles.a, &tiles.w[0][0], Tile::kNPitch, 1,
                                                    Tile::kNPitch, acc, wm, wn);
    __syncthreads();
  }
  store_accumulators<BM, BN, 2>(tiles.c, acc, wm, wn);
  __syncthreads();

#pragma unroll
  for (int r = 0; r < Tile::C_PER; ++r) {
    const int e = tid + r * Tile::kThreads;
    const int m = m0 + e / BN;
    const int n = n0 + e % BN;
    if (m >= batch || n >= hidden) continue;
    const long long off = m * ld + n;
    const float carried = tiles.c[e / BN][e % BN];
    // A padding row has dz = 0, so its product is 0 and the carried gradient passes through.
    dh_out[off] = step_is_valid(lengths, m, t) ? carried : carried + dh_in[off];
  }
#else
  __trap();
#endif
}
