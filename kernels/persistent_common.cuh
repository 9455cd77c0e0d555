// Persistent whole-sequence RNN kernels: the shared device code.
//
// The three kernel families (persistent_rnn.cu: batch-sliced, one block runs its batch rows
// through all steps with block barriers only; persistent_cluster.cu: unit-sliced within a
// thread-block cluster (sm_90), h_t pushed to every block of the cluster through distributed
// shared memory, a cluster barrier per step; persistent_grid.cu: unit-sliced, the blocks of
// a cooperative grid each own a slice of hidden units, exchange h_t through global memory
// and meet at a grid barrier per step) compute one product per step,
//
//     out[b, u] = sum_j in[b, j] * M[u, j]     (M = W_hh for forward, W_hh^T for backward)
//
// with M held in REGISTERS for the whole launch, so the weights are read from device memory
// once per launch instead of once per step.
//
// Thread layout inside a block (blockDim.x = nu * ks, a multiple of 32):
//   thread = u_local * ks + k,  u_local in [0, nu) picks the output unit,
//                               k in [0, ks) picks one of ks slices of the reduction index j.
//   The ks threads of one unit are adjacent lanes of one warp (ks is a power of two <= 32),
//   so their partial sums are combined with __shfl_xor_sync: a fixed butterfly, the same
//   order on every run (deterministic, no atomics).
//   Slice k holds j in [k*KC, (k+1)*KC): KC weights per thread, KC a template constant so the
//   weight array stays in registers (only compile-time indices touch it).
//
// Shared-memory layout of one step's input rows (RB rows of the padded length hp = ks * KC):
//   element (r, j) lives at (j / KC) * kChunkStride + r * KC + (j % KC).
//   A thread's data for all its rows is one contiguous chunk, so every shared load in the
//   inner loop has a compile-time offset; kChunkStride is padded so that consecutive chunks
//   start 16 bytes apart modulo 128: the (up to 8) different k of one quarter-warp hit
//   different banks with 16-byte loads. Positions with j >= hidden hold zero, and the weights
//   there are zero too, so padding contributes exactly 0 (never 0 * NaN: the zeros are
//   written, not left uninitialised).
//
// The epilogue of row r (activation, masking, stores) runs on lane k == r % ks of each unit,
// after the butterfly has left the full sum in every lane.
#pragma once

#include "common.cuh"

namespace rnncu_persistent {

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
    using type = float4;
    static constexpr int width = 4;
};
template <>
struct VecOf<double> {
    using type = double2;
    static constexpr int width = 2;
};

// The largest block a (T, KC, RB) instantiation may be launched with, from a deliberately
// generous register estimate (in 32-bit registers): 1.5 per weight and 12 per row cover the
// weights, two partial sums, Z or dh, the carry and the shared loads ptxas hoists out of the
// unrolled product, plus 32 for addresses and loop state. A tighter bound made ptxas spill
// (it hoists every shared load of the unrolled loop when allowed 128 registers). The block
// size is the largest of 1024 / 512 / 256 whose threads * registers fit the 64K-register
// file. Checked against ptxas: no spills on sm_80 and sm_90 for every instantiated name
// (tests/test_persistent_dispatch.py). persistent.py mirrors this (max_threads_for): change
// both together.
template <typename T, int KC, int RB>
struct LaunchLimits {
    static constexpr int kWords = static_cast<int>(sizeof(T)) / 4;
    static constexpr int kRegisters = (3 * KC / 2 + 12 * RB) * kWords + 32;
    static constexpr int kMaxThreads = kRegisters <= 64 ? 1024 : (kRegisters <= 128 ? 512 : 256);
};

// Shared-buffer geometry for RB rows and KC-element slices (see the header comment).
template <typename T, int KC, int RB>
struct BufferLayout {
    static constexpr int kWidth = VecOf<T>::width;
    static constexpr int kChunkBytes = RB * KC * static_cast<int>(sizeof(T));
    static constexpr int kPadBytes = ((16 - kChunkBytes) % 128 + 128) % 128;
    static constexpr int kChunkStride = (kChunkBytes + kPadBytes) / static_cast<int>(sizeof(T));
    __device__ __forceinline__ static int pos(int r, int j) {
        return (j / KC) * kChunkStride + r * KC + (j % KC);
    }
};

// The activation and its derivative are the step kernels' own (common.cuh), chosen here at
// run time (relu is a launch argument): one definition, so that every path agrees on NaN
// (relu keeps it, as numpy.maximum does) and on the derivative at 0. A copy of its own had
// let the persistent relu turn NaN into 0.
template <typename T>
__device__ __forceinline__ T activate(T x, int relu) {
    return relu ? rnncu::activate<rnncu::kRelu>(x) : rnncu::activate<rnncu::kTanh>(x);
}

// act'(pre-activation) expressed through the output h = act(pre): tanh 1 - h^2, relu h > 0.
template <typename T>
__device__ __forceinline__ T activation_grad(T h, int relu) {
    return relu ? rnncu::activation_grad_from_output<rnncu::kRelu>(h)
                : rnncu::activation_grad_from_output<rnncu::kTanh>(h);
}

template <typename T>
__device__ __forceinline__ T fma_vec(T acc, const T* w, typename VecOf<T>::type x);
template <>
__device__ __forceinline__ float fma_vec<float>(float acc, const float* w, float4 x) {
    acc = fmaf(w[0], x.x, acc);
    acc = fmaf(w[1], x.y, acc);
    acc = fmaf(w[2], x.z, acc);
    return fmaf(w[3], x.w, acc);
}
template <>
__device__ __forceinline__ double fma_vec<double>(double acc, const double* w, double2 x) {
    acc = fma(w[0], x.x, acc);
    return fma(w[1], x.y, acc);
}

// Load this thread's KC weights: M[u, j] for j in its slice (forward: M = W_hh, read
// w_hh[u, j]; backward: M = W_hh^T, read w_hh[j, u]). Out-of-range entries are zero.
template <typename T, int KC, bool TRANSPOSED>
__device__ __forceinline__ void load_weights(T (&w)[KC], const T* __restrict__ w_hh, int hidden,
                                             int u, int k) {
#pragma unroll
    for (int c = 0; c < KC; ++c) {
        const int j = k * KC + c;
        T value = T(0);
        if (u < hidden && j < hidden) {
            value = TRANSPOSED ? w_hh[static_cast<long long>(j) * hidden + u]
                               : w_hh[static_cast<long long>(u) * hidden + j];
        }
        w[c] = value;
    }
}

// sums[r] = sum over all j of in[r, j] * M[u, j], identical in all ks lanes of the unit.
// Two partial sums per row (even / odd vectors) shorten the dependent FMA chain; the order is
// fixed, so results are bitwise reproducible.
template <typename T, int KC, int RB>
__device__ __forceinline__ void matvec_rows(T (&sums)[RB], const T (&w)[KC],
                                            const T* __restrict__ buf, int k, int ks) {
    using Layout = BufferLayout<T, KC, RB>;
    using V = typename VecOf<T>::type;
    constexpr int kW = Layout::kWidth;
    const T* chunk = buf + k * Layout::kChunkStride;
    T even[RB];
    T odd[RB];
#pragma unroll
    for (int r = 0; r < RB; ++r) {
        even[r] = T(0);
        odd[r] = T(0);
    }
#pragma unroll
    for (int v = 0; v < KC / kW; ++v) {
#pragma unroll
        for (int r = 0; r < RB; ++r) {
            const V x = *reinterpret_cast<const V*>(chunk + r * KC + v * kW);
            if (v & 1) {
                odd[r] = fma_vec<T>(odd[r], &w[v * kW], x);
            } else {
                even[r] = fma_vec<T>(even[r], &w[v * kW], x);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RB; ++r) {
        T s = even[r] + odd[r];
        // Butterfly over the ks adjacent lanes of this unit: every lane ends with the same
        // bits because each level adds the same two operands (addition is commutative).
        // Unrolled over the five possible levels; the predicate is uniform across the warp.
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) {
            if (offset < ks) s += __shfl_xor_sync(0xffffffffu, s, offset);
        }
        sums[r] = s;
    }
}

// Copy RB rows (row0 ..) of a (batch, hidden) matrix from global memory into the shared
// layout, zero-filling j >= hidden and rows >= batch. Reads go through L2 (__ldcg): the rows
// were written by other blocks during this launch, and L1 is not coherent across SMs, so a
// stale L1 line (e.g. one that held Z before it was overwritten) must never be read.
template <typename T, int KC, int RB>
__device__ __forceinline__ void gather_rows(T* __restrict__ buf, const T* src,
                                            int row0, int batch, int hidden, int hp) {
    using Layout = BufferLayout<T, KC, RB>;
    using V = typename VecOf<T>::type;
    constexpr int kW = Layout::kWidth;
    if (hidden % kW == 0 && reinterpret_cast<unsigned long long>(src) % 16 == 0) {
        // 16-byte path: a vector never straddles a KC chunk (KC % kW == 0) and every row
        // starts 16-byte aligned (hidden % kW == 0 and src is: a C-contiguous view that
        // starts at an odd element, e.g. flat[1:].reshape(T, B, H), takes the scalar path
        // instead of faulting with a misaligned address).
#pragma unroll
        for (int r = 0; r < RB; ++r) {
            const int b = row0 + r;
            for (int j = threadIdx.x * kW; j < hp; j += blockDim.x * kW) {
                V value;
                if (b < batch && j < hidden) {
                    value = __ldcg(reinterpret_cast<const V*>(
                        src + static_cast<long long>(b) * hidden + j));
                } else {
                    value = V{};
                }
                *reinterpret_cast<V*>(buf + Layout::pos(r, j)) = value;
            }
        }
    } else {
#pragma unroll
        for (int r = 0; r < RB; ++r) {
            const int b = row0 + r;
            for (int j = threadIdx.x; j < hp; j += blockDim.x) {
                buf[Layout::pos(r, j)] = (b < batch && j < hidden)
                    ? __ldcg(src + static_cast<long long>(b) * hidden + j)
                    : T(0);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Forward: h_t = act(Z_t + h_{t-1} W_hh^T), in place in states (Z on entry, h on exit).
// GRID == false: the block (batch-sliced, gridDim.x == 1) or the cluster of gridDim.x blocks
//   (cluster kernels: block x owns units [x*nu, (x+1)*nu)) owns every unit of its RB rows;
//   every block holds all of h_{t-1} in a double-buffered shared array written by the
//   epilogues (its own and, in a cluster, its peers'); one exchange barrier per step.
// GRID == true: block (x, y) owns units [x*nu, (x+1)*nu) of rows [y*RB, (y+1)*RB); each step
//   gathers h_{t-1} rows from global memory (states[t-1] or h0) after the grid barrier.
// Sync::grid() is the grid-wide barrier (only called when GRID). Without GRID the rows of
//   h_{t-1} are exchanged on chip: Sync::publish(slot, v) stores v at `slot` of the shared
//   buffer of every block that reads it (this block alone, or every block of a cluster
//   through distributed shared memory) and Sync::exchange() is the barrier that makes the
//   stores visible (__syncthreads(), or the cluster barrier).
// ---------------------------------------------------------------------------------------
template <typename T, int KC, int RB, bool GRID, class Sync>
__device__ __forceinline__ void forward_body(T* states, const T* __restrict__ w_hh,
                                             const T* __restrict__ h0,
                                             const int* __restrict__ lengths, int has_lengths,
                                             int steps, int batch, int hidden, int ks, int relu,
                                             int reverse) {
    using Layout = BufferLayout<T, KC, RB>;
    extern __shared__ __align__(16) unsigned char persistent_smem[];
    T* smem = reinterpret_cast<T*>(persistent_smem);
    const int buf_elems = ks * Layout::kChunkStride;
    const int hp = ks * KC;
    const int k = threadIdx.x & (ks - 1);
    const int nu = blockDim.x / ks;
    const int u = blockIdx.x * nu + threadIdx.x / ks;
    const int row0 = blockIdx.y * RB;
    const long long step_stride = static_cast<long long>(batch) * hidden;

    T w[KC];
    load_weights<T, KC, false>(w, w_hh, hidden, u, k);

    int length[RB];
#pragma unroll
    for (int r = 0; r < RB; ++r) {
        const int b = row0 + r;
        length[r] = b < batch ? (has_lengths ? lengths[b] : steps) : 0;
    }

    if constexpr (!GRID) {
        // Both buffers fully written (zeros in the padding) before the first read. Every
        // block of a cluster loads all of h0 for its rows, so step 0 needs no exchange; the
        // exchange barrier keeps the peers' first pushes (into buffer 1) behind this block's
        // zero-fill.
        for (int i = threadIdx.x; i < 2 * buf_elems; i += blockDim.x) smem[i] = T(0);
        __syncthreads();
#pragma unroll
        for (int r = 0; r < RB; ++r) {
            const int b = row0 + r;
            if (b < batch) {
                for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
                    smem[Layout::pos(r, j)] = h0[static_cast<long long>(b) * hidden + j];
                }
            }
        }
        Sync::exchange();
    }

    for (int s = 0; s < steps; ++s) {
        const int t = reverse ? steps - 1 - s : s;
        T* in = smem + (GRID ? 0 : (s & 1) * buf_elems);
        if constexpr (GRID) {
            const T* src = s == 0 ? h0 : states + (reverse ? t + 1 : t - 1) * step_stride;
            gather_rows<T, KC, RB>(smem, src, row0, batch, hidden, hp);
            __syncthreads();  // the gathered rows are read by every thread of the block
        }
        // Z loads are issued before the product so their latency hides behind it; each
        // (t, b, u) is read and then overwritten by the same thread only.
        T z[RB];
#pragma unroll
        for (int r = 0; r < RB; ++r) {
            const int b = row0 + r;
            const bool mine = (r & (ks - 1)) == k && u < hidden && b < batch;
            z[r] = mine ? __ldcg(states + t * step_stride + static_cast<long long>(b) * hidden + u)
                        : T(0);
        }
        T sums[RB];
        matvec_rows<T, KC, RB>(sums, w, in, k, ks);
        T* next = smem + (((s + 1) & 1) * buf_elems);
#pragma unroll
        for (int r = 0; r < RB; ++r) {
            const int b = row0 + r;
            if ((r & (ks - 1)) == k && u < hidden && b < batch) {
                const T h_prev = in[Layout::pos(r, u)];
                const T h_new = t < length[r] ? activate<T>(z[r] + sums[r], relu) : h_prev;
                states[t * step_stride + static_cast<long long>(b) * hidden + u] = h_new;
                if constexpr (!GRID) Sync::publish(next + Layout::pos(r, u), h_new);
            }
        }
        if constexpr (GRID) {
            // states[t] must be complete and visible before any block gathers it; the grid
            // barrier also keeps this block's shared buffer from being refilled while a
            // thread still reads it. No barrier after the last step: nothing reads after it.
            if (s + 1 < steps) Sync::grid();
        } else {
            // Double buffering needs one barrier per step: it publishes `next` for step s+1,
            // and `next` was last read during step s-1, which every thread (of every block
            // of the cluster) finished before passing the barrier at the end of step s-1 (no
            // write-after-read hazard). In a cluster it also keeps a block from exiting while
            // a peer may still push into its shared memory.
            Sync::exchange();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Backward: walks the steps in the opposite order of the forward pass, with g_t the gradient
// arriving at h_t from outside (grad_states) plus from step t+1 (dh_t):
//     grad_z_t = valid_t * g_t * act'(h_t);  dh_{t-1} = grad_z_t W_hh + (1 - valid_t) dh_t
// dh[r] of (b, u) stays in the register of the lane that owns row r; only grad_z_t is shared
// (through shared memory, the cluster's included, for GRID == false, through grad_z in global
// memory for GRID).
// ---------------------------------------------------------------------------------------
template <typename T, int KC, int RB, bool GRID, class Sync>
__device__ __forceinline__ void backward_body(
    T* grad_z, T* __restrict__ grad_h0, const T* __restrict__ states,
    const T* __restrict__ w_hh, const T* __restrict__ grad_states, int has_grad_states,
    const T* __restrict__ grad_h_last, int has_grad_h_last, const int* __restrict__ lengths,
    int has_lengths, int steps, int batch, int hidden, int ks, int relu, int reverse) {
    using Layout = BufferLayout<T, KC, RB>;
    extern __shared__ __align__(16) unsigned char persistent_smem[];
    T* smem = reinterpret_cast<T*>(persistent_smem);
    const int buf_elems = ks * Layout::kChunkStride;
    const int hp = ks * KC;
    const int k = threadIdx.x & (ks - 1);
    const int nu = blockDim.x / ks;
    const int u = blockIdx.x * nu + threadIdx.x / ks;
    const int row0 = blockIdx.y * RB;
    const long long step_stride = static_cast<long long>(batch) * hidden;

    T w[KC];
    load_weights<T, KC, true>(w, w_hh, hidden, u, k);

    int length[RB];
    T dh[RB];
#pragma unroll
    for (int r = 0; r < RB; ++r) {
        const int b = row0 + r;
        const bool mine = (r & (ks - 1)) == k && u < hidden && b < batch;
        length[r] = b < batch ? (has_lengths ? lengths[b] : steps) : 0;
        dh[r] = (mine && has_grad_h_last) ? grad_h_last[static_cast<long long>(b) * hidden + u]
                                          : T(0);
    }

    if constexpr (!GRID) {
        for (int i = threadIdx.x; i < 2 * buf_elems; i += blockDim.x) smem[i] = T(0);
        // zeros (padding rows and columns) in place before the first write, by this block
        // or, in a cluster, by a peer
        Sync::exchange();
    }

    for (int s = 0; s < steps; ++s) {
        const int t = reverse ? s : steps - 1 - s;
        T* dz_buf = smem + (GRID ? 0 : (s & 1) * buf_elems);
        T carry[RB];
#pragma unroll
        for (int r = 0; r < RB; ++r) {
            const int b = row0 + r;
            carry[r] = T(0);
            if ((r & (ks - 1)) == k && u < hidden && b < batch) {
                const long long i = t * step_stride + static_cast<long long>(b) * hidden + u;
                const T g = has_grad_states ? grad_states[i] + dh[r] : dh[r];
                const bool valid = t < length[r];
                const T dz = valid ? g * activation_grad<T>(states[i], relu) : T(0);
                carry[r] = valid ? T(0) : dh[r];
                grad_z[i] = dz;
                if constexpr (!GRID) Sync::publish(dz_buf + Layout::pos(r, u), dz);
            }
        }
        if constexpr (GRID) {
            // grad_z[t] complete and visible grid-wide before any block gathers it; also
            // every thread of this block has finished reading the shared buffer of step s-1.
            Sync::grid();
            gather_rows<T, KC, RB>(smem, grad_z + t * step_stride, row0, batch, hidden, hp);
            __syncthreads();  // the gathered rows are read by every thread of the block
        } else {
            // Publishes dz_t to the block (the cluster). With double buffering the buffer
            // written next step was last read two steps ago, before the previous barrier;
            // the last step's pushes land before this barrier, so no block exits early.
            Sync::exchange();
        }
        T sums[RB];
        matvec_rows<T, KC, RB>(sums, w, dz_buf, k, ks);
#pragma unroll
        for (int r = 0; r < RB; ++r) dh[r] = sums[r] + carry[r];
    }

#pragma unroll
    for (int r = 0; r < RB; ++r) {
        const int b = row0 + r;
        if ((r & (ks - 1)) == k && u < hidden && b < batch) {
            grad_h0[static_cast<long long>(b) * hidden + u] = dh[r];
        }
    }
}

}  // namespace rnncu_persistent
