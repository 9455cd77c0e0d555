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
// K in slices of kBK. Launch shape: block (256, 1, 1) = a 16 x 16 thread grid, each thread
// owning a (BM/16) x (BN/16) register micro-tile whose rows are ty + 16 i and columns
// tx + 16 j (strided, so shared-memory reads are broadcast or conflict-free and the epilogue's
// global accesses are 16 consecutive elements per row); grid (ceil(H / BN), ceil(B / BM), 1).
// On chip: one A tile (kBK x BM) and one W tile (kBK x BN) in shared memory, both padded by
// one element per row so the transposed stores do not collide on a bank; the accumulators
// and the next K slice (prefetched into registers while the current slice is multiplied).
//
// Offsets within a (B, H) matrix are 64-bit; the step offset t * B * H is applied by the
// host to the pointers, so T * B * H beyond 2^31 is fine.
#include "common.cuh"

namespace rnncu {

constexpr int kStepThreads = 256;
constexpr int kStepThreadsX = 16;  // threads along the H (output column) axis
constexpr int kStepThreadsY = 16;  // threads along the B (batch row) axis
constexpr int kBK = 16;            // K slice held in shared memory at a time
// Two resident blocks per SM (a 128-register cap): one block's barrier waits overlap the
// other's FMAs. Measured with ptxas -v: without the minimum, ptxas chose 48 registers for
// the fp64 32x32 backward kernel on sm_80 and spilled; with it, no kernel spills.
constexpr int kStepMinBlocks = 2;

template <int BM, int BN>
struct StepTile {
  static_assert(BM % kStepThreadsY == 0 && BN % kStepThreadsX == 0, "tile vs thread grid");
  static constexpr int TM = BM / kStepThreadsY;           // micro-tile rows per thread
  static constexpr int TN = BN / kStepThreadsX;           // micro-tile columns per thread
  static constexpr int A_PER = BM * kBK / kStepThreads;   // A-tile elements loaded per thread
  static constexpr int W_PER = kBK * BN / kStepThreads;   // W-tile elements loaded per thread
  static_assert(A_PER * kStepThreads == BM * kBK, "A tile must split evenly over threads");
  static_assert(W_PER * kStepThreads == BN * kBK, "W tile must split evenly over threads");
};

// acc += As^T Ws over one K slice; As is [kBK][BM + 1], Ws is [kBK][BN + 1].
template <typename T, int BM, int BN>
__device__ __forceinline__ void multiply_slice(const T (*As)[BM + 1], const T (*Ws)[BN + 1],
                                               T (&acc)[StepTile<BM, BN>::TM]
                                                       [StepTile<BM, BN>::TN],
                                               int tx, int ty) {
  using Tile = StepTile<BM, BN>;
#pragma unroll
  for (int kk = 0; kk < kBK; ++kk) {
    T a[Tile::TM];
    T w[Tile::TN];
#pragma unroll
    for (int i = 0; i < Tile::TM; ++i) a[i] = As[kk][ty + kStepThreadsY * i];
#pragma unroll
    for (int j = 0; j < Tile::TN; ++j) w[j] = Ws[kk][tx + kStepThreadsX * j];
#pragma unroll
    for (int i = 0; i < Tile::TM; ++i)
#pragma unroll
      for (int j = 0; j < Tile::TN; ++j) acc[i][j] = fma(a[i], w[j], acc[i][j]);
  }
}

}  // namespace rnncu

// Forward step. h_out: states[t] (B, H), Z_t on entry, h_t on return. h_prev: h_{t-1} (B, H),
// a different buffer (states[t -+ 1] or h0). lengths: int32 (B,) or nullptr.
template <typename T, int ACT, int BM, int BN>
__global__ void __launch_bounds__(rnncu::kStepThreads, rnncu::kStepMinBlocks)
    rnn_step_forward(T* __restrict__ h_out, const T* __restrict__ h_prev,
                     const T* __restrict__ w_hh, const int* __restrict__ lengths, int t,
                     int batch, int hidden) {
  using namespace rnncu;
  using Tile = StepTile<BM, BN>;
  __shared__ T As[kBK][BM + 1];  // As[k][m] = h_prev[m0 + m, k0 + k]
  __shared__ T Ws[kBK][BN + 1];  // Ws[k][n] = W[n0 + n, k0 + k]  (W^T slice)

  const int tid = threadIdx.x;
  const int tx = tid % kStepThreadsX;
  const int ty = tid / kStepThreadsX;
  const int n0 = blockIdx.x * BN;
  const int m0 = blockIdx.y * BM;
  const long long ld = hidden;

  T acc[Tile::TM][Tile::TN];
#pragma unroll
  for (int i = 0; i < Tile::TM; ++i)
#pragma unroll
    for (int j = 0; j < Tile::TN; ++j) acc[i][j] = T(0);

  // Both tiles are read with k fastest across consecutive threads: h_prev rows and W rows
  // are contiguous along k.
  T a_next[Tile::A_PER];
  T w_next[Tile::W_PER];
  auto load_slice = [&](int k0) {
#pragma unroll
    for (int r = 0; r < Tile::A_PER; ++r) {
      const int e = tid + r * kStepThreads;
      const int m = m0 + e / kBK;
      const int k = k0 + e % kBK;
      a_next[r] = (m < batch && k < hidden) ? h_prev[m * ld + k] : T(0);
    }
#pragma unroll
    for (int r = 0; r < Tile::W_PER; ++r) {
      const int e = tid + r * kStepThreads;
      const int n = n0 + e / kBK;
      const int k = k0 + e % kBK;
      w_next[r] = (n < hidden && k < hidden) ? __ldg(w_hh + n * ld + k) : T(0);
    }
  };

  load_slice(0);
  for (int k0 = 0; k0 < hidden; k0 += kBK) {
#pragma unroll
    for (int r = 0; r < Tile::A_PER; ++r) {
      const int e = tid + r * kStepThreads;
      As[e % kBK][e / kBK] = a_next[r];
    }
#pragma unroll
    for (int r = 0; r < Tile::W_PER; ++r) {
      const int e = tid + r * kStepThreads;
      Ws[e % kBK][e / kBK] = w_next[r];
    }
    __syncthreads();
    // Issue the next slice's global loads before the FMAs so their latency overlaps them.
    if (k0 + kBK < hidden) load_slice(k0 + kBK);
    multiply_slice<T, BM, BN>(As, Ws, acc, tx, ty);
    // The next iteration overwrites the tiles this one is still reading.
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < Tile::TM; ++i) {
    const int m = m0 + ty + kStepThreadsY * i;
    if (m >= batch) continue;
    const bool valid = step_is_valid(lengths, m, t);
#pragma unroll
    for (int j = 0; j < Tile::TN; ++j) {
      const int n = n0 + tx + kStepThreadsX * j;
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
template <typename T, int ACT, int BM, int BN>
__global__ void __launch_bounds__(rnncu::kStepThreads, rnncu::kStepMinBlocks)
    rnn_step_backward(T* __restrict__ grad_z_t, T* __restrict__ dh_out,
                      const T* __restrict__ dh_in, const T* __restrict__ h_t,
                      const T* __restrict__ grad_states_t, const T* __restrict__ w_hh,
                      const int* __restrict__ lengths, int t, int batch, int hidden) {
  using namespace rnncu;
  using Tile = StepTile<BM, BN>;
  __shared__ T As[kBK][BM + 1];  // As[k][m] = dz_t[m0 + m, k0 + k]
  __shared__ T Ws[kBK][BN + 1];  // Ws[k][n] = W[k0 + k, n0 + n]

  const int tid = threadIdx.x;
  const int tx = tid % kStepThreadsX;
  const int ty = tid / kStepThreadsX;
  const int n0 = blockIdx.x * BN;
  const int m0 = blockIdx.y * BM;
  const long long ld = hidden;
  // One column of blocks stores dz: each (row tile, K) pair is then written exactly once.
  const bool store_dz = blockIdx.x == 0;

  T acc[Tile::TM][Tile::TN];
#pragma unroll
  for (int i = 0; i < Tile::TM; ++i)
#pragma unroll
    for (int j = 0; j < Tile::TN; ++j) acc[i][j] = T(0);

  // The A slice is prefetched as its three raw inputs; dz is formed at the shared store.
  T g_next[Tile::A_PER];
  T h_next[Tile::A_PER];
  T w_next[Tile::W_PER];
  auto load_slice = [&](int k0) {
#pragma unroll
    for (int r = 0; r < Tile::A_PER; ++r) {
      const int e = tid + r * kStepThreads;
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
      const int e = tid + r * kStepThreads;
      const int k = k0 + e / BN;
      const int n = n0 + e % BN;
      w_next[r] = (n < hidden && k < hidden) ? __ldg(w_hh + k * ld + n) : T(0);
    }
  };

  load_slice(0);
  for (int k0 = 0; k0 < hidden; k0 += kBK) {
#pragma unroll
    for (int r = 0; r < Tile::A_PER; ++r) {
      const int e = tid + r * kStepThreads;
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
      As[e % kBK][e / kBK] = dz;
    }
#pragma unroll
    for (int r = 0; r < Tile::W_PER; ++r) {
      const int e = tid + r * kStepThreads;
      Ws[e / BN][e % BN] = w_next[r];
    }
    __syncthreads();
    if (k0 + kBK < hidden) load_slice(k0 + kBK);
    multiply_slice<T, BM, BN>(As, Ws, acc, tx, ty);
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < Tile::TM; ++i) {
    const int m = m0 + ty + kStepThreadsY * i;
    if (m >= batch) continue;
    const bool valid = step_is_valid(lengths, m, t);
#pragma unroll
    for (int j = 0; j < Tile::TN; ++j) {
      const int n = n0 + tx + kStepThreadsX * j;
      if (n >= hidden) continue;
      const long long off = m * ld + n;
      // A padding row has dz = 0, so acc is 0 there and the carried gradient passes through.
      dh_out[off] = valid ? acc[i][j] : acc[i][j] + dh_in[off];
    }
  }
}
