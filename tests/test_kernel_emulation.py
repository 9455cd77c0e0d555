"""The host emulation of CUDA (tests/kernel_emulation.py) as a checker: each of its checks and
semantics shown on a small CUDA probe with the fault planted. The kernels' own suites
(tests/test_persistent_emulation.py, tests/test_emulated_device.py) run correct kernels,
which pass just as well on an emulator that lost a check; an emulator grown lenient would
hide the races, missing barriers, out-of-bounds shared writes and reads of unwritten shared
memory it exists to expose. No GPU needed; skipped only where g++ is missing."""

from __future__ import annotations

import ctypes
import shutil
from pathlib import Path

import numpy as np
import pytest
from device_limits import H200
from kernel_emulation import (
    ASCENDING,
    CACHE_ENV,
    DESCENDING,
    RANDOM,
    RUN_AHEAD,
    Compiler,
    KernelEmulation,
    rewrite_shared,
)

from rnncu.backend import persistent

#: one kernel per check, each ``(float* out, int arg)``, compiled once for the module; their
#: ``__shared__`` declarations go through the same rewriting as the kernel files'
PROBES = r"""
#include <cooperative_groups.h>
#include <mma.h>
#include <stdexcept>
namespace cg = cooperative_groups;

__device__ int global_id() { return blockIdx.x * blockDim.x + threadIdx.x; }
__device__ float lane() { return static_cast<float>(threadIdx.x % 32); }

// out[0] counts the records; out[1 + n] is the global id of the n-th thread to get here
__device__ void record(float* out) {
  const int n = static_cast<int>(out[0]);
  out[1 + n] = global_id();
  out[0] = n + 1;
}
__global__ void schedule_order(float* out, int) {
  record(out);
  __syncthreads();
  record(out);
}

__global__ void read_unwritten_dynamic(float* out, int) {
  extern __shared__ float dynamic_floats[];
  out[global_id()] = dynamic_floats[threadIdx.x];
}
__global__ void read_unwritten_static(float* out, int) {
  __shared__ float static_floats[64];
  out[global_id()] = static_floats[threadIdx.x];
}
__global__ void write_dynamic_at(float* out, int index) {
  extern __shared__ float dynamic_written[];
  if (threadIdx.x == 0) dynamic_written[index] = 1.0f;
}
__global__ void write_static_at(float* out, int index) {
  __shared__ float static_written[32];
  if (threadIdx.x == 0) static_written[index] = 1.0f;
}
__global__ void static_48_kb(float* out, int) {
  __shared__ float floats_48_kb[12288];
  floats_48_kb[threadIdx.x] = 1.0f;
  out[global_id()] = floats_48_kb[threadIdx.x];
}
__global__ void static_48_kb_and_4_bytes(float* out, int) {
  __shared__ float floats_over[12289];
  floats_over[threadIdx.x] = 1.0f;
  out[global_id()] = floats_over[threadIdx.x];
}
__global__ void static_two_32_kb(float* out, int) {
  __shared__ float first_32_kb[8192];
  __shared__ float second_32_kb[8192];
  first_32_kb[threadIdx.x] = 1.0f;
  second_32_kb[threadIdx.x] = 2.0f;
  out[global_id()] = first_32_kb[threadIdx.x] + second_32_kb[threadIdx.x];
}
__global__ void static_per_block(float* out, int) {
  __shared__ float block_value[1];
  if (threadIdx.x == 0) block_value[0] = blockIdx.x;
  __syncthreads();
  out[global_id()] = block_value[0];
}

__global__ void divergent_syncthreads(float* out, int) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[global_id()] = 1.0f;
}
__global__ void __cluster_dims__(2, 1, 1) divergent_cluster_sync(float* out, int) {
  auto cluster = cg::this_cluster();
  if (threadIdx.x % 2 == 0) {
    cluster.sync();
  } else {
    cluster.sync();
  }
}
__global__ void divergent_grid_sync(float* out, int) {
  auto grid = cg::this_grid();
  if (blockIdx.x == 0) {
    grid.sync();
  } else {
    grid.sync();
  }
}
__global__ void syncthreads_without_thread_0(float* out, int) {
  if (threadIdx.x != 0) __syncthreads();
  out[global_id()] = 1.0f;
}
__global__ void trap_in_thread_5(float* out, int) {
  if (threadIdx.x == 5) __trap();
  out[global_id()] = 1.0f;
}
__global__ void throw_in_thread_3(float* out, int) {
  if (threadIdx.x == 3) throw std::runtime_error("thrown by thread 3");
  out[global_id()] = 1.0f;
}
__global__ void vector_load_at(float* out, int index) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(out + index));
  out[64 + threadIdx.x] = v.x;
}
__global__ void vector_store_at(float* out, int index) {
  __stcg(reinterpret_cast<float4*>(out + index), float4{1.0f, 2.0f, 3.0f, 4.0f});
}
__global__ void nothing(float* out, int) {}

// every thread writes its id + 1, then reads its neighbour's in the next block
__global__ void grid_exchange(float* out, int) {
  const int total = blockDim.x * gridDim.x;
  out[global_id()] = global_id() + 1;
  cg::this_grid().sync();
  out[total + global_id()] = out[(global_id() + blockDim.x) % total];
}

// block rank 0 writes a double at byte `offset` of its own dynamic shared memory, mapped
__global__ void __cluster_dims__(2, 1, 1) cluster_double_at(float* out, int offset) {
  extern __shared__ float cluster_floats[];
  auto cluster = cg::this_cluster();
  auto* bytes = reinterpret_cast<unsigned char*>(cluster_floats);
  if (cluster.block_rank() == 0 && threadIdx.x == 0) {
    *cluster.map_shared_rank(reinterpret_cast<double*>(bytes + offset), 0u) = 1.0;
  }
  cluster.sync();
}
// rank 0 pushes into rank 1's buffer; rank 1 exits at once unless `wait` keeps it resident
__global__ void __cluster_dims__(2, 1, 1) cluster_push(float* out, int wait) {
  extern __shared__ float cluster_pushed[];
  auto cluster = cg::this_cluster();
  if (cluster.block_rank() == 1 && !wait) return;
  if (cluster.block_rank() == 0) *cluster.map_shared_rank(cluster_pushed + threadIdx.x, 1u) = 1.0f;
  cluster.sync();
  out[global_id()] = cluster_pushed[threadIdx.x];
}

__global__ void shuffle_partial_mask(float* out, int) {
  out[global_id()] = __shfl_xor_sync(0x0000ffffu, lane(), 1);
}
// arg = b * 64 + width
__global__ void shuffle_xor(float* out, int arg) {
  out[global_id()] = __shfl_xor_sync(0xffffffffu, lane(), arg / 64, arg % 64);
}
__global__ void shuffle_down(float* out, int arg) {
  out[global_id()] = __shfl_down_sync(0xffffffffu, lane(), arg / 64, arg % 64);
}
__global__ void shuffle_index(float* out, int arg) {
  out[global_id()] = __shfl_sync(0xffffffffu, lane(), arg / 64, arg % 64);
}
// a butterfly sum: five shuffles in a row through the same slots
__global__ void shuffle_butterfly_sum(float* out, int) {
  float sum = lane();
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  out[global_id()] = sum;
}

// One warp: C (16 x 16, row-major, out[0..256)) = A (16 x 8, row-major) B (8 x 16, col-major)
// with A[i][k] = i + k + 1 and B[k][j] = j - k, both rounded by __float_to_tf32 (exact here);
// arg 1: A's pointer 4 bytes off; 2: ldm 6; 3: lane 5 passes another pointer; 4: A = 1 + 2^-20
// and B = 1, not rounded (the tensor core reads 1.0).
struct __align__(32) WmmaTiles {
  float a[16 * 8 + 8];
  float b[8 * 16];
  float c[16 * 16];
};
__global__ void wmma_product(float* out, int arg) {
  namespace wmma = nvcuda::wmma;
  __shared__ WmmaTiles s;
  const int t = threadIdx.x;
  for (int e = t; e < 128; e += 32) {
    const int i = e / 8, k = e % 8;
    s.a[e] = arg == 4 ? 1.0f + 0x1p-20f : wmma::__float_to_tf32(static_cast<float>(i + k + 1));
    const int j = e / 8, kb = e % 8;  // b[j * 8 + kb] = B[kb][j] (column-major)
    s.b[e] = arg == 4 ? 1.0f : wmma::__float_to_tf32(static_cast<float>(j - kb));
  }
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  const float* a = s.a + (arg == 1 ? 1 : 0) + (arg == 3 && t == 5 ? 8 : 0);
  wmma::load_matrix_sync(fa, a, arg == 2 ? 6u : 8u);
  wmma::load_matrix_sync(fb, s.b, 8u);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(s.c, acc, 16u, wmma::mem_row_major);
  __syncthreads();
  for (int e = t; e < 256; e += 32) out[e] = s.c[e];
}

struct Entry {
  const char* name;
  void (*kernel)(float*, int);
};
static const Entry kProbes[] = {
    {"schedule_order", schedule_order},
    {"read_unwritten_dynamic", read_unwritten_dynamic},
    {"read_unwritten_static", read_unwritten_static},
    {"write_dynamic_at", write_dynamic_at},
    {"write_static_at", write_static_at},
    {"static_48_kb", static_48_kb},
    {"static_48_kb_and_4_bytes", static_48_kb_and_4_bytes},
    {"static_two_32_kb", static_two_32_kb},
    {"static_per_block", static_per_block},
    {"divergent_syncthreads", divergent_syncthreads},
    {"divergent_cluster_sync", divergent_cluster_sync},
    {"divergent_grid_sync", divergent_grid_sync},
    {"syncthreads_without_thread_0", syncthreads_without_thread_0},
    {"trap_in_thread_5", trap_in_thread_5},
    {"throw_in_thread_3", throw_in_thread_3},
    {"vector_load_at", vector_load_at},
    {"vector_store_at", vector_store_at},
    {"nothing", nothing},
    {"grid_exchange", grid_exchange},
    {"cluster_double_at", cluster_double_at},
    {"cluster_push", cluster_push},
    {"shuffle_partial_mask", shuffle_partial_mask},
    {"shuffle_xor", shuffle_xor},
    {"shuffle_down", shuffle_down},
    {"shuffle_index", shuffle_index},
    {"shuffle_butterfly_sum", shuffle_butterfly_sum},
    {"wmma_product", wmma_product},
};

extern "C" int probe(const char* name, unsigned gx, unsigned gy, unsigned threads,
                     unsigned long long smem, int cooperative, int max_threads, int cluster,
                     int policy, unsigned seed, float* out, int arg) {
  for (const Entry& entry : kProbes) {
    if (std::strcmp(entry.name, name) == 0) {
      auto* kernel = entry.kernel;
      return emu::launch(gx, gy, threads, smem, cooperative != 0, max_threads, cluster, policy,
                         seed, [=] { kernel(out, arg); });
    }
  }
  emu::last_error = std::string("no such probe: ") + name;
  return 1;
}
"""


class Probes:
    """The compiled :data:`PROBES`: :meth:`launch` runs one by name and returns its ``out``,
    or raises RuntimeError with the emulator's diagnosis."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        u32 = ctypes.c_uint
        lib.probe.argtypes = [ctypes.c_char_p, u32, u32, u32, ctypes.c_ulonglong, ctypes.c_int,
                              ctypes.c_int, ctypes.c_int, ctypes.c_int, u32, ctypes.c_void_p,
                              ctypes.c_int]  # fmt: skip
        lib.probe.restype = ctypes.c_int

    def launch(
        self,
        name: str,
        *,
        grid: tuple[int, int] = (1, 1),
        threads: int = 32,
        shared: int = 0,
        cooperative: bool = False,
        max_threads: int = 1024,
        cluster: int = 1,
        policy: int = ASCENDING,
        seed: int = 0,
        arg: int = 0,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        if out is None:  # -1: never written (NaN is what a read of unwritten memory gives)
            out = np.full(64 + 2 * grid[0] * grid[1] * threads, -1.0, np.float32)
        rc = self.lib.probe(name.encode(), grid[0], grid[1], threads, shared, int(cooperative),
                            max_threads, cluster, policy, seed, out.ctypes.data, arg)  # fmt: skip
        if rc != 0:
            raise RuntimeError(self.lib.emu_last_error().decode(errors="replace"))
        return out


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> Probes:
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: the host emulation of the CUDA kernels needs it")
    directory = tmp_path_factory.mktemp("emulation_probes")
    return Probes(Compiler(directory).build("probes", {"probes": rewrite_shared(PROBES)}))


# ------------------------------------------------------------------------ schedule orders
def _order(probes: Probes, policy: int, seed: int = 0) -> list[int]:
    """The global ids of 2 blocks of 4 threads in the order they ran: before their barrier,
    then after it."""
    out = probes.launch("schedule_order", grid=(2, 1), threads=4, policy=policy, seed=seed,
                        out=np.zeros(17, np.float32))  # fmt: skip
    assert out[0] == 16
    return out[1:].astype(int).tolist()


def test_each_schedule_runs_the_threads_in_its_own_order(probes: Probes) -> None:
    """A race is seen because the schedules differ: ascending and descending resume the
    threads a barrier releases in opposite orders behind those still running, RUN_AHEAD runs
    them at once (block 0 finishes before block 1 starts), a random order is a seeded
    permutation. A schedule that fell back to another would compare a run with itself."""
    first, second = [0, 1, 2, 3], [4, 5, 6, 7]
    assert _order(probes, ASCENDING) == first + second + first + second
    assert _order(probes, DESCENDING) == second[::-1] + first[::-1] + second[::-1] + first[::-1]
    assert _order(probes, RUN_AHEAD) == first + first + second + second
    randoms = {seed: _order(probes, RANDOM, seed) for seed in range(1, 6)}
    for order in randoms.values():  # every thread once before the barrier, once after
        assert sorted(order[:8]) == sorted(order[8:]) == first + second
    assert _order(probes, RANDOM, 3) == randoms[3], "a seed gives one order"
    assert len({tuple(order) for order in randoms.values()}) > 1, "seeds give other orders"
    fixed = {tuple(_order(probes, p)) for p in (ASCENDING, DESCENDING, RUN_AHEAD)}
    assert not fixed & {tuple(order) for order in randoms.values()}


def test_launches_pass_their_schedule_to_the_runtime(
    kernel_emulation: KernelEmulation, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``launch`` and ``launch_raw`` hand the schedule and seed to the C++ launch: the suites
    that compare schedules would otherwise compare one schedule with itself, and pass."""
    calls = []
    lib = kernel_emulation.lib

    class Spy:
        def __getattr__(self, name: str):
            function = getattr(lib, name)
            if not name.startswith("emu_") or name == "emu_last_error":
                return function

            def call(*args):
                calls.append(args[6:8])  # (policy, seed)
                return function(*args)

            return call

    monkeypatch.setattr(kernel_emulation, "lib", Spy())
    steps, batch, hidden = 2, 3, 33
    plan = persistent.plan_forward(steps, batch, hidden, np.float32, H200)
    states = rng.standard_normal((steps, batch, hidden)).astype(np.float32)
    w_hh = (rng.uniform(-1, 1, (hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    h0 = rng.standard_normal((batch, hidden)).astype(np.float32)
    args = persistent.forward_args(plan, states, w_hh, h0, None, "tanh", False,
                                   np.zeros(1, np.int32))  # fmt: skip
    kernel_emulation.launch(plan, args, DESCENDING, 9)
    kernel_emulation.launch_raw(plan.name_expression, plan.grid, plan.threads, plan.shared_mem,
                                plan.cooperative, args, RUN_AHEAD, 5)  # fmt: skip
    kernel_emulation.launch(plan, args)
    assert calls == [(DESCENDING, 9), (RUN_AHEAD, 5), (ASCENDING, 0)]


# --------------------------------------------------------------------------- shared memory
def test_unwritten_shared_memory_reads_as_nan(probes: Probes) -> None:
    """Dynamic and static shared memory start as 0xFF bytes (NaN), so an element a kernel
    reads before any thread wrote it shows in the results; zeros would pass for data."""
    for name, shared in (("read_unwritten_dynamic", 64 * 4), ("read_unwritten_static", 0)):
        out = probes.launch(name, grid=(2, 1), shared=shared)
        assert (out[:64].view(np.uint32) == 0xFFFFFFFF).all(), name


def test_static_shared_arrays_are_one_per_block(probes: Probes) -> None:
    """Each block has its own instance of a static ``__shared__`` array: blocks sharing one
    would race on it on the host, and hide or invent bugs."""
    for policy in (ASCENDING, DESCENDING, RUN_AHEAD):
        out = probes.launch("static_per_block", grid=(3, 1), threads=8, policy=policy)
        np.testing.assert_array_equal(out[:24], np.repeat([0.0, 1.0, 2.0], 8), str(policy))


def test_writes_past_shared_memory_are_reported(probes: Probes) -> None:
    """The canaries after each block's dynamic buffer and after each static array must hold
    0xFF when the launch ends: a write anywhere in them, its first byte or further on, is an
    out-of-bounds shared write the device would not report."""
    shared = 32 * 4
    probes.launch("write_dynamic_at", shared=shared, arg=31)  # the last element: fine
    for index in (32, 32 + 100):
        with pytest.raises(RuntimeError, match=r"block 0 wrote past its 128 bytes of dynamic"):
            probes.launch("write_dynamic_at", shared=shared, arg=index)
    probes.launch("write_static_at", arg=31)
    for index in (32, 32 + 100):
        with pytest.raises(RuntimeError, match=r"wrote past the end of its static __shared__ "
                           r"array number \d+ \(128 bytes\)"):  # fmt: skip
            probes.launch("write_static_at", arg=index)


def test_static_shared_memory_over_48_kb_per_block_is_refused(probes: Probes) -> None:
    """A module whose static ``__shared__`` arrays exceed 48 KB per block does not load on
    the device: exactly 48 KB is fine, 4 bytes more is not, and the limit is on the block's
    arrays together (two of 32 KB each fit one by one)."""
    np.testing.assert_array_equal(probes.launch("static_48_kb")[:32], 1.0)
    with pytest.raises(RuntimeError, match=r"static __shared__ arrays of 49156 bytes per block "
                       r"exceed 48 KB"):  # fmt: skip
        probes.launch("static_48_kb_and_4_bytes")
    with pytest.raises(RuntimeError, match=r"arrays of 65536 bytes per block exceed 48 KB"):
        probes.launch("static_two_32_kb")


# ---------------------------------------------------------------------------- barriers
def test_a_divergent_barrier_is_reported(probes: Probes) -> None:
    """Threads at two different call sites of one barrier (even and odd threads, or block 0
    and the others): undefined behaviour on the device (it may hang or pass), reported here
    with both call sites, for ``__syncthreads()`` and for the cooperative groups' barriers
    alike (theirs had taken the line of the stand-in header, the same for every call)."""
    for name, barrier, launch in (
        ("divergent_syncthreads", r"__syncthreads\(\)", {}),
        ("divergent_cluster_sync", r"cluster.sync\(\)", {"grid": (2, 1), "cluster": 2}),
        ("divergent_grid_sync", r"grid.sync\(\)", {"grid": (2, 1), "cooperative": True}),
    ):
        with pytest.raises(RuntimeError, match=rf"{barrier} reached at different call sites "
                           r"\(line \d+ and line \d+\): divergent barrier"):  # fmt: skip
            probes.launch(name, **launch)


def test_a_barrier_that_never_completes_is_a_deadlock_not_a_success(probes: Probes) -> None:
    """Thread 0 skips the ``__syncthreads()`` the others wait at: the launch must fail (a
    hang on the device), not return with 31 threads never finished."""
    with pytest.raises(RuntimeError, match=r"deadlock: 31 of 32 threads wait at a barrier "
                       r"that never completes; __syncthreads\(\) holds 31"):  # fmt: skip
        probes.launch("syncthreads_without_thread_0")


def test_grid_sync_is_a_barrier_over_every_block(probes: Probes) -> None:
    """Under RUN_AHEAD block 0 runs on as soon as its barrier releases it: a grid barrier
    that only waited for the block's own threads would let it read block 1's slots unwritten."""
    threads, blocks = 4, 3
    total = threads * blocks
    for policy in (ASCENDING, DESCENDING, RUN_AHEAD):
        out = probes.launch("grid_exchange", grid=(blocks, 1), threads=threads,
                            cooperative=True, policy=policy)  # fmt: skip
        expected = (np.arange(total) + threads) % total + 1
        np.testing.assert_array_equal(out[total : 2 * total], expected, str(policy))
    with pytest.raises(RuntimeError, match=r"grid.sync\(\) in a launch that is not cooperative"):
        probes.launch("grid_exchange", grid=(blocks, 1), threads=threads)


# ----------------------------------------------------------------------------- clusters
def test_map_shared_rank_refuses_an_element_that_straddles_the_buffer_end(
    probes: Probes,
) -> None:
    """The whole element must lie in dynamic shared memory: a double whose first 4 bytes are
    the buffer's last 4 reaches past it."""
    probes.launch("cluster_double_at", grid=(2, 1), cluster=2, shared=64, arg=56)
    with pytest.raises(RuntimeError, match=r"map_shared_rank of an address outside"):
        probes.launch("cluster_double_at", grid=(2, 1), cluster=2, shared=64, arg=60)


def test_a_push_into_a_block_that_exited_is_reported(probes: Probes) -> None:
    """A block's shared memory goes away when it exits: a peer's push into it afterwards is
    undefined on the device. The descending schedule runs rank 1 (which exits at once) before
    rank 0 pushes; a cluster barrier that keeps rank 1 resident makes the push valid."""
    with pytest.raises(RuntimeError, match=r"map_shared_rank into block 1 of the cluster after "
                       r"it exited"):  # fmt: skip
        probes.launch("cluster_push", grid=(2, 1), cluster=2, shared=32 * 4, policy=DESCENDING)
    out = probes.launch("cluster_push", grid=(2, 1), cluster=2, shared=32 * 4,
                        policy=DESCENDING, arg=1)  # fmt: skip
    np.testing.assert_array_equal(out[32:64], 1.0)  # rank 1 read what rank 0 pushed


# ----------------------------------------------------------------------------- shuffles
def _ptx_source_lane(mode: str, lane: int, b: int, width: int) -> int:
    """The lane a full-mask shuffle reads, as PTX's ``shfl.sync`` defines it with the clamp
    operand CUDA's ``__shfl*_sync(mask, var, b, width)`` pass (``((32 - width) << 8) | 31``):
    the caller's own lane where the source is not valid."""
    segment_mask, clamp = 32 - width, 31
    max_lane = (lane & segment_mask) | (clamp & ~segment_mask & 31)
    min_lane = lane & segment_mask
    source = {
        "xor": lane ^ b,
        "down": lane + b,
        "index": min_lane | (b & ~segment_mask & 31),
    }[mode]
    return source if source <= max_lane else lane


@pytest.mark.parametrize("mode", ["xor", "down", "index"])
def test_shuffles_read_the_lane_ptx_defines(probes: Probes, mode: str) -> None:
    """Every lane offset (or source lane) with widths 32, 16, 8 and 2. ``__shfl_xor_sync``
    with a mask at or above the width reads an EARLIER group's lane, as PTX's butterfly mode
    allows, and its own value only where the source lies in a later group (the emulator
    returned its own value for both)."""
    lanes = np.arange(32)
    for width in (32, 16, 8, 2):
        for b in range(32):
            out = probes.launch(f"shuffle_{mode}", arg=b * 64 + width)
            expected = [_ptx_source_lane(mode, int(lane), b, width) for lane in lanes]
            np.testing.assert_array_equal(out[:32], expected, f"b = {b}, width = {width}")


def test_consecutive_shuffles_read_the_values_of_their_own_round(probes: Probes) -> None:
    """A butterfly sum: each lane's next shuffle overwrites its slot while slower lanes may
    still read the previous round's; every lane must end with the sum of all 32 lanes."""
    for policy in (ASCENDING, DESCENDING, RANDOM, RUN_AHEAD):
        out = probes.launch("shuffle_butterfly_sum", threads=64, policy=policy, seed=4)
        np.testing.assert_array_equal(out[:64], sum(range(32)), str(policy))


def test_a_partial_mask_shuffle_is_reported(probes: Probes) -> None:
    """Only full-mask shuffles are emulated: a partial mask would be given full-warp
    semantics, which it does not have."""
    with pytest.raises(RuntimeError, match=r"partial mask is not emulated"):
        probes.launch("shuffle_partial_mask")


# ----------------------------------------------------------------- traps, faults, launches
def test_trap_aborts_the_launch(probes: Probes) -> None:
    with pytest.raises(RuntimeError, match=r"__trap\(\) \(block \(0, 0\), thread 5\)"):
        probes.launch("trap_in_thread_5")


def test_an_exception_in_a_cuda_thread_fails_the_launch(probes: Probes) -> None:
    with pytest.raises(RuntimeError, match=r"exception in a CUDA thread: thrown by thread 3"):
        probes.launch("throw_in_thread_3")


def test_misaligned_vector_accesses_are_reported(probes: Probes) -> None:
    """A 16-byte ``__ldg`` or ``__stcg`` at an address that is not 16-byte aligned faults on
    the device ('misaligned address'); x86 would carry it out."""
    buffer = np.zeros(256, np.float32)
    start = (-buffer.ctypes.data % 16) // 4  # the first 16-byte aligned element
    out = buffer[start : start + 128]
    probes.launch("vector_load_at", threads=1, out=out)
    probes.launch("vector_store_at", threads=1, out=out)
    for name in ("vector_load_at", "vector_store_at"):
        with pytest.raises(RuntimeError, match=r"of a 16-byte value at a misaligned address"):
            probes.launch(name, threads=1, out=out, arg=1)


def test_launch_configurations_the_device_refuses_are_refused(probes: Probes) -> None:
    """Each limit on its own: a block above the kernel's ``__launch_bounds__`` (below 1024),
    a block above 1024 threads where no bound is given, 65536 blocks along y, an empty grid."""
    probes.launch("nothing", threads=64, max_threads=64)
    with pytest.raises(RuntimeError, match=r"block of 96 threads exceeds __launch_bounds__ 64"):
        probes.launch("nothing", threads=96, max_threads=64)
    with pytest.raises(RuntimeError, match=r"out of range \(block 1056 threads"):
        probes.launch("nothing", threads=1056, max_threads=1 << 20)
    with pytest.raises(RuntimeError, match=r"out of range \(block 1 threads, grid \(1, 65536\)"):
        probes.launch("nothing", grid=(1, 65536), threads=1)
    for grid in ((0, 1), (1, 0)):
        with pytest.raises(RuntimeError, match=r"empty launch"):
            probes.launch("nothing", grid=grid)


def test_launch_raw_takes_the_argument_types_cupy_passes(
    kernel_emulation: KernelEmulation,
) -> None:
    """An int argument must be numpy.int32 (CuPy passes a Python int as a 64-bit value, which
    a kernel's ``int`` parameter would misread) and an array C-contiguous (a kernel reads it
    through a bare pointer)."""
    plan = persistent.plan_forward(2, 3, 33, np.float32, H200)
    states = np.zeros((2, 3, 33), np.float32)
    w_hh, h0 = np.zeros((33, 33), np.float32), np.zeros((3, 33), np.float32)
    args = persistent.forward_args(plan, states, w_hh, h0, None, "tanh", False,
                                   np.zeros(1, np.int32))  # fmt: skip
    index = next(i for i, a in enumerate(args) if isinstance(a, np.int32))
    as_int = (*args[:index], int(args[index]), *args[index + 1 :])
    with pytest.raises(TypeError, match=rf"argument {index} must be numpy.int32"):
        kernel_emulation.launch(plan, as_int)
    strided = np.zeros((3, 66), np.float32)[:, ::2]
    with pytest.raises(TypeError, match=r"argument 2 must be a contiguous array"):
        kernel_emulation.launch(plan, (*args[:2], strided, *args[3:]))


def test_wmma_products_and_their_faults(probes: Probes) -> None:
    """The ``<mma.h>`` stand-in: an m16n16k8 TF32 product is A B exactly (small integers);
    operands the program did not round are read as the tensor core reads them, the low 13
    mantissa bits dropped; a pointer off 32 bytes, an ldm not a multiple of 4 floats, and
    lanes of one warp passing different pointers are each reported."""
    rows, depth = np.arange(16)[:, None], np.arange(8)[None, :]
    a = (rows + depth + 1).astype(np.float64)
    b = (np.arange(16)[None, :] - np.arange(8)[:, None]).astype(np.float64)
    out = probes.launch("wmma_product", out=np.full(256, np.nan, np.float32))
    np.testing.assert_array_equal(out.reshape(16, 16), a @ b)
    out = probes.launch("wmma_product", arg=4, out=np.full(256, np.nan, np.float32))
    np.testing.assert_array_equal(out, np.full(256, 8.0, np.float32))
    for arg, message in (
        (1, "wmma::load_matrix_sync at an address that is not 32-byte aligned"),
        (2, "wmma::load_matrix_sync with ldm 6, not a multiple of 4 floats"),
        (3, "wmma::load_matrix_sync with a pointer or ldm that differs between the lanes"),
    ):
        with pytest.raises(RuntimeError, match=message):
            probes.launch("wmma_product", arg=arg, out=np.full(256, np.nan, np.float32))


# ----------------------------------------------------------------------- the build cache
def test_a_cached_build_is_reused_only_for_the_same_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CACHE_ENV set (the test session sets it for its workers and inner runs), a
    library built from the same sources is copied, not compiled; other sources are built."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: the host emulation of the CUDA kernels needs it")
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv(CACHE_ENV, str(cache))
    source = 'extern "C" int answer() {{ return {}; }}'

    def built(directory: str, value: int) -> ctypes.CDLL:
        (tmp_path / directory).mkdir()
        return Compiler(tmp_path / directory).build("answer", {"answer": source.format(value)})

    assert built("first", 7).answer() == 7
    with monkeypatch.context() as no_compiler:

        def refused(*args: object) -> None:
            raise AssertionError("compiled again")

        no_compiler.setattr(Compiler, "_compile", refused)
        again = built("again", 7)
    # its own copy: a path dlopen has not seen, so none of the first one's state is shared
    assert again.answer() == 7 and again._name == str(tmp_path / "again" / "answer.so")
    assert built("other", 8).answer() == 8
    assert len(list(cache.glob("answer-*.so"))) == 2
    assert not list(cache.glob("*.partial"))
