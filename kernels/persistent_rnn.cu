// Batch-sliced persistent RNN kernels (small H): one launch runs all T steps.
//
// persistent_batch_forward<T, KC, RB>:  h_t = act(Z_t + h_{t-1} W_hh^T), in place in states.
// persistent_batch_backward<T, KC, RB>: grad_z_t and grad_h0 (see base.py for the formulas).
//
// Launch shape: grid (1, ceil(B / RB)), block (nu * ks) threads with nu >= H units (padded so
//   the block is a multiple of 32), ks a power of two <= 32 and ks * KC >= H; dynamic shared
//   memory 2 * ks * BufferLayout<T, KC, RB>::kChunkStride * sizeof(T) bytes (double buffer).
//   rnncu/backend/persistent.py (plan_forward / plan_backward) picks KC, RB, ks, nu.
// On chip for the whole launch: all of W_hh (forward) or W_hh^T (backward) in registers,
//   KC values per thread; the RB rows of h_{t-1} (or dz_t) in shared memory.
// Blocks are independent (each owns whole batch rows), so only __syncthreads() is needed,
//   the launch is an ordinary one and any grid size works (extra blocks simply wait for a
//   free multiprocessor).
#include "persistent_common.cuh"

namespace rnncu_persistent {
// The batch-sliced kernels never meet other blocks: the exchange is the block's own shared
// memory and its barrier.
struct BlockExchange {
    template <typename T>
    __device__ static void publish(T* slot, T value) { *slot = value; }
    __device__ static void exchange() { __syncthreads(); }
};
}  // namespace rnncu_persistent

template <typename T, int KC, int RB>
__global__ void __launch_bounds__(rnncu_persistent::LaunchLimits<T, KC, RB>::kMaxThreads, 1)
persistent_batch_forward(T* __restrict__ states, const T* __restrict__ w_hh,
                         const T* __restrict__ h0, const int* __restrict__ lengths,
                         int has_lengths, int steps, int batch, int hidden, int ks, int relu,
                         int reverse) {
    rnncu_persistent::forward_body<T, KC, RB, false, rnncu_persistent::BlockExchange>(
        states, w_hh, h0, lengths, has_lengths, steps, batch, hidden, ks, relu, reverse);
}

template <typename T, int KC, int RB>
__global__ void __launch_bounds__(rnncu_persistent::LaunchLimits<T, KC, RB>::kMaxThreads, 1)
persistent_batch_backward(T* __restrict__ grad_z, T* __restrict__ grad_h0,
                          const T* __restrict__ states, const T* __restrict__ w_hh,
                          const T* __restrict__ grad_states, int has_grad_states,
                          const T* __restrict__ grad_h_last, int has_grad_h_last,
                          const int* __restrict__ lengths, int has_lengths, int steps, int batch,
                          int hidden, int ks, int relu, int reverse) {
    rnncu_persistent::backward_body<T, KC, RB, false, rnncu_persistent::BlockExchange>(
        grad_z, grad_h0, states, w_hh, grad_states, has_grad_states, grad_h_last,
        has_grad_h_last, lengths, has_lengths, steps, batch, hidden, ks, relu, reverse);
}
