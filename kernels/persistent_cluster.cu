// Cluster persistent RNN kernels (sm_90 and newer: thread-block clusters): one launch runs
// all T steps.
//
// persistent_cluster_forward<T, KC, RB, CX>:  h_t = act(Z_t + h_{t-1} W_hh^T), in place in
//   states.
// persistent_cluster_backward<T, KC, RB, CX>: grad_z_t and grad_h0 (see base.py for the
//   formulas).
// Same parameters as persistent_rnn.cu and persistent_grid.cu.
//
// Launch shape: grid (CX, ceil(B / RB)) blocks, block (nu * ks) threads (a multiple of 32, ks a
//   power of two <= 32 with ks * KC >= H, nu * CX >= H), dynamic shared memory
//   2 * ks * BufferLayout<T, KC, RB>::kChunkStride * sizeof(T) bytes (double buffer). The CX
//   blocks of one grid row are one cluster (__cluster_dims__ fixes CX at compile time: CuPy's
//   launch takes no cluster attribute); block x owns hidden units [x * nu, (x + 1) * nu) of
//   the cluster's RB batch rows. Clusters never meet, so the launch is an ordinary one; the
//   hardware places each cluster's blocks on one GPC at once, and persistent.py checks with
//   cuOccupancyMaxActiveClusters that every cluster is resident in one wave.
// On chip for the whole launch: the block's nu rows of W_hh (forward) or nu columns of W_hh
//   (backward) in registers, KC values per thread; ALL H units of h_{t-1} (or dz_t) for the RB
//   rows in each block's shared memory. Each epilogue pushes its outputs into the shared
//   buffers of every block of the cluster (distributed shared memory) and one cluster barrier
//   per step makes them visible: no round trip through global memory or L2 and no grid
//   barrier (on the H200 a cluster barrier costs 0.4 to 0.5 us, a grid barrier 1.0 us:
//   /work/shared/ANCHORS.md).
// Before sm_90 clusters do not exist: the kernels compile there (every kernel file builds for
//   sm_80 and sm_90) but trap, and the planner never picks them.
#include <cooperative_groups.h>

#include "persistent_common.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define RNNCU_CLUSTER_DIMS(cx)
#define RNNCU_HAS_CLUSTERS 0
#else
#define RNNCU_CLUSTER_DIMS(cx) __cluster_dims__(cx, 1, 1)
#define RNNCU_HAS_CLUSTERS 1
#endif

#if RNNCU_HAS_CLUSTERS
namespace rnncu_persistent {
// The cluster's exchange: a value goes to the same offset of every block's dynamic shared
// memory (the buffers have one layout), and the cluster barrier (release / acquire at cluster
// scope) orders those remote stores before the peers' reads.
template <int CX>
struct ClusterExchange {
    template <typename T>
    __device__ static void publish(T* slot, T value) {
        cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
#pragma unroll
        for (int rank = 0; rank < CX; ++rank) *cluster.map_shared_rank(slot, rank) = value;
    }
    __device__ static void exchange() { cooperative_groups::this_cluster().sync(); }
};
}  // namespace rnncu_persistent
#endif

template <typename T, int KC, int RB, int CX>
__global__ void RNNCU_CLUSTER_DIMS(CX)
__launch_bounds__(rnncu_persistent::LaunchLimits<T, KC, RB>::kMaxThreads, 1)
persistent_cluster_forward(T* __restrict__ states, const T* __restrict__ w_hh,
                           const T* __restrict__ h0, const int* __restrict__ lengths,
                           int has_lengths, int steps, int batch, int hidden, int ks, int relu,
                           int reverse) {
#if RNNCU_HAS_CLUSTERS
    rnncu_persistent::forward_body<T, KC, RB, false, rnncu_persistent::ClusterExchange<CX>>(
        states, w_hh, h0, lengths, has_lengths, steps, batch, hidden, ks, relu, reverse);
#else
    __trap();
#endif
}

template <typename T, int KC, int RB, int CX>
__global__ void RNNCU_CLUSTER_DIMS(CX)
__launch_bounds__(rnncu_persistent::LaunchLimits<T, KC, RB>::kMaxThreads, 1)
persistent_cluster_backward(T* __restrict__ grad_z, T* __restrict__ grad_h0,
                            const T* __restrict__ states, const T* __restrict__ w_hh,
                            const T* __restrict__ grad_states, int has_grad_states,
                            const T* __restrict__ grad_h_last, int has_grad_h_last,
                            const int* __restrict__ lengths, int has_lengths, int steps,
                            int batch, int hidden, int ks, int relu, int reverse) {
#if RNNCU_HAS_CLUSTERS
    rnncu_persistent::backward_body<T, KC, RB, false, rnncu_persistent::ClusterExchange<CX>>(
        grad_z, grad_h0, states, w_hh, grad_states, has_grad_states, grad_h_last,
        has_grad_h_last, lengths, has_lengths, steps, batch, hidden, ks, relu, reverse);
#else
    __trap();
#endif
}
