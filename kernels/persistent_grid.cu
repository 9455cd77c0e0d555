// Grid-synchronised persistent RNN kernels (H too large for one multiprocessor): one
// COOPERATIVE launch runs all T steps.
//
// persistent_grid_forward<T, KC, RB>:  h_t = act(Z_t + h_{t-1} W_hh^T), in place in states.
// persistent_grid_backward<T, KC, RB>: grad_z_t and grad_h0 (see base.py for the formulas).
//
// Launch shape: grid (ceil(H / nu), ceil(B / RB)) blocks, ALL co-resident (cooperative launch;
//   persistent.py checks the occupancy API first), block (nu * ks) threads, a multiple of 32,
//   ks a power of two <= 32 with ks * KC >= H; dynamic shared memory
//   ks * BufferLayout<T, KC, RB>::kChunkStride * sizeof(T) bytes.
//   Block (x, y) owns hidden units [x * nu, (x + 1) * nu) of batch rows [y * RB, (y + 1) * RB).
// On chip for the whole launch: the block's nu rows of W_hh (forward) or nu columns of W_hh
//   (backward) in registers, KC values per thread; RB rows of h_{t-1} (or dz_t) in shared
//   memory, refilled every step from global memory through L2 (__ldcg).
// One grid barrier per step: the step's outputs (states[t] forward, grad_z[t] backward) are
//   the exchange buffer, so no workspace is needed. grid.sync() orders the memory accesses of
//   all blocks; the gathers use __ldcg so that no stale L1 line is ever read.
#include <cooperative_groups.h>

#include "persistent_common.cuh"

namespace rnncu_persistent {
struct CooperativeGridSync {
    __device__ static void grid() { cooperative_groups::this_grid().sync(); }
};
}  // namespace rnncu_persistent

// states (forward) and grad_z (backward) carry no __restrict__: other blocks of this launch
// write the rows each block gathers after the grid barrier, and noalias would let the compiler
// assume the barrier leaves that memory unchanged.
template <typename T, int KC, int RB>
__global__ void __launch_bounds__(rnncu_persistent::LaunchLimits<T, KC, RB>::kMaxThreads, 1)
persistent_grid_forward(T* states, const T* __restrict__ w_hh,
                        const T* __restrict__ h0, const int* __restrict__ lengths,
                        int has_lengths, int steps, int batch, int hidden, int ks, int relu,
                        int reverse) {
    rnncu_persistent::forward_body<T, KC, RB, true, rnncu_persistent::CooperativeGridSync>(
        states, w_hh, h0, lengths, has_lengths, steps, batch, hidden, ks, relu, reverse);
}

template <typename T, int KC, int RB>
__global__ void __launch_bounds__(rnncu_persistent::LaunchLimits<T, KC, RB>::kMaxThreads, 1)
persistent_grid_backward(T* grad_z, T* __restrict__ grad_h0,
                         const T* __restrict__ states, const T* __restrict__ w_hh,
                         const T* __restrict__ grad_states, int has_grad_states,
                         const T* __restrict__ grad_h_last, int has_grad_h_last,
                         const int* __restrict__ lengths, int has_lengths, int steps, int batch,
                         int hidden, int ks, int relu, int reverse) {
    rnncu_persistent::backward_body<T, KC, RB, true, rnncu_persistent::CooperativeGridSync>(
        grad_z, grad_h0, states, w_hh, grad_states, has_grad_states, grad_h_last,
        has_grad_h_last, lengths, has_lengths, steps, batch, hidden, ks, relu, reverse);
}
