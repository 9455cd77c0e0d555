"""Device limits of the GPUs the planner is tested against, without a device."""

from rnncu.backend.persistent import DeviceLimits

# NVIDIA H200 (SXM): 132 SMs, 227 KB shared memory per block (opt-in), 228 KB per SM,
# 64K registers per SM, compute capability 9.0 (cudaGetDeviceProperties on the lent machine).
H200 = DeviceLimits(
    sm_count=132,
    smem_per_block_optin=227 * 1024,
    smem_per_sm=228 * 1024,
    regs_per_sm=65536,
    max_threads_per_sm=2048,
    max_blocks_per_sm=32,
    compute_capability=(9, 0),
)
