"""Host emulation of the CUDA subset rnncu's kernels use, for tests without a GPU.

The real kernel source (``kernel_loader.read_source``) of every file the backend launches
(:func:`families`: both step kernel files and the persistent ones) is compiled with g++ on top
of a small runtime (:data:`RUNTIME`) and driven through ctypes. Every CUDA thread of the WHOLE
grid is a fiber of one host thread (started with ``ucontext``, switched with
``_setjmp``/``_longjmp``, which skip swapcontext's signal-mask system call), all of them live
at once, so that

* ``__syncthreads()`` is a barrier over the threads of one block,
* ``cooperative_groups::this_grid().sync()`` is a barrier over every thread of every block
  (and an error in a launch that is not cooperative),
* thread-block clusters (``__cluster_dims__``, whose width the launch is given from the
  kernel's name expression): ``cooperative_groups::this_cluster().sync()`` is a barrier over
  the threads of the cluster's blocks, ``map_shared_rank(p, rank)`` maps a pointer into the
  block's dynamic shared memory to the same offset in the buffer of block ``rank`` of the
  cluster (a pointer elsewhere, or a rank outside the cluster, is reported), and a grid whose
  width is not a multiple of the cluster width is refused, as the driver refuses it,
* ``__shfl_xor_sync`` / ``__shfl_sync`` / ``__shfl_down_sync`` exchange values between the
  32 lanes of a warp through a double-buffered slot array and a warp barrier, each lane
  reading the source lane PTX's ``shfl.sync`` defines for the width (full mask only: a
  partial mask, or a full mask in a block that is not whole warps, is reported),
* dynamic ``extern __shared__`` memory is one buffer per block, pre-filled with 0xFF bytes (a
  NaN in float and double, so a read of an unwritten element shows up in the results) and
  followed by a canary region that must still hold 0xFF after the launch (out-of-bounds
  writes); each static ``__shared__`` array likewise gets one such buffer per block (and
  more than 48 KB of them per block is reported, as the module would not load),
* ``__ldcg`` / ``__ldg`` / ``__stcg`` are plain loads and stores, ``__trap()`` aborts the launch.

A fiber runs until it blocks at a barrier; a completed barrier requeues its waiters in the
launch's *schedule order*: ascending thread id, descending, or a seeded random permutation,
at the back of the ready queue; or, under RUN_AHEAD, ascending at the FRONT, so the threads a
barrier releases run on before anyone else (one block races through its steps while the
others have not started theirs). Two threads that touch the same memory between the same two
barriers (a race) therefore see each other's accesses in opposite orders under the ascending
and descending schedules, and a block that waits at too narrow a barrier (its own, where the
cluster's is needed) reads what its peers have not written yet under RUN_AHEAD, so a missing
or wrong barrier changes the results between schedules instead of hiding behind one lucky
interleaving. Barriers also check that every thread arrives at the same call site (a
``__syncthreads`` or shuffle in divergent code is reported), and a barrier that can never
complete is reported as a deadlock instead of hanging.

What it cannot show: anything below the granularity of "one thread runs from barrier to
barrier without interruption" (a race between two threads that never meet at a barrier in
between is only seen through the schedule orders), and memory ordering / cache coherence
between blocks (every access here is sequentially consistent, so a plain load that could hit
a stale L1 line on the device reads fresh data here).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from rnncu.backend import kernel_loader

#: schedule orders a launch may use (see the module docstring)
ASCENDING, DESCENDING, RANDOM, RUN_AHEAD = 0, 1, 2, 3

RUNTIME = r"""
// rnncu host emulation runtime (tests/kernel_emulation.py). All CUDA threads are fibers of
// the calling host thread; see the Python module docstring for the semantics.
#pragma once
#include <setjmp.h>
#include <ucontext.h>
#include <sys/mman.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <math.h>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) double2 { double x, y; };
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __cluster_dims__(...)
#define __align__(n) alignas(n)
// The Python side rewrites every __shared__ declaration (dynamic ones into a pointer to the
// block's buffer, static ones into ::emu::block_shared); one it could not parse stops here.
#define __shared__ EMULATION_COULD_NOT_REWRITE_THIS_SHARED_DECLARATION

namespace emu {
struct Abort {};
struct Barrier {
  int expected = 0, arrived = 0, tag = 0;
  const char* what = "";
  std::vector<int> waiters;
};
struct Fiber {
  ucontext_t ctx;
  dim3 tid, bid;
  int block = 0, warp = 0, lane = 0;
  unsigned parity = 0;
  bool done = false, started = false;
  jmp_buf env;  // where the fiber resumes (after its first start)
  void* stack = nullptr;
};
struct Exchange {
  unsigned long long value[2][32];
  int tag[2][32];
};
constexpr size_t kStack = 128 * 1024;
constexpr size_t kCanary = 1024;
// A module whose static __shared__ arrays exceed 48 KB per block fails to load on the device.
constexpr size_t kStaticSharedLimit = 48 * 1024;
struct StaticShared {
  unsigned char* data = nullptr;
  size_t bytes = 0;
};
struct Launch {
  std::vector<Fiber> fibers;
  ucontext_t main_ctx;  // the scheduler, for a fiber's first start only
  jmp_buf main_env;     // the scheduler, for every later switch
  std::deque<int> ready;
  std::vector<Barrier> warp_bar, block_bar, cluster_bar;
  int cluster = 1;  // blocks per cluster, along x
  Barrier grid_bar;
  std::vector<Exchange> exchange;
  std::vector<unsigned char*> smem;
  std::vector<std::vector<StaticShared>> static_smem;  // [block][declaration slot]
  size_t smem_bytes = 0;
  int threads = 0, policy = 0;
  bool cooperative = false, failed = false;
  std::mt19937 rng;
  std::function<void()> body;
  int current = -1;
  std::string error;
};
inline thread_local Launch* L = nullptr;
inline thread_local std::string last_error;
// Fiber stacks are kept between launches (mapping and unmapping thousands per launch was
// most of an emulated step kernel's time); at most kStackPool are kept.
constexpr size_t kStackPool = 8192;
inline thread_local std::vector<void*> stack_pool;

inline void* take_stack() {
  if (!stack_pool.empty()) {
    void* stack = stack_pool.back();
    stack_pool.pop_back();
    return stack;
  }
  void* stack = mmap(nullptr, kStack, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return stack == MAP_FAILED ? nullptr : stack;
}

inline void give_back_stack(void* stack) {
  if (stack_pool.size() < kStackPool) stack_pool.push_back(stack);
  else munmap(stack, kStack);
}

[[noreturn]] inline void fail(const std::string& message) {
  Launch& l = *L;
  if (!l.failed) {
    l.failed = true;
    const Fiber& f = l.fibers[l.current];
    l.error = message + " (block (" + std::to_string(f.bid.x) + ", " +
              std::to_string(f.bid.y) + "), thread " + std::to_string(f.tid.x) + ")";
  }
  throw Abort{};
}

inline void requeue(std::vector<int>& ids) {
  Launch& l = *L;
  if (l.policy == 3) {  // RUN_AHEAD: the released threads go first, in ascending order
    std::sort(ids.begin(), ids.end(), std::greater<int>());
    for (int id : ids) l.ready.push_front(id);
    return;
  }
  if (l.policy == 0) std::sort(ids.begin(), ids.end());
  else if (l.policy == 1) std::sort(ids.begin(), ids.end(), std::greater<int>());
  else std::shuffle(ids.begin(), ids.end(), l.rng);
  for (int id : ids) l.ready.push_back(id);
}

// Block the calling fiber at b until b.expected fibers have arrived.
inline void arrive(Barrier& b, int tag) {
  Launch& l = *L;
  const int me = l.current;
  if (b.arrived == 0) {
    b.tag = tag;
  } else if (b.tag != tag) {
    fail(std::string(b.what) + " reached at different call sites (line " +
         std::to_string(b.tag) + " and line " + std::to_string(tag) + "): divergent barrier");
  }
  b.waiters.push_back(me);
  if (++b.arrived == b.expected) {
    std::vector<int> waiters;
    waiters.swap(b.waiters);
    b.arrived = 0;
    requeue(waiters);
  }
  // _setjmp/_longjmp switch without the signal-mask system call of swapcontext
  if (_setjmp(l.fibers[me].env) == 0) _longjmp(l.main_env, 1);
  if (l.failed) throw Abort{};
}

inline void syncthreads(int line) {
  Launch& l = *L;
  arrive(l.block_bar[l.fibers[l.current].block], line);
}

inline int cluster_of(int block) { return block / L->cluster; }

inline void cluster_sync(int line) {
  Launch& l = *L;
  arrive(l.cluster_bar[cluster_of(l.fibers[l.current].block)], line);
}

inline unsigned cluster_rank() {
  return static_cast<unsigned>(L->fibers[L->current].block % L->cluster);
}

// The address of `p` (in this block's dynamic shared memory) in block `rank` of the cluster.
template <typename T>
inline T* map_shared_rank(T* p, unsigned rank) {
  Launch& l = *L;
  const int block = l.fibers[l.current].block;
  const auto* bytes = reinterpret_cast<const unsigned char*>(p);
  const unsigned char* base = l.smem[block];
  if (bytes < base || bytes + sizeof(T) > base + l.smem_bytes) {
    fail("map_shared_rank of an address outside the block's dynamic shared memory");
  }
  if (rank >= static_cast<unsigned>(l.cluster)) {
    fail("map_shared_rank to rank " + std::to_string(rank) + " of a cluster of " +
         std::to_string(l.cluster) + " blocks");
  }
  const int target = cluster_of(block) * l.cluster + static_cast<int>(rank);
  // A block's shared memory is released when its last thread exits: a push into it after
  // that is undefined behaviour on the device (a cluster barrier must keep it resident).
  bool exited = true;
  for (int i = target * l.threads; i < (target + 1) * l.threads && exited; ++i) {
    exited = l.fibers[i].done;
  }
  if (exited) {
    fail("map_shared_rank into block " + std::to_string(target) +
         " of the cluster after it exited (no cluster barrier kept it resident)");
  }
  return reinterpret_cast<T*>(l.smem[target] + (bytes - base));
}

inline void grid_sync(int line) {
  Launch& l = *L;
  if (!l.cooperative) fail("grid.sync() in a launch that is not cooperative");
  arrive(l.grid_bar, line);
}

template <typename T>
inline T shuffle(int line, unsigned mask, T value, int src_lane) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  Launch& l = *L;
  Fiber& f = l.fibers[l.current];
  if (mask != 0xffffffffu) fail("__shfl_*_sync with a partial mask is not emulated");
  if (l.threads % 32 != 0) fail("full-mask shuffle in a block that is not whole warps");
  Exchange& x = l.exchange[f.warp];
  const unsigned p = f.parity;
  f.parity ^= 1u;
  unsigned long long slot = 0;
  std::memcpy(&slot, &value, sizeof(T));
  x.value[p][f.lane] = slot;
  x.tag[p][f.lane] = line;
  arrive(l.warp_bar[f.warp], line);
  if (x.tag[p][src_lane] != line) fail("lanes of one warp in different shuffles");
  T out;
  std::memcpy(&out, &x.value[p][src_lane], sizeof(T));
  return out;
}
template <typename T>
inline T shfl_xor(int line, unsigned mask, T value, int lane_mask, int width = 32) {
  const int lane = L->fibers[L->current].lane;
  int src = lane ^ lane_mask;
  // PTX shfl.bfly: a lane of an earlier group of `width` lanes is read, one past the
  // caller's own group is not (the caller's own value is returned)
  if (src > (lane | (width - 1))) src = lane;
  return shuffle(line, mask, value, src);
}
template <typename T>
inline T shfl(int line, unsigned mask, T value, int src_lane, int width = 32) {
  const int lane = L->fibers[L->current].lane;
  return shuffle(line, mask, value, (lane & ~(width - 1)) + (src_lane & (width - 1)));
}
template <typename T>
inline T shfl_down(int line, unsigned mask, T value, unsigned delta, int width = 32) {
  const int lane = L->fibers[L->current].lane;
  const int src = lane + static_cast<int>(delta);
  const bool inside = (src & ~(width - 1)) == (lane & ~(width - 1)) && src < 32;
  return shuffle(line, mask, value, inside ? src : lane);
}

inline unsigned char* dynamic_smem() { return L->smem[L->fibers[L->current].block]; }

// The block's instance of the static `__shared__ A name;` declaration numbered `slot`: made
// by the first of its threads to get there, 0xFF-filled (NaN), followed by a canary.
template <typename A>
inline A& block_shared(int slot) {
  Launch& l = *L;
  std::vector<StaticShared>& slots = l.static_smem[l.fibers[l.current].block];
  if (slots.size() <= static_cast<size_t>(slot)) slots.resize(slot + 1);
  StaticShared& s = slots[slot];
  if (s.data == nullptr) {
    size_t total = sizeof(A);
    for (const StaticShared& other : slots) total += other.bytes;
    if (total > kStaticSharedLimit) {
      fail("static __shared__ arrays of " + std::to_string(total) + " bytes per block exceed "
           "48 KB: the module would not load on the device");
    }
    s.bytes = sizeof(A);
    s.data = static_cast<unsigned char*>(
        std::aligned_alloc(256, ((sizeof(A) + kCanary + 255) / 256) * 256));
    std::memset(s.data, 0xFF, sizeof(A) + kCanary);
  }
  return *reinterpret_cast<A*>(s.data);
}

inline void entry() {
  Launch& l = *L;
  try {
    l.body();
  } catch (Abort&) {
  } catch (std::exception& e) {
    l.failed = true;
    l.error = std::string("exception in a CUDA thread: ") + e.what();
  }
  l.fibers[l.current].done = true;
  _longjmp(l.main_env, 1);  // never returns: the scheduler resumes
}

// Run `body` as a (gx, gy) grid of `threads`-thread blocks. 0 on success, else 1 and
// last_error says why.
inline int launch(unsigned gx, unsigned gy, unsigned threads, size_t smem_bytes,
                  bool cooperative, int max_threads, int cluster, int policy, unsigned seed,
                  std::function<void()> body) {
  if (threads < 1 || gx < 1 || gy < 1) {
    last_error = "empty launch";
    return 1;
  }
  if (cluster < 1 || gx % static_cast<unsigned>(cluster) != 0) {
    last_error = "grid width " + std::to_string(gx) + " is not a multiple of the cluster width " +
                 std::to_string(cluster) + ": the launch would fail on the device";
    return 1;
  }
  if (static_cast<int>(threads) > max_threads) {
    last_error = "block of " + std::to_string(threads) + " threads exceeds __launch_bounds__ " +
                 std::to_string(max_threads) + ": the launch would fail on the device";
    return 1;
  }
  if (threads > 1024 || gy > 65535 || gx > 2147483647u) {
    last_error = "launch configuration out of range (block " + std::to_string(threads) +
                 " threads, grid (" + std::to_string(gx) + ", " + std::to_string(gy) +
                 "); the limits are 1024 and (2^31 - 1, 65535))";
    return 1;
  }
  Launch l;
  l.threads = static_cast<int>(threads);
  l.policy = policy;
  l.rng.seed(seed);
  l.cooperative = cooperative;
  l.cluster = cluster;
  l.smem_bytes = smem_bytes;
  l.body = std::move(body);
  const int blocks = static_cast<int>(gx * gy);
  const int warps_per_block = (l.threads + 31) / 32;
  const int total = blocks * l.threads;
  l.fibers.resize(total);
  l.block_bar.resize(blocks);
  l.static_smem.resize(blocks);
  l.warp_bar.resize(blocks * warps_per_block);
  l.exchange.resize(blocks * warps_per_block);
  l.grid_bar.expected = total;
  l.grid_bar.what = "grid.sync()";
  l.cluster_bar.resize(blocks / cluster);
  for (Barrier& b : l.cluster_bar) {
    b.expected = cluster * l.threads;
    b.what = "cluster.sync()";
  }
  for (int b = 0; b < blocks; ++b) {
    l.block_bar[b].expected = l.threads;
    l.block_bar[b].what = "__syncthreads()";
    for (int w = 0; w < warps_per_block; ++w) {
      l.warp_bar[b * warps_per_block + w].expected = std::min(32, l.threads - 32 * w);
      l.warp_bar[b * warps_per_block + w].what = "a warp-collective (__shfl_*_sync, wmma::*_sync)";
    }
    auto* buffer = static_cast<unsigned char*>(std::aligned_alloc(256,
        ((smem_bytes + kCanary + 255) / 256) * 256));
    std::memset(buffer, 0xFF, smem_bytes + kCanary);
    l.smem.push_back(buffer);
  }
  L = &l;
  const dim3 grid{gx, gy, 1}, block{threads, 1, 1};
  std::vector<int> order;
  for (int i = 0; i < total; ++i) {
    Fiber& f = l.fibers[i];
    f.block = i / l.threads;
    const int t = i % l.threads;
    f.tid = dim3{static_cast<unsigned>(t), 0, 0};
    f.bid = dim3{static_cast<unsigned>(f.block) % gx, static_cast<unsigned>(f.block) / gx, 0};
    f.warp = f.block * warps_per_block + t / 32;
    f.lane = t % 32;
    f.stack = take_stack();
    if (f.stack == nullptr) {
      std::fprintf(stderr, "emulation: no memory for %d fiber stacks\n", total);
      std::abort();
    }
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, entry, 0);
    order.push_back(i);
  }
  requeue(order);
  blockDim = block;
  gridDim = grid;
  while (!l.ready.empty() && !l.failed) {
    const int i = l.ready.front();
    l.ready.pop_front();
    l.current = i;
    threadIdx = l.fibers[i].tid;
    blockIdx = l.fibers[i].bid;
    Fiber& f = l.fibers[i];
    if (_setjmp(l.main_env) == 0) {
      if (!f.started) {
        f.started = true;
        swapcontext(&l.main_ctx, &f.ctx);
      } else {
        _longjmp(f.env, 1);
      }
    }
  }
  if (!l.failed) {
    int waiting = 0;
    for (const Fiber& f : l.fibers) waiting += f.done ? 0 : 1;
    if (waiting) {
      l.failed = true;
      std::string where;
      if (l.grid_bar.arrived) where += " grid.sync() holds " + std::to_string(l.grid_bar.arrived);
      for (const Barrier& b : l.cluster_bar)
        if (b.arrived) { where += " cluster.sync() holds " + std::to_string(b.arrived); break; }
      for (const Barrier& b : l.block_bar)
        if (b.arrived) { where += " __syncthreads() holds " + std::to_string(b.arrived); break; }
      for (const Barrier& b : l.warp_bar)
        if (b.arrived) { where += " a shuffle holds " + std::to_string(b.arrived); break; }
      l.error = "deadlock: " + std::to_string(waiting) + " of " + std::to_string(total) +
                " threads wait at a barrier that never completes;" + where;
    }
  }
  for (int b = 0; b < blocks && !l.failed; ++b) {
    for (size_t i = 0; i < kCanary; ++i) {
      if (l.smem[b][smem_bytes + i] != 0xFF) {
        l.failed = true;
        l.error = "block " + std::to_string(b) + " wrote past its " +
                  std::to_string(smem_bytes) + " bytes of dynamic shared memory (offset " +
                  std::to_string(smem_bytes + i) + ")";
        break;
      }
    }
  }
  for (int b = 0; b < blocks && !l.failed; ++b) {
    for (size_t slot = 0; slot < l.static_smem[b].size() && !l.failed; ++slot) {
      const StaticShared& s = l.static_smem[b][slot];
      for (size_t i = 0; s.data != nullptr && i < kCanary; ++i) {
        if (s.data[s.bytes + i] != 0xFF) {
          l.failed = true;
          l.error = "block " + std::to_string(b) + " wrote past the end of its static __shared__"
                    " array number " + std::to_string(slot) + " (" + std::to_string(s.bytes) +
                    " bytes)";
          break;
        }
      }
    }
  }
  for (Fiber& f : l.fibers) give_back_stack(f.stack);
  for (unsigned char* buffer : l.smem) std::free(buffer);
  for (auto& slots : l.static_smem)
    for (StaticShared& s : slots) std::free(s.data);
  L = nullptr;
  last_error = l.error;
  return l.failed ? 1 : 0;
}
}  // namespace emu

#define __syncthreads() ::emu::syncthreads(__LINE__)
#define __shfl_xor_sync(...) ::emu::shfl_xor(__LINE__, __VA_ARGS__)
#define __shfl_sync(...) ::emu::shfl(__LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::emu::shfl_down(__LINE__, __VA_ARGS__)
namespace emu {
template <typename T>
inline const T* aligned(const T* p, const char* what) {
  if (reinterpret_cast<std::uintptr_t>(p) % alignof(T) != 0) {
    fail(std::string(what) + " of a " + std::to_string(sizeof(T)) + "-byte value at a misaligned"
         " address: the device raises 'misaligned address'");
  }
  return p;
}
}  // namespace emu
template <typename T> inline T __ldcg(const T* p) { return *::emu::aligned(p, "__ldcg"); }
template <typename T> inline T __ldg(const T* p) { return *::emu::aligned(p, "__ldg"); }
template <typename T> inline void __stcg(T* p, T v) {
  *const_cast<T*>(::emu::aligned(p, "__stcg")) = v;
}
[[noreturn]] inline void __trap() { ::emu::fail("__trap()"); }

// weak: every translation unit includes this runtime, the library exports one copy
extern "C" __attribute__((weak, visibility("default"))) const char* emu_last_error() {
  return emu::last_error.c_str();
}
"""

#: stand-in for <cooperative_groups.h>, found through -I before any system header
COOPERATIVE_GROUPS = r"""
#pragma once
namespace cooperative_groups {
// sync() takes its caller's line (__LINE__ here would be this header's, the same for every
// call), so that a grid or cluster barrier reached at two call sites is reported as a
// divergent __syncthreads() is
struct grid_group {
  void sync(int line = __builtin_LINE()) const { ::emu::grid_sync(line); }
};
inline grid_group this_grid() { return {}; }
struct cluster_group {
  void sync(int line = __builtin_LINE()) const { ::emu::cluster_sync(line); }
  unsigned block_rank() const { return ::emu::cluster_rank(); }
  template <typename T>
  T* map_shared_rank(T* p, unsigned rank) const { return ::emu::map_shared_rank(p, rank); }
};
inline cluster_group this_cluster() { return {}; }
}  // namespace cooperative_groups
"""

#: stand-in for <mma.h>: the WMMA subset of the TF32 step kernels (m16n16k8, TF32 operands,
#: float accumulators). A fragment's element-to-lane mapping is unspecified by CUDA, so here
#: every lane holds the whole matrix, row-major. load, mma and store are warp-collective (a
#: barrier of the warp, at the caller's line, as a shuffle is; the lanes' pointers and ldm
#: must agree, as on the device): a load then reads what every lane wrote before it; a store
#: writes lane i's share of the elements (i, i + 32, ...) after the barrier, so a read of its
#: output before a block barrier shows up under the schedule orders. Pointers must be 32-byte
#: aligned and ldm a multiple of 4 (16 bytes), as the device requires. The product reads its
#: operands as the tensor core does, the low 13 mantissa bits ignored (__float_to_tf32 rounds
#: first, to nearest, ties away), and sums in float in ascending k, each product exact: a
#: tensor core accumulates in an order and rounding of its own, so results agree with a
#: device's to float32's accumulation error, not bit for bit.
MMA_H = r"""
#pragma once
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

template <typename Use, int M, int N, int K> struct fragment_shape;
template <int M, int N, int K> struct fragment_shape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K> struct fragment_shape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K> struct fragment_shape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 8, "the emulation has m16n16k8 only");
  static constexpr int rows = fragment_shape<Use, M, N, K>::rows;
  static constexpr int cols = fragment_shape<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  using layout = Layout;
  float x[num_elements];
};

inline float __float_to_tf32(float in) {
  if (!std::isfinite(in)) return in;
  std::uint32_t bits;
  std::memcpy(&bits, &in, 4);
  bits = (bits + 0x1000u) & 0xFFFFE000u;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

inline float tensor_core_operand(float in) {
  std::uint32_t bits;
  std::memcpy(&bits, &in, 4);
  bits &= 0xFFFFE000u;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

inline void warp_collective(const char* what, const void* p, unsigned ldm, int line) {
  if (p != nullptr && reinterpret_cast<std::uintptr_t>(p) % 32 != 0) {
    ::emu::fail(std::string(what) + " at an address that is not 32-byte aligned");
  }
  if (p != nullptr && ldm % 4 != 0) {
    ::emu::fail(std::string(what) + " with ldm " + std::to_string(ldm) +
                ", not a multiple of 4 floats");
  }
  ::emu::Launch& l = *::emu::L;
  if (l.threads % 32 != 0) ::emu::fail(std::string(what) + " in a block that is not whole warps");
  // every lane must pass the same pointer and ldm (the device reads one of them): each
  // lane's pair goes through the shuffles' double-buffered slots, compared with lane 0's
  ::emu::Fiber& f = l.fibers[l.current];
  ::emu::Exchange& x = l.exchange[f.warp];
  const unsigned parity = f.parity;
  f.parity ^= 1u;
  x.value[parity][f.lane] =
      reinterpret_cast<std::uintptr_t>(p) ^ (static_cast<unsigned long long>(ldm) << 52);
  x.tag[parity][f.lane] = line;
  ::emu::arrive(l.warp_bar[f.warp], line);
  if (x.value[parity][f.lane] != x.value[parity][0]) {
    ::emu::fail(std::string(what) + " with a pointer or ldm that differs between the lanes "
                "of a warp");
  }
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float value) {
  for (float& e : f.x) e = value;
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const float* p, unsigned ldm,
                             int line = __builtin_LINE()) {
  static_assert(!std::is_same<Use, accumulator>::value, "an accumulator load needs a layout");
  warp_collective("wmma::load_matrix_sync", p, ldm, line);
  using F = fragment<Use, M, N, K, T, Layout>;
  constexpr bool row = std::is_same<Layout, row_major>::value;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = row ? p[r * ldm + c] : p[c * ldm + r];
}

template <typename TA, typename LA, typename TB, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 8, float>& d,
                     const fragment<matrix_a, 16, 16, 8, TA, LA>& a,
                     const fragment<matrix_b, 16, 16, 8, TB, LB>& b,
                     const fragment<accumulator, 16, 16, 8, float>& c,
                     int line = __builtin_LINE()) {
  warp_collective("wmma::mma_sync", nullptr, 0, line);
  float out[16 * 16];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float acc = c.x[i * 16 + j];
      for (int k = 0; k < 8; ++k) {
        acc = std::fma(tensor_core_operand(a.x[i * 8 + k]), tensor_core_operand(b.x[k * 16 + j]),
                       acc);
      }
      out[i * 16 + j] = acc;
    }
  std::memcpy(d.x, out, sizeof(out));
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 8, float>& f,
                              unsigned ldm, layout_t layout, int line = __builtin_LINE()) {
  warp_collective("wmma::store_matrix_sync", p, ldm, line);
  const int lane = ::emu::L->fibers[::emu::L->current].lane;
  for (int e = lane; e < 16 * 16; e += 32) {
    const int r = e / 16, c = e % 16;
    (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[e];
  }
}
}  // namespace wmma
}  // namespace nvcuda
"""

_EXTERN_SHARED_RE = re.compile(
    r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?"
    r"([A-Za-z_][\w:]*(?:\s+[A-Za-z_][\w:]*)*?)\s+(\w+)\s*\[\s*\]\s*;"
)


_STATIC_SHARED_RE = re.compile(
    r"__shared__\s+((?:const\s+)?[A-Za-z_][\w:]*(?:\s*<[^;>]*>)?)\s+(\w+)\s*"
    r"((?:\[[^\]]+\])*)\s*;"
)


def emulated_source(filename: str) -> str:
    """``kernels/<filename>`` as read for NVRTC, its ``__shared__`` declarations rewritten
    (:func:`rewrite_shared`)."""
    return rewrite_shared(kernel_loader.read_source(filename))


def rewrite_shared(source: str) -> str:
    """CUDA source with every dynamic ``extern __shared__`` array turned into a pointer to
    the emulated block's buffer and every static ``__shared__ T name[...];`` into a
    reference to the block's own instance of it."""
    source = _EXTERN_SHARED_RE.sub(
        r"\1* \2 = reinterpret_cast<\1*>(::emu::dynamic_smem());", source
    )
    slots = iter(range(1 << 30))
    return _STATIC_SHARED_RE.sub(
        lambda m: f"auto& {m[2]} = ::emu::block_shared<{m[1]}{m[3]}>({next(slots)});", source
    )


#: A directory of built libraries, named by a digest of everything that goes into them; the
#: test session sets it (tests/conftest.py) so that its xdist workers, and the pytest runs its
#: tests start, build each library once between them (about 45 s of g++ for every kernel
#: file). Unset, every build is a build.
CACHE_ENV = "RNNCU_EMULATION_CACHE"

_FLAGS = ("-std=c++17", "-O1", "-w", "-fPIC", "-pthread", "-ffp-contract=off")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold ``path`` (a lock file) against other processes, where ``flock`` exists."""
    try:
        import fcntl
    except ImportError:  # no flock: two processes may build the same library, both whole
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class Compiler:
    """Build shared libraries against :data:`RUNTIME` (one object per translation unit,
    compiled in parallel, linked into one library); with :data:`CACHE_ENV` set, a library
    already built from the same sources, headers, flags and g++ is copied instead."""

    def __init__(self, directory: Path) -> None:
        compiler = shutil.which("g++")
        if compiler is None:
            raise FileNotFoundError("g++")
        self.compiler = compiler
        self.directory = directory
        (directory / "emu_runtime.h").write_text(RUNTIME)
        (directory / "cooperative_groups.h").write_text(COOPERATIVE_GROUPS)
        (directory / "mma.h").write_text(MMA_H)

    def build(self, name: str, units: dict[str, str], jobs: int = 2) -> ctypes.CDLL:
        library = self.directory / f"{name}.so"
        cache = os.environ.get(CACHE_ENV)
        if cache:
            cached = Path(cache) / f"{name}-{self._digest(units)}.so"
            with _locked(Path(cache) / f"{cached.name}.lock"):
                if not cached.is_file():
                    self._compile(library, units, jobs)
                    # whole or absent: a build interrupted here leaves no half library
                    fd, partial = tempfile.mkstemp(dir=cache, suffix=".partial")
                    os.close(fd)
                    shutil.copyfile(library, partial)
                    os.replace(partial, cached)
            # a copy of its own, not the cached path: dlopen gives a path it loaded before
            # the same instance, whose globals (the last error, the launch state) would be
            # shared with an earlier build's user in this process
            shutil.copyfile(cached, library)
        else:
            self._compile(library, units, jobs)
        lib = ctypes.CDLL(str(library))
        lib.emu_last_error.restype = ctypes.c_char_p
        lib.emu_last_error.argtypes = []
        return lib

    def _digest(self, units: dict[str, str]) -> str:
        """What the built library depends on: g++ (its path and version), the flags, the
        emulated headers and each unit's name and text."""
        version = subprocess.run([self.compiler, "--version"], capture_output=True, text=True)
        digest = hashlib.sha256()
        for part in (self.compiler, version.stdout, *_FLAGS, RUNTIME, COOPERATIVE_GROUPS, MMA_H):
            digest.update(part.encode() + b"\0")
        for unit, text in sorted(units.items()):
            digest.update(unit.encode() + b"\0" + text.encode() + b"\0")
        return digest.hexdigest()[:32]

    def _compile(self, library: Path, units: dict[str, str], jobs: int) -> None:
        flags = [*_FLAGS, "-I", str(self.directory)]
        objects: list[Path] = []
        pending: list[tuple[subprocess.Popen, Path]] = []
        errors: list[str] = []

        def reap(limit: int) -> None:
            while len(pending) > limit:
                process, path = pending.pop(0)
                _, stderr = process.communicate()
                if process.returncode != 0:
                    errors.append(f"{path.name}:\n{stderr[-4000:]}")

        for unit, text in units.items():
            source = self.directory / f"{unit}.cpp"
            source.write_text('#include "emu_runtime.h"\n' + text)
            obj = self.directory / f"{unit}.o"
            objects.append(obj)
            command = [self.compiler, *flags, "-c", str(source), "-o", str(obj)]
            pending.append((subprocess.Popen(command, stderr=subprocess.PIPE, text=True), source))
            reap(jobs - 1)
        reap(0)
        if errors:
            raise RuntimeError("g++ could not build the emulation:\n" + "\n".join(errors))
        command = [self.compiler, "-shared", "-pthread", *map(str, objects), "-o", str(library)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"linking the emulation failed:\n{done.stderr[-4000:]}")


# ----------------------------------------------------------------------- kernel families
@dataclasses.dataclass(frozen=True)
class Family:
    """The kernels of one file: how to recognise a name expression, the C++ parameter casts
    (P = pointer, I = int in :attr:`signature`) and the block-size bound of
    ``__launch_bounds__`` as a C++ expression."""

    unit: str
    filename: str
    pattern: re.Pattern
    casts: dict[str, list[str]]  # direction -> casts, ``T`` standing for the element type
    max_threads: str  # C++ expression, may use {ctype} and the regex groups {g3}, {g4}...
    cluster: str = "1"  # blocks per cluster, a C++ expression like max_threads
    #: the element type of a file whose name expressions do not name one (else group 2's)
    element_type: str | None = None

    def signature(self, direction: str) -> str:
        return "".join("P" if "*" in cast else "I" for cast in self.casts[direction])


_PERSISTENT_CASTS = {
    "forward": ["(T*)", "(const T*)", "(const T*)", "(const int*)"] + ["(int)"] * 7,
    "backward": ["(T*)", "(T*)", "(const T*)", "(const T*)", "(const T*)", "(int)",
                 "(const T*)", "(int)", "(const int*)"] + ["(int)"] * 7,
}  # fmt: skip
_STEP_CASTS = {
    "forward": ["(T*)", "(const T*)", "(const T*)", "(const int*)", "(int)", "(int)", "(int)"],
    "backward": ["(T*)", "(T*)", "(const T*)", "(const T*)", "(const T*)", "(const T*)",
                 "(const int*)", "(int)", "(int)", "(int)"],
}  # fmt: skip
_PERSISTENT_NAME = r"^persistent_(?:batch|grid)_(forward|backward)<(float|double), (\d+), (\d+)>$"
_CLUSTER_NAME = r"^persistent_cluster_(forward|backward)<(float|double), (\d+), (\d+), (\d+)>$"
_PERSISTENT_LIMIT = "rnncu_persistent::LaunchLimits<{ctype}, {g3}, {g4}>::kMaxThreads"


def families() -> dict[str, Family]:
    """Every kernel file the backend launches, by unit name."""
    from rnncu.backend import persistent

    return {
        "step": Family(
            "step", kernel_loader.STEP_KERNEL_FILE,
            re.compile(
                r"^rnn_step_(forward|backward)<(float|double), (\d), (\d+), (\d+), (\d+), (\d+)>$"
            ),
            _STEP_CASTS, "rnncu::StepTile<{ctype}, {g4}, {g5}, {g6}, {g7}>::kThreads",
        ),
        "step_tf32": Family(
            "step_tf32", kernel_loader.TF32_STEP_KERNEL_FILE,
            re.compile(r"^rnn_step_tf32_(forward|backward)<(\d), (\d+), (\d+)>$"),
            _STEP_CASTS, "rnncu::Tf32Tile<{g3}, {g4}, 1>::kThreads", element_type="float",
        ),
        "matvec": Family(
            "matvec", kernel_loader.MATVEC_KERNEL_FILE,
            re.compile(r"^rnn_matvec_(forward|backward)<(float|double), (\d), (\d+)>$"),
            _STEP_CASTS, "rnncu::kMatvecThreads",
        ),
        "batch": Family("batch", persistent.BATCH_KERNEL_FILE, re.compile(_PERSISTENT_NAME),
                        _PERSISTENT_CASTS, _PERSISTENT_LIMIT),
        "grid": Family("grid", persistent.GRID_KERNEL_FILE, re.compile(_PERSISTENT_NAME),
                       _PERSISTENT_CASTS, _PERSISTENT_LIMIT),
        "cluster": Family("cluster", persistent.CLUSTER_KERNEL_FILE, re.compile(_CLUSTER_NAME),
                          _PERSISTENT_CASTS, _PERSISTENT_LIMIT, "{g5}"),
    }  # fmt: skip


def _dispatch(family: Family, names: Sequence[str]) -> str:
    """extern "C" emu_<unit>(name, ...): launches the instantiation called ``name``."""
    lines = [
        f'extern "C" int emu_{family.unit}(const char* name, unsigned gx, unsigned gy,',
        "    unsigned threads, unsigned long long smem, int cooperative, int policy,",
        "    unsigned seed, const unsigned long long* a, int nargs) {",
    ]
    for name in names:
        match = family.pattern.match(name)
        if match is None:
            raise ValueError(f"unexpected name expression {name!r} for {family.filename}")
        direction, ctype = match[1], family.element_type or match[2]
        casts = family.casts[direction]
        args = ", ".join(
            f"{cast.replace('T', ctype) if 'T*' in cast else cast}a[{i}]"
            for i, cast in enumerate(casts)
        )
        groups = {f"g{i}": g for i, g in enumerate(match.groups(), start=1)}
        limit = family.max_threads.format(ctype=ctype, **groups)
        cluster = family.cluster.format(ctype=ctype, **groups)
        lines += [
            f'  if (std::strcmp(name, "{name}") == 0) {{',
            f'    if (nargs != {len(casts)}) {{ emu::last_error = "argument count"; return 1; }}',
            f"    return emu::launch(gx, gy, threads, smem, cooperative != 0, {limit}, {cluster},",
            f"                       policy, seed, [=] {{ {name}({args}); }});",
            "  }",
        ]
    lines += [
        '  emu::last_error = std::string("no such instantiation: ") + name;',
        "  return 1;",
        "}",
    ]
    return "\n".join(lines) + "\n"


class KernelEmulation:
    """The kernel files of :func:`families` (all of them, or the ``units`` named) built for
    the host, every registered name expression callable through :meth:`launch_raw`."""

    def __init__(self, directory: Path, units: Sequence[str] | None = None) -> None:
        table = families()
        registered = kernel_loader.all_name_expressions()
        chosen = list(table) if units is None else list(units)
        sources = {}
        self.entry: dict[str, Family] = {}
        for unit in chosen:
            family = table[unit]
            names = registered[family.filename]
            sources[unit] = emulated_source(family.filename) + "\n" + _dispatch(family, names)
            for name in names:
                self.entry[name] = family
        self.lib = Compiler(directory).build("kernel_emulation_" + "_".join(chosen), sources)
        for unit in chosen:
            function = getattr(self.lib, f"emu_{unit}")
            u32, u64 = ctypes.c_uint, ctypes.c_ulonglong
            function.argtypes = [ctypes.c_char_p, u32, u32, u32, u64, ctypes.c_int,
                                 ctypes.c_int, u32, ctypes.POINTER(u64), ctypes.c_int]  # fmt: skip
            function.restype = ctypes.c_int

    def signature(self, name: str) -> str:
        family = self.entry.get(name)
        if family is None:
            raise KeyError(f"{name!r} is not a registered name expression of an emulated file")
        return family.signature(family.pattern.match(name)[1])

    def launch_raw(
        self,
        name: str,
        grid: tuple[int, int],
        threads: int,
        shared_mem: int,
        cooperative: bool,
        args: Sequence,
        policy: int = ASCENDING,
        seed: int = 0,
    ) -> None:
        """Launch the instantiation ``name`` with the kernel arguments as a backend passes them
        to CuPy: arrays (anything with ``__array_interface__``, read by address) or raw
        ``numpy.uint64`` addresses for pointers, ``numpy.int32`` for ints. Raises RuntimeError
        with the emulator's diagnosis when the launch fails."""
        signature = self.signature(name)
        if len(args) != len(signature):
            raise TypeError(f"{name}: {len(args)} kernel arguments, the kernel takes "
                            f"{len(signature)}")  # fmt: skip
        slots = []
        for index, (kind, value) in enumerate(zip(signature, args, strict=True)):
            if kind == "P":
                slots.append(_address(name, index, value))
            else:
                if not isinstance(value, np.int32):
                    raise TypeError(f"{name}: argument {index} must be numpy.int32, got {value!r}")
                slots.append(int(value) & 0xFFFFFFFF)
        buffer = (ctypes.c_ulonglong * len(slots))(*slots)
        function = getattr(self.lib, f"emu_{self.entry[name].unit}")
        rc = function(name.encode(), grid[0], grid[1], threads, shared_mem, int(cooperative),
                      policy, seed, buffer, len(slots))  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"{name}: {self.lib.emu_last_error().decode(errors='replace')}")

    def launch(self, plan, args: tuple, policy: int = ASCENDING, seed: int = 0) -> None:
        """Launch a persistent ``plan`` (:class:`rnncu.backend.persistent.Plan`) with the
        argument tuple the backend builds for it."""
        self.launch_raw(plan.name_expression, plan.grid, plan.threads, plan.shared_mem,
                        plan.cooperative, args, policy, seed)  # fmt: skip


def _address(name: str, index: int, value) -> int:
    """The device address a CuPy launch would pass for a pointer argument."""
    if isinstance(value, np.uint64):
        return int(value)
    if isinstance(value, np.ndarray):
        if not value.flags.c_contiguous:
            raise TypeError(f"{name}: argument {index} must be a contiguous array")
        return value.ctypes.data
    raise TypeError(f"{name}: argument {index} must be an array or numpy.uint64 address, "
                    f"got {type(value).__name__}")  # fmt: skip
