// kernels/rnn_step.cu: one launch per time step of a vanilla RNN, forward and backward.
//
// Forward, step t (B rows, H units, W = W_hh stored (H, H) as [j][k]):
//     h_t[b, j] = valid(b, t) ? act(Z_t[b, j] + sum_k h_{t-1}[b, k] W[j, k]) : h_{t-1}[b, j]
// in place: `h_out` holds Z_t on entry (x_t W_ih^T + both biases) and h_t on return.
//
// Backward, step t, with g = grad_states_t + dh_t (grad_states_t may be absent = 0):
//     dz_t[b, k]       = valid(b, t) ? g[b, k] * act'(h_t[b, k]) : 0         -> grad_z_t
//     dh_{t-1}[b, j]   = sum_k dz_t[b, k] W[k, j] + (valid(b, t) ? 0 : dh_t[b, j])
// dz_t is formed while the A tile is loaded; the blocks of column tile 0 also store it to
// grad_z_t, so every element of grad_z_t is written exactly once. dh_t and dh_{t-1} must be
// different buffers (the caller ping-pongs two): other blocks still read dh_t while this one
// writes dh_{t-1}.
//
// Both are a (B x H) = (B x K) (K x H) product with K = H, tiled as BM x BN outputs per block,
// K in slices of kBK. A block has (BM / TM) x (BN / TN) threads; thread (tx, ty) owns the
// TM x TN register micro-tile of rows ty * TM + i and columns tx * TN + j, contiguous so that
// each k of the inner loop reads its TM values of A and TN values of W from shared memory
// with 16-byte loads (TM, TN = 4 in float: 2 loads for 16 FMAs; with one scalar load per
// value, 8 per 16, shared-memory bandwidth rather than the FMA pipe would bound the loop).
// Launch shape: block (step_threads, 1, 1), grid (ceil(H / BN), ceil(B / BM), 1);
// kernel_loader.STEP_TILES lists the instantiated (BM, BN, TM, TN).
// On chip: one A tile (kBK x BM) and one W tile (kBK x BN) in shared memory, each row padded
// by 16 bytes (rows stay 16-byte aligned, and the transposed tile stores see at most two-way
// bank conflicts), the accumulators, and the next K slice (prefetched into registers while
// the current slice is multiplied).
//
// Every output sums its K products in ascending k with one fused multiply-add each, whatever
// the tile: the tiles give identical bits.
//
// Offsets within a (B, H) matrix are 64-bit; the step offset t * B * H is applied by the
// host to the pointers, so T * B * H beyond 2^31 is fine.
#include "common.cuh"

namespace rnncu {

// A_IN: the values prefetched per element of the A slice: 1 forward (h_{t-1}), 2 backward (the
// incoming gradient and h_t, from which dz is formed at the shared store).
template <typename T, int BM, int BN, int TM, int TN, int A_IN = 1>
struct StepTile {
  static_assert(BM % TM == 0 && BN % TN == 0, "micro-tile vs tile");
  static constexpr int kThreadsX = BN / TN;  // threads along H (output columns)
  static constexpr int kThreads = (BM / TM) * kThreadsX;
  static_assert(kThreads % 32 == 0 && kThreads <= 256, "whole warps, at most 256 threads");
  // Resident blocks per SM that ptxas must allow: 512 threads' worth in float (a 128-register
  // cap), so one block's barrier waits overlap another's FMAs; 384 in double, whose 4 x 4
  // tiles need more than 128 registers (up to 170, or 255 for 256 threads). ptxas chose 48
  // registers for an fp64 tile on sm_80 without any minimum, and spilled.
  static constexpr int kMinBlocks = (sizeof(T) == 4 ? 512 : 384) / kThreads;
  // The K slice held in shared memory at a time: 16, so that a slice's FMAs (256 per thread)
  // outlast the L2 latency of the next slice's loads even with one warp per scheduler (a
  // 128-thread block alone on its SM); 8 where 16 would have each thread prefetch more than
  // 12 32-bit words of the next slice (ptxas spilled: NVRTC 13.0, the one PyTorch's CUDA 13
  // wheels pin, spilled the float 64 x 32 backward at 20 words, whose A slice is two inputs).
  static constexpr int kPrefetchWords =
      (A_IN * BM + BN) * 16 / kThreads * static_cast<int>(sizeof(T) / 4);
  static constexpr int kBK = kPrefetchWords <= 12 ? 16 : 8;
  static constexpr int kPad = 16 / static_cast<int>(sizeof(T));
  static constexpr int A_PER = BM * kBK / kThreads;  // A-tile elements loaded per thread
  static constexpr int W_PER = kBK * BN / kThreads;  // W-tile elements loaded per thread
  static_assert(A_PER * kThreads == BM * kBK, "A tile must split evenly over threads");
  static_assert(W_PER * kThreads == BN * kBK, "W tile must split evenly over threads");
};

// The block's shared tiles; aligned so that a fragment of 16 bytes is one load.
template <typename T, int BM, int BN, int TM, int TN, int A_IN>
struct __align__(16) StepShared {
  using Tile = StepTile<T, BM, BN, TM, TN, A_IN>;
  T a[Tile::kBK][BM + Tile::kPad];  // a[k][m]: A[m0 + m, k0 + k]
  T w[Tile::kBK][BN + Tile::kPad];  // w[k][n]: W^T (fwd) / W (bwd) slice
};

// dst[0..N) = src[0..N): 16-byte loads where N values fill them (src is then 16-byte
// aligned: the row starts are, and the fragment offset is a multiple of N).
template <typename T, int N>
__device__ __forceinline__ void load_fragment(T (&dst)[N], const T* src) {
  constexpr int kWidth = 16 / static_cast<int>(sizeof(T));
  if constexpr (N % kWidth == 0) {
    using V = typename Vec16<T>::type;
#pragma unroll
    for (int v = 0; v < N / kWidth; ++v) {
      Vec16<T>::unpack(&dst[v * kWidth], reinterpret_cast<const V*>(src)[v]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) dst[i] = src[i];
  }
}

// acc += A^T W over one K slice of the shared tiles.
template <typename T, int BM, int BN, int TM, int TN, int A_IN>
__device__ __forceinline__ void multiply_slice(const StepShared<T, BM, BN, TM, TN, A_IN>& s,
                                               T (&acc)[TM][TN], int tx, int ty) {
#pragma unroll
  for (int kk = 0; kk < StepTile<T, BM, BN, TM, TN, A_IN>::kBK; ++kk) {
    T a[TM];
    T w[TN];
    load_fragment<T, TM>(a, &s.a[kk][ty * TM]);
    load_fragment<T, TN>(w, &s.w[kk][tx * TN]);
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = fma(a[i], w[j], acc[i][j]);
  }
}

}  // namespace rnncu

// Forward step. h_out: states[t] (B, H), Z_t on entry, h_t on return. h_prev: h_{t-1} (B, H),
// a different buffer (states[t -+ 1] or h0). lengths: int32 (B,) or nullptr.
template <typename T, int ACT, int BM, int BN, int TM, int TN>
__global__ void __launch_bounds__(rnncu::StepTile<T, BM, BN, TM, TN>::kThreads,
                                  rnncu::StepTile<T, BM, BN, TM, TN>::kMinBlocks)
    rnn_step_forward(T* __restrict__ h_out, const T* __restrict__ h_prev,
                     const T* __restrict__ w_hh, const int* __restrict__ lengths, int t,
                     int batch, int hidden) {
  using namespace rnncu;
  using Tile = StepTile<T, BM, BN, TM, TN>;
  constexpr int kBK = Tile::kBK;
  __shared__ StepShared<T, BM, BN, TM, TN, 1> tiles;  // w[k][n] = W[n0 + n, k0 + k]

  const int tid = threadIdx.x;
  const int tx = tid % Tile::kThreadsX;
  const int ty = tid / Tile::kThreadsX;
  const int n0 = blockIdx.x * BN;
  const int m0 = blockIdx.y * BM;
  const long long ld = hidden;

  T acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

  // Both tiles are read with k fastest across consecutive threads: h_prev rows and W rows
  // are contiguous along k.
  T a_next[Tile::A_PER];
  T w_next[Tile::W_PER];
  auto load_slice = [&](int k0) {
#pragma unroll
    for (int r = 0; r < Tile::A_PER; ++r) {
      const int e = tid + r * Tile::kThreads;
      const int m = m0 + e / kBK;
      const int k = k0 + e % kBK;
      a_next[r] = (m < batch && k < hidden) ? h_prev[m * ld + k] : T(0);
    }
#pragma unroll
    for (int r = 0; r < Tile::W_PER; ++r) {
      const int e = tid + r * Tile::kThreads;
      const int n = n0 + e / kBK;
      const int k = k0 + e % kBK;
      w_next[r] = (n < hidden && k < hidden) ? __ldg(w_hh + n * ld + k) : T(0);
    }
  };

  load_slice(0);
  for (int k0 = 0; k0 < hidden; k0 += kBK) {
#pragma unroll
    for (int r = 0; r < Tile::A_PER; ++r) {
      const int e = tid + r * Tile::kThreads;
      tiles.a[e % kBK][e / kBK] = a_next[r];
    }
#pragma unroll
    for (int r = 0; r < Tile::W_PER; ++r) {
      const int e = tid + r * Tile::kThreads;
      tiles.w[e % kBK][e / kBK] = w_next[r];
    }
    __syncthreads();
    // Issue the next slice's global loads before the FMAs so their latency overlaps them.
    if (k0 + kBK < hidden) load_slice(k0 + kBK);
    multiply_slice(tiles, acc, tx, ty);
    // The next iteration overwrites the tiles this one is still reading.
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int m = m0 + ty * TM + i;
    if (m >= batch) continue;
    const bool valid = step_is_valid(lengths, m, t);
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int n = n0 + tx * TN + j;
      if (n >= hidden) continue;
      const long long off = m * ld + n;
      // Same operation order as the reference: (Z + h W^T), then act.
      h_out[off] = valid ? activate<ACT>(h_out[off] + acc[i][j]) : h_prev[off];
    }
  }
}

// Backward step. grad_z_t: grad_z[t] (B, H), written. dh_out: dh_{t-1} (B, H), written.
// dh_in: dh_t (B, H), read only. h_t: states[t] (B, H). grad_states_t: grad_states[t] (B, H)
// or nullptr (= 0). lengths: int32 (B,) or nullptr.
template <typename T, int ACT, int BM, int BN, int TM, int TN>
__global__ void __launch_bounds__(rnncu::StepTile<T, BM, BN, TM, TN, 2>::kThreads,
                                  rnncu::StepTile<T, BM, BN, TM, TN, 2>::kMinBlocks)
    rnn_step_backward(T* __restrict__ grad_z_t, T* __restrict__ dh_out,
                      const T* __restrict__ dh_in, const T* __restrict__ h_t,
                      const T* __restrict__ grad_states_t, const T* __restrict__ w_hh,
                      const int* __restrict__ lengths, int t, int batch, int hidden) {
  using namespace rnncu;
  using Tile = StepTile<T, BM, BN, TM, TN, 2>;
  constexpr int kBK = Tile::kBK;
  __shared__ StepShared<T, BM, BN, TM, TN, 2> tiles;  // a[k][m] = dz_t[m0 + m, k0 + k],
                                                      // w[k][n] = W[k0 + k, n0 + n]

  const int tid = threadIdx.x;
  const int tx = tid % Tile::kThreadsX;
  const int ty = tid / Tile::kThreadsX;
  const int n0 = blockIdx.x * BN;
  const int m0 = blockIdx.y * BM;
  const long long ld = hidden;
  // One column of blocks stores dz: each (row tile, K) pair is then written exactly once.
  const bool store_dz = blockIdx.x == 0;

  T acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

  // The A slice is prefetched as its three raw inputs; dz is formed at the shared store.
  T g_next[Tile::A_PER];
  T h_next[Tile::A_PER];
  T w_next[Tile::W_PER];
  auto load_slice = [&](int k0) {
#pragma unroll
    for (int r = 0; r < Tile::A_PER; ++r) {
      const int e = tid + r * Tile::kThreads;
      const int m = m0 + e / kBK;
      const int k = k0 + e % kBK;
      T g = T(0);
      T h = T(0);
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
      w_next[r] = (n < hidden && k < hidden) ? __ldg(w_hh + k * ld + n) : T(0);
    }
  };

  load_slice(0);
  for (int k0 = 0; k0 < hidden; k0 += kBK) {
#pragma unroll
    for (int r = 0; r < Tile::A_PER; ++r) {
      const int e = tid + r * Tile::kThreads;
      const int m = m0 + e / kBK;
      const int k = k0 + e % kBK;
      T dz = T(0);
      if (m < batch && k < hidden) {
        // A select, not a multiply by valid: padding steps give exactly 0 even when the
        // ignored incoming gradient is not finite, as in the reference.
        dz = step_is_valid(lengths, m, t)
                 ? g_next[r] * activation_grad_from_output<ACT>(h_next[r])
                 : T(0);
        if (store_dz) grad_z_t[m * ld + k] = dz;
      }
      tiles.a[e % kBK][e / kBK] = dz;
    }
#pragma unroll
    for (int r = 0; r < Tile::W_PER; ++r) {
      const int e = tid + r * Tile::kThreads;
      tiles.w[e / BN][e % BN] = w_next[r];
    }
    __syncthreads();
    if (k0 + kBK < hidden) load_slice(k0 + kBK);
    multiply_slice(tiles, acc, tx, ty);
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int m = m0 + ty * TM + i;
    if (m >= batch) continue;
    const bool valid = step_is_valid(lengths, m, t);
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int n = n0 + tx * TN + j;
      if (n >= hidden) continue;
      const long long off = m * ld + n;
      // A padding row has dz = 0, so acc is 0 there and the carried gradient passes through.
      dh_out[off] = valid ? acc[i][j] : acc[i][j] + dh_in[off];
    }
  }
}
