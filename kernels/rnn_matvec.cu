// kernels/rnn_matvec.cu: one launch per time step for a small batch (B <= 8 rows per block),
// the same arithmetic as rnn_step.cu's forward and backward kernels and the same arguments.
//
// With a few batch rows a step is a matrix-vector product: it reads all of W (H^2 values,
// from L2) to do 2 B H^2 flops, so its time is the latency and bandwidth of those reads.
// rnn_step.cu's tiles waste most of their rows there (B = 4 in a 16-row tile) and wait one
// L2 round trip per K slice of 16, H / 16 round trips per step. Here a warp owns kUnits
// hidden units and reads their W rows whole, each lane 16 bytes per load, several loads in
// flight, so a step costs a few round trips; the RB rows of h_{t-1} (forward) or dz_t
// (backward) are staged once per block in shared memory.
//
// Forward, step t:  h_t[b, n] = valid ? act(Z_t[b, n] + sum_k h_{t-1}[b, k] W[n, k])
//                                     : h_{t-1}[b, n]          (h_out holds Z_t on entry)
// Backward, step t: dz_t[b, k] = valid ? (grad_states_t + dh_t)[b, k] act'(h_t[b, k]) : 0
//                   dh_{t-1}[b, j] = sum_k dz_t[b, k] W[k, j] + (valid ? 0 : dh_t[b, j])
//   The backward kernel takes W^T (w_t, contiguous) so that it, too, reads rows: the host
//   transposes W once per call. The blocks of column 0 store dz_t to grad_z_t.
//
// Launch shape: block (kMatvecThreads, 1, 1); grid (ceil(H / (kMatvecWarps * kUnits)),
// ceil(B / RB), 1); dynamic shared memory RB * ldh * sizeof(T) bytes, ldh = H rounded up to
// a multiple of 16 bytes.
//
// Sums: lane l accumulates k = l * W + {0..W-1} + 32 W i (W values per 16-byte vector; one
// value per k in the scalar path, used when H is not a multiple of W or a row is not
// 16-byte aligned), then a butterfly over the 32 lanes. The order is fixed, so a run's bits
// repeat; it differs from rnn_step.cu's ascending-k order, so the bits differ from its tiles
// (within rounding).
#include "common.cuh"

namespace rnncu {

constexpr int kMatvecWarps = 8;
constexpr int kMatvecThreads = 32 * kMatvecWarps;
// Without a minimum ptxas capped some instantiations at 40 registers and spilled; two blocks
// per SM allow 128.
constexpr int kMatvecMinBlocks = 2;
constexpr int kUnits = 2;  // hidden units per warp: two W rows in flight per lane
constexpr int kMaxRows = 8;  // RB <= 8: kUnits * RB lanes write the results

// acc[u][r] += (lane's share of) sum_k rows[r][k] * w[n_u, k] for the warp's units
// n_u = n0 + u (rows of w beyond `hidden` count as zero).
template <typename T, int RB, bool VEC>
__device__ __forceinline__ void accumulate_rows(T (&acc)[kUnits][RB], const T* rows, int ldh,
                                                const T* __restrict__ w, int hidden, int n0,
                                                int lane) {
  if constexpr (VEC) {
    using V = typename Vec16<T>::type;
    constexpr int kW = Vec16<T>::kWidth;
    const int vectors = hidden / kW;
#pragma unroll 4
    for (int c = lane; c < vectors; c += 32) {
      T wv[kUnits][kW];
#pragma unroll
      for (int u = 0; u < kUnits; ++u) {
        const int n = n0 + u;
        if (n < hidden) {
          const V* row = reinterpret_cast<const V*>(w + n * static_cast<long long>(hidden));
          Vec16<T>::unpack(wv[u], __ldg(row + c));
        } else {
#pragma unroll
          for (int e = 0; e < kW; ++e) wv[u][e] = T(0);
        }
      }
#pragma unroll
      for (int r = 0; r < RB; ++r) {
        T x[kW];
        Vec16<T>::unpack(x, reinterpret_cast<const V*>(rows + r * ldh)[c]);
#pragma unroll
        for (int u = 0; u < kUnits; ++u)
#pragma unroll
          for (int e = 0; e < kW; ++e) acc[u][r] = fma(wv[u][e], x[e], acc[u][r]);
      }
    }
  } else {
#pragma unroll 4
    for (int k = lane; k < hidden; k += 32) {
      T wv[kUnits];
#pragma unroll
      for (int u = 0; u < kUnits; ++u) {
        const int n = n0 + u;
        wv[u] = n < hidden ? __ldg(w + n * static_cast<long long>(hidden) + k) : T(0);
      }
#pragma unroll
      for (int r = 0; r < RB; ++r) {
        const T x = rows[r * ldh + k];
#pragma unroll
        for (int u = 0; u < kUnits; ++u) acc[u][r] = fma(wv[u], x, acc[u][r]);
      }
    }
  }
}

// The full products for the warp's units and the block's rows: every lane ends with the
// same sums (a butterfly adds the same two operands in every lane).
template <typename T, int RB>
__device__ __forceinline__ void row_products(T (&acc)[kUnits][RB], const T* rows, int ldh,
                                             const T* __restrict__ w, int hidden, int n0,
                                             int lane) {
#pragma unroll
  for (int u = 0; u < kUnits; ++u)
#pragma unroll
    for (int r = 0; r < RB; ++r) acc[u][r] = T(0);
  constexpr int kW = Vec16<T>::kWidth;
  // Uniform over the grid: every W row starts 16-byte aligned when H is a multiple of W.
  if (hidden % kW == 0 && reinterpret_cast<unsigned long long>(w) % 16 == 0) {
    accumulate_rows<T, RB, true>(acc, rows, ldh, w, hidden, n0, lane);
  } else {
    accumulate_rows<T, RB, false>(acc, rows, ldh, w, hidden, n0, lane);
  }
#pragma unroll
  for (int u = 0; u < kUnits; ++u)
#pragma unroll
    for (int r = 0; r < RB; ++r)
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1)
        acc[u][r] += __shfl_xor_sync(0xffffffffu, acc[u][r], offset);
}

template <typename T>
__device__ __forceinline__ int padded_hidden(int hidden) {
  constexpr int kW = Vec16<T>::kWidth;
  return (hidden + kW - 1) / kW * kW;
}

}  // namespace rnncu

// Forward step; the arguments of rnn_step_forward.
template <typename T, int ACT, int RB>
__global__ void __launch_bounds__(rnncu::kMatvecThreads, rnncu::kMatvecMinBlocks)
    rnn_matvec_forward(T* __restrict__ h_out, const T* __restrict__ h_prev,
                       const T* __restrict__ w_hh, const int* __restrict__ lengths, int t,
                       int batch, int hidden) {
  using namespace rnncu;
  static_assert(RB >= 1 && RB <= kMaxRows, "rows per block");
  extern __shared__ __align__(16) unsigned char matvec_smem[];
  T* rows = reinterpret_cast<T*>(matvec_smem);  // rows[r * ldh + k] = h_{t-1}[b0 + r, k]
  const int ldh = padded_hidden<T>(hidden);
  const int b0 = blockIdx.y * RB;
  for (int i = threadIdx.x; i < RB * ldh; i += blockDim.x) {
    const int b = b0 + i / ldh;
    const int k = i % ldh;
    rows[i] = (b < batch && k < hidden) ? h_prev[b * static_cast<long long>(hidden) + k] : T(0);
  }
  __syncthreads();

  const int lane = threadIdx.x % 32;
  const int n0 = (blockIdx.x * kMatvecWarps + threadIdx.x / 32) * kUnits;
  T acc[kUnits][RB];
  row_products<T, RB>(acc, rows, ldh, w_hh, hidden, n0, lane);

  // Lane u * RB + r writes (row r, unit u): RB * kUnits <= 16 lanes, one store each.
#pragma unroll
  for (int u = 0; u < kUnits; ++u) {
#pragma unroll
    for (int r = 0; r < RB; ++r) {
      const int n = n0 + u;
      const int b = b0 + r;
      if (lane == u * RB + r && n < hidden && b < batch) {
        const long long off = b * static_cast<long long>(hidden) + n;
        // Same operation order as the reference: (Z + h W^T), then act.
        h_out[off] = step_is_valid(lengths, b, t) ? activate<ACT>(h_out[off] + acc[u][r])
                                                  : rows[r * ldh + n];
      }
    }
  }
}

// Backward step; the arguments of rnn_step_backward, except that w_t is W^T (contiguous).
template <typename T, int ACT, int RB>
__global__ void __launch_bounds__(rnncu::kMatvecThreads, rnncu::kMatvecMinBlocks)
    rnn_matvec_backward(T* __restrict__ grad_z_t, T* __restrict__ dh_out,
                        const T* __restrict__ dh_in, const T* __restrict__ h_t,
                        const T* __restrict__ grad_states_t, const T* __restrict__ w_t,
                        const int* __restrict__ lengths, int t, int batch, int hidden) {
  using namespace rnncu;
  static_assert(RB >= 1 && RB <= kMaxRows, "rows per block");
  extern __shared__ __align__(16) unsigned char matvec_smem[];
  T* rows = reinterpret_cast<T*>(matvec_smem);  // rows[r * ldh + k] = dz_t[b0 + r, k]
  const int ldh = padded_hidden<T>(hidden);
  const int b0 = blockIdx.y * RB;
  // One column of blocks stores dz: each element of grad_z_t is written exactly once.
  const bool store_dz = blockIdx.x == 0;
  for (int i = threadIdx.x; i < RB * ldh; i += blockDim.x) {
    const int b = b0 + i / ldh;
    const int k = i % ldh;
    T dz = T(0);
    if (b < batch && k < hidden) {
      const long long off = b * static_cast<long long>(hidden) + k;
      // A select, not a multiply by valid: padding steps give exactly 0 even when the
      // ignored incoming gradient is not finite, as in the reference.
      if (step_is_valid(lengths, b, t)) {
        T g = dh_in[off];
        if (grad_states_t != nullptr) g = grad_states_t[off] + g;
        dz = g * activation_grad_from_output<ACT>(h_t[off]);
      }
      if (store_dz) grad_z_t[off] = dz;
    }
    rows[i] = dz;
  }
  __syncthreads();

  const int lane = threadIdx.x % 32;
  const int j0 = (blockIdx.x * kMatvecWarps + threadIdx.x / 32) * kUnits;
  T acc[kUnits][RB];
  row_products<T, RB>(acc, rows, ldh, w_t, hidden, j0, lane);

#pragma unroll
  for (int u = 0; u < kUnits; ++u) {
#pragma unroll
    for (int r = 0; r < RB; ++r) {
      const int j = j0 + u;
      const int b = b0 + r;
      if (lane == u * RB + r && j < hidden && b < batch) {
        const long long off = b * static_cast<long long>(hidden) + j;
        // A padding row has dz = 0, so acc is 0 there and the carried gradient passes through.
        dh_out[off] = step_is_valid(lengths, b, t) ? acc[u][r] : acc[u][r] + dh_in[off];
      }
    }
  }
}
